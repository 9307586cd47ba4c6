"""Canonical encoding (known answers, injectivity) and fail-closed signatures."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsecure.crypto import pki, signing
from fedsecure.errors import SignatureError
from fedsecure.types import Envelope, LedgerHead, PayloadKind, Score, TaskReport


def test_canonical_known_answer() -> None:
    # Hand-assembled: 4-byte domain length, domain, then tag + 4-byte length + value per field.
    expected = (
        b"\x00\x00\x00\x01D"
        + b"s\x00\x00\x00\x02ab"
        + b"i\x00\x00\x00\x10" + (7).to_bytes(16, "big")
        + b"y\x00\x00\x00\x01\xff"
        + b"f\x00\x00\x00\x08" + bytes.fromhex("3ff8000000000000")  # 1.5
        + b"b\x00\x00\x00\x01\x01"
    )
    assert signing.canonical(b"D", ["ab", 7, b"\xff", 1.5, True]) == expected


def test_canonical_tags_types_apart() -> None:
    assert signing.canonical(b"D", ["1"]) != signing.canonical(b"D", [1])
    assert signing.canonical(b"D", [b"a"]) != signing.canonical(b"D", ["a"])
    assert signing.canonical(b"D", [True]) != signing.canonical(b"D", [1])
    assert signing.canonical(b"D", ["a"]) != signing.canonical(b"E", ["a"])
    with pytest.raises(TypeError):
        signing.canonical(b"D", [None])  # type: ignore[list-item]


fields = st.lists(st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(-(2**100), 2**100),
                            st.booleans(), st.floats(allow_nan=False)), max_size=5)


@given(a=fields, b=fields)
def test_canonical_is_injective(a, b) -> None:  # type: ignore[no-untyped-def]
    def typed(xs):  # type: ignore[no-untyped-def]
        return [(type(x).__name__, x if not isinstance(x, float) else x.hex()) for x in xs]

    if typed(a) != typed(b):
        assert signing.canonical(b"D", a) != signing.canonical(b"D", b)


def test_scores_digest_known_answer() -> None:
    encoded = signing.canonical(signing.DOMAIN_SCORES, [1, "x", 0.5])
    assert signing.scores_digest([Score("x", 0.5)]) == hashlib.sha256(encoded).digest()
    assert signing.scores_digest([Score("x", 0.5)]) != signing.scores_digest([Score("x", 0.25)])


def test_payload_digest_refuses_mismatched_kind() -> None:
    with pytest.raises(TypeError):
        signing.payload_digest(PayloadKind.SCORES, LedgerHead())
    assert signing.payload_digest(PayloadKind.TASK_REPORT, TaskReport((("b", 1.0), ("a", 2.0)))) == \
        signing.task_report_digest(TaskReport((("a", 2.0), ("b", 1.0))))


def _env(**kw: object) -> Envelope:
    base = dict(client_id="a", run_id="r", round=1, task_id="t", nonce=b"n" * 16, timestamp_ms=5,
                payload_kind=PayloadKind.SCORES, payload_sha256=b"d" * 32)
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def test_sign_verify_and_every_field_is_bound() -> None:
    key = pki.new_private_key()
    env = _env()
    sig = signing.sign(key, signing.envelope_bytes(env))
    signing.verify(key.public_key(), signing.envelope_bytes(env), sig, what="t")
    for change in [{"client_id": "b"}, {"run_id": "s"}, {"round": 2}, {"task_id": "u"}, {"nonce": b"m" * 16},
                   {"timestamp_ms": 6}, {"payload_kind": PayloadKind.UPDATE}, {"payload_sha256": b"e" * 32}]:
        with pytest.raises(SignatureError):
            signing.verify(key.public_key(), signing.envelope_bytes(_env(**change)), sig, what="t")
    with pytest.raises(SignatureError):
        signing.verify(pki.new_private_key().public_key(), signing.envelope_bytes(env), sig, what="t")


def test_nonces_are_fresh() -> None:
    nonces = {signing.new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000 and all(len(n) == signing.NONCE_BYTES for n in nonces)
