"""The key holder's decryption receipts, verifiable by the server.

Every decryption is an entry in the key holder's signed, hash-chained log. The receipt
it returns with the plaintext carries the entry itself (canonical JSON), the key holder's
certificate and its signature over the entry's domain-separated bytes, so the server can
check — before it publishes anything — that the plaintext it received is the one the
key holder logged, for the run, round, group and contributors it committed to, and that
a CA-certified key holder signed it (docs/security.md). Verification raises; it never
returns False.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from cryptography import x509

from fedsecure.crypto import pki, signing
from fedsecure.errors import CertificateError, SignatureError
from fedsecure.types import DecryptReceipt, Role

DOMAIN_DECRYPTION = b"fedsecure/v1/keyholder-decryption"


def entry_json(doc: dict[str, object]) -> str:
    """The canonical JSON of a log entry's fields (sorted keys, no spaces)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def decryption_statement(entry: str) -> bytes:
    """The bytes a log entry's signature covers: its JSON in the decryption domain."""
    return signing.canonical(DOMAIN_DECRYPTION, [entry])


def aggregate_digest(chunk_sha256: Sequence[bytes]) -> str:
    """One digest naming an aggregate by its ordered chunk digests."""
    return hashlib.sha256(b"".join(chunk_sha256)).hexdigest()


def verify_receipt(receipt: DecryptReceipt, *, ca_cert: x509.Certificate, run_id: str, round_: int, group: str,
                   contributors: Sequence[str], aggregate_chunk_sha256: Sequence[bytes], plaintext: bytes) -> None:
    """Check that ``receipt`` is a CA-certified key holder's signed log entry for exactly
    this decryption (run, round, group, ordered contributors, aggregate, plaintext).
    Raises SignatureError or CertificateError (fail closed: nothing is published)."""
    if not receipt.keyholder_certificate or not receipt.entry_json:
        raise SignatureError("key holder receipt carries no log entry or certificate")
    cert = pki.load_certificate(receipt.keyholder_certificate)
    identity = pki.verify_issued_by(cert, ca_cert)
    if identity.role is not Role.KEYHOLDER:
        raise CertificateError(f"receipt signed by {identity.name} ({identity.role.value}), not a key holder")
    statement = decryption_statement(receipt.entry_json)
    if hashlib.sha256(statement).digest() != receipt.log_entry_sha256:
        raise SignatureError("receipt's entry does not hash to the log entry it names")
    signing.verify(cert.public_key(), statement, receipt.signature, what="key holder receipt")
    try:
        entry = json.loads(receipt.entry_json)
        fields = (entry["seq"], entry["run_id"], entry["round"], entry["group"], list(entry["contributors"]),
                  entry["aggregate_sha256"], entry["plaintext_sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"key holder receipt's entry is malformed: {exc}") from exc
    expected = (receipt.log_seq, run_id, round_, group, list(contributors), aggregate_digest(aggregate_chunk_sha256),
                hashlib.sha256(plaintext).hexdigest())
    names = ("log seq", "run", "round", "group", "contributors", "aggregate", "plaintext")
    for name, got, want in zip(names, fields, expected, strict=True):
        if got != want:
            raise SignatureError(f"key holder receipt names another {name} than this decryption")
