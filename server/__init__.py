"""The aggregation server: round engine, durable store, thin gRPC servicers.

Imports :mod:`fedsecure`; never imports :mod:`client_sdk`.
"""
