"""Canonical byte encodings and ECDSA signatures over them.

Protobuf serialisation is not canonical (field order, unknown fields, map order may
vary), so nothing is ever signed as protobuf bytes. Every signed statement is
encoded here as a domain tag followed by typed, length-prefixed fields. The domain
tag keeps a signature over one kind of statement from verifying as another, and can
never collide with TLS 1.3's CertificateVerify input, which starts with 64 spaces
(RFC 8446 §4.4.3) — so reusing the kit key for TLS and submissions is safe.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from fedsecure.errors import SignatureError
from fedsecure.types import (
    Decline,
    Envelope,
    LedgerHead,
    PayloadKind,
    Score,
    TaskReport,
    UpdateManifest,
)

Field = str | bytes | int | float | bool

DOMAIN_ENVELOPE = b"fedsecure/v1/envelope"
DOMAIN_SCORES = b"fedsecure/v1/scores"
DOMAIN_UPDATE = b"fedsecure/v1/update-manifest"
DOMAIN_LEDGER_HEAD = b"fedsecure/v1/ledger-head"
DOMAIN_TASK_REPORT = b"fedsecure/v1/task-report"
DOMAIN_DECLINE = b"fedsecure/v1/decline"
DOMAIN_STEP_SCORES = b"fedsecure/v1/step-scores"

NONCE_BYTES = 16


def canonical(domain: bytes, fields: Iterable[Field]) -> bytes:
    """Encode ``fields`` unambiguously: tag byte, 4-byte length, value bytes, each.

    Types are tagged so that ``"1"`` and ``1`` (or ``b"a"`` and ``"a"``) differ.
    """
    out = bytearray(struct.pack(">I", len(domain)) + domain)
    for value in fields:
        if isinstance(value, bool):  # before int: bool is an int subclass
            tag, raw = b"b", b"\x01" if value else b"\x00"
        elif isinstance(value, int):
            tag, raw = b"i", value.to_bytes(16, "big", signed=True)
        elif isinstance(value, float):
            tag, raw = b"f", struct.pack(">d", value)
        elif isinstance(value, str):
            tag, raw = b"s", value.encode("utf-8")
        elif isinstance(value, bytes):
            tag, raw = b"y", value
        else:
            raise TypeError(f"cannot encode {type(value).__name__} canonically")
        out += tag + struct.pack(">I", len(raw)) + raw
    return bytes(out)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest (the only hash used for content addressing and signing)."""
    return hashlib.sha256(data).digest()


def new_nonce() -> bytes:
    """A fresh submission nonce from the OS CSPRNG (never ``random``)."""
    return secrets.token_bytes(NONCE_BYTES)


# Order of the P-256 group (SEC 2, §2.4.2). ECDSA signatures are malleable: (r, s) and
# (r, n - s) both verify, so only the "low-S" one of the pair (s <= n/2, as in Bitcoin's
# BIP 62 and libsecp256k1) is accepted, and only in its one strict DER encoding.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HALF_ORDER = P256_ORDER // 2


def sign(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature in canonical form: strict DER, low S."""
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise TypeError("fedsecure signs with P-256 keys only")
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    return encode_dss_signature(r, s if s <= _HALF_ORDER else P256_ORDER - s)


def verify(public_key: object, data: bytes, signature: bytes, *, what: str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is canonical and verifies; never
    return False. A non-canonical twin of a valid signature is refused: otherwise anything
    keyed by signature bytes could be replayed under a second identity."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise SignatureError(f"{what}: signer key is not a P-256 key")
    try:
        r, s = decode_dss_signature(signature)
    except ValueError as exc:
        raise SignatureError(f"{what}: signature is not DER") from exc
    if not (0 < r < P256_ORDER and 0 < s <= _HALF_ORDER) or encode_dss_signature(r, s) != signature:
        raise SignatureError(f"{what}: signature is not in canonical low-S DER form")
    try:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError(f"{what}: signature does not verify") from exc


def envelope_bytes(env: Envelope) -> bytes:
    """The bytes an envelope's signature covers: every field but the signature."""
    return canonical(
        DOMAIN_ENVELOPE,
        [
            env.client_id,
            env.run_id,
            env.round,
            env.task_id,
            env.nonce,
            env.timestamp_ms,
            int(env.payload_kind),
            env.payload_sha256,
        ],
    )


def envelope_digest(env: Envelope) -> bytes:
    """Identity of a signed submission: the digest of what its signer signed (client, run,
    round, task, nonce, time, payload digest), never of the signature bytes.

    A signature is not an identity: ECDSA is randomised and, without the low-S rule,
    malleable, so one statement can carry many valid signatures. Keying by the signed
    bytes makes every re-signing of one statement the same submission.
    """
    return sha256(envelope_bytes(env))


def scores_digest(scores: Sequence[Score]) -> bytes:
    """Payload digest of a score submission (order matters)."""
    fields: list[Field] = [len(scores)]
    for s in scores:
        fields += [s.item_id, float(s.value)]
    return sha256(canonical(DOMAIN_SCORES, fields))


def step_scores_digest(step: int, scores: Sequence[Score]) -> bytes:
    """Payload digest of one ALIGN step's scores: the step is signed with them, so an
    answer to step 7 can never be replayed as an answer to step 8 (own domain: it can
    never pass for a SCORE task's payload either)."""
    fields: list[Field] = [step, len(scores)]
    for s in scores:
        fields += [s.item_id, float(s.value)]
    return sha256(canonical(DOMAIN_STEP_SCORES, fields))


def manifest_digest(m: UpdateManifest) -> bytes:
    """Payload digest of an update manifest (includes the ordered chunk digests)."""
    fields: list[Field] = [m.group, float(m.weight), m.encoding, m.total_bytes, len(m.chunk_sha256)]
    fields += list(m.chunk_sha256)
    return sha256(canonical(DOMAIN_UPDATE, fields))


def ledger_head_digest(head: LedgerHead) -> bytes:
    """Payload digest of a ledger-head report."""
    return sha256(
        canonical(
            DOMAIN_LEDGER_HEAD,
            [head.seq, head.entry_sha256, float(head.epsilon), float(head.delta), float(head.epsilon_budget)],
        )
    )


def task_report_digest(report: TaskReport) -> bytes:
    """Payload digest of a task report (metrics in key order)."""
    fields: list[Field] = []
    for key, value in sorted(report.metrics):
        fields += [key, float(value)]
    return sha256(canonical(DOMAIN_TASK_REPORT, fields))


def decline_digest(decline: Decline) -> bytes:
    """Payload digest of a typed refusal."""
    return sha256(canonical(DOMAIN_DECLINE, [int(decline.reason), decline.detail]))


def payload_digest(kind: PayloadKind, payload: object) -> bytes:
    """Digest of ``payload`` for an envelope of ``kind``; raises on a type mismatch."""
    if kind is PayloadKind.SCORES and isinstance(payload, (list, tuple)):
        return scores_digest(payload)
    if kind is PayloadKind.UPDATE and isinstance(payload, UpdateManifest):
        return manifest_digest(payload)
    if kind is PayloadKind.LEDGER_HEAD and isinstance(payload, LedgerHead):
        return ledger_head_digest(payload)
    if kind is PayloadKind.TASK_REPORT and isinstance(payload, TaskReport):
        return task_report_digest(payload)
    if kind is PayloadKind.DECLINE and isinstance(payload, Decline):
        return decline_digest(payload)
    raise TypeError(f"payload {type(payload).__name__} does not fit envelope kind {kind.name}")
