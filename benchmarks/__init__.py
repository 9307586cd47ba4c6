"""Reproducible measurements that print JSON (``fedsecure bench …``); see README.md here."""
