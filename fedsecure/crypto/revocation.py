"""Signed revocation lists, so that a party other than the server (the key holder) can
enforce the consortium's revocations without trusting the server to relay them.

The CA key stays offline, so a list is signed by an admin certificate the CA issued (or,
where an operator prefers, by the CA itself). Lists only ever add names: a verifier keeps
the union of every list it accepted, so replaying an older list changes nothing and no
list can un-revoke a client (a client that must come back gets a new certificate name).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedsecure.crypto import pki, signing
from fedsecure.errors import CertificateError, SignatureError
from fedsecure.types import Role, SignedRevocations

DOMAIN_REVOCATIONS = b"fedsecure/v1/revocations"
MAX_NAMES = 10_000


def revocations_bytes(issued_ms: int, names: Sequence[str], reason: str) -> bytes:
    """The canonical bytes a revocation list's signature covers."""
    return signing.canonical(DOMAIN_REVOCATIONS, [issued_ms, reason, len(names), *names])


def sign_revocations(*, names: Sequence[str], private_key: ec.EllipticCurvePrivateKey, signer_pem: bytes,
                     reason: str = "", issued_ms: int | None = None) -> SignedRevocations:
    """A list revoking ``names``, signed with an admin kit's key (``signer_pem``: its
    certificate) or with the CA key (``signer_pem`` empty)."""
    clean = tuple(sorted({pki.check_name(n) for n in names}))
    if not clean:
        raise ValueError("a revocation list names at least one client")
    when = int(time.time() * 1000) if issued_ms is None else issued_ms
    sig = signing.sign(private_key, revocations_bytes(when, clean, reason))
    return SignedRevocations(issued_ms=when, names=clean, reason=reason, signer_certificate=signer_pem, signature=sig)


def verify_revocations(rl: SignedRevocations, *, ca_cert: x509.Certificate) -> tuple[str, ...]:
    """Return the names of a list that verifies; raise :class:`SignatureError` or
    :class:`CertificateError` otherwise (never a False to be ignored).

    Accepted signers: an ADMIN certificate issued by the consortium CA and valid now, or
    the CA itself. Names must be valid participant names, sorted and unique (one
    canonical list per set of names)."""
    if not rl.names or len(rl.names) > MAX_NAMES:
        raise SignatureError(f"a revocation list names 1 to {MAX_NAMES} clients")
    for name in rl.names:
        pki.check_name(name)
    if list(rl.names) != sorted(set(rl.names)):
        raise SignatureError("revocation names must be sorted and unique")
    if rl.signer_certificate:
        cert = pki.load_certificate(rl.signer_certificate)
        ident = pki.verify_issued_by(cert, ca_cert)
        if ident.role is not Role.ADMIN:
            raise CertificateError(f"revocation lists are signed by an admin, not by {ident.role.value}:{ident.name}")
        key = cert.public_key()
    else:
        key = ca_cert.public_key()
    signing.verify(key, revocations_bytes(rl.issued_ms, rl.names, rl.reason), rl.signature, what="revocation list")
    return rl.names
