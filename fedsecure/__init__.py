"""fedsecure: privacy-hardened federated alignment of heterogeneous vision-language models.

The core imported by every side — :mod:`client_sdk`, :mod:`server`, :mod:`keyholder` —
and by the application wiring (:mod:`apps`, :mod:`benchmarks`); it imports none of them
(docs/design.md §3). It holds the wire types and their serde, cryptography, transport,
privacy accounting and auditing, models, data, kits and state versions.
"""

__version__ = "0.1.0"
