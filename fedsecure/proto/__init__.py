"""Generated protobuf and gRPC stubs (committed) and the generator that writes them.

Only :mod:`fedsecure.serde` and the transport/servicer layers import these types;
everything else works on the frozen dataclasses of :mod:`fedsecure.types`.
"""
