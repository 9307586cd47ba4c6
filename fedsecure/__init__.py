"""fedsecure: privacy-hardened federated alignment of heterogeneous vision-language models.

Shared core imported by both :mod:`client_sdk` and :mod:`server` (which never import
each other): wire types, cryptography, privacy accounting, transport.
"""

__version__ = "0.1.0"
