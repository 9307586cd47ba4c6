"""The key holder: an independent party holding the only CKKS secret key. It decrypts
an aggregate only when it can tie it to >= quorum distinct, signed client contributions
never decrypted before, after re-adding (some of) their chunks itself (docs/security.md).

Imports :mod:`fedsecure` only: the key holder is a party independent of the operator
and runs none of the server's code."""
