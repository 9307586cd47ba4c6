"""Transport: mTLS credentials, channel/server options, authentication, chunking, retries."""
