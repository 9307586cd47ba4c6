"""Cryptography: the consortium PKI, canonical signing, and CKKS contexts, packing and encryption."""
