"""Cryptography: the consortium PKI, canonical signing, and (later) CKKS contexts."""
