"""Cryptography: the consortium PKI, canonical (low-S) signing, signed revocation lists,
and CKKS contexts, packing and encryption."""
