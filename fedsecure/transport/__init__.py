"""Transport: mTLS credentials, channel/server options, authentication, safe request
decoding, chunking, retries, and what both services share (serving helpers, the mapping
of domain errors to gRPC status codes)."""
