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


def _der(r: int, s: int) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return encode_dss_signature(r, s)


def test_signatures_are_low_s_and_their_high_s_twin_is_refused() -> None:
    """ECDSA malleability (security review, defect 1): (r, s) and (r, n - s) both verify
    under plain ECDSA; only the low-S one, in strict DER, is accepted here."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = pki.new_private_key()
    n = signing.P256_ORDER  # known answer: plain ECDSA accepting (r, n - s) below confirms it is the group order
    for i in range(40):  # raw ECDSA gives a high S about half the time
        data = f"statement {i}".encode()
        sig = signing.sign(key, data)
        r, s = decode_dss_signature(sig)
        assert s <= n // 2
        signing.verify(key.public_key(), data, sig, what="test")
        twin = _der(r, n - s)
        key.public_key().verify(twin, data, ec.ECDSA(hashes.SHA256()))  # plain ECDSA accepts the twin
        with pytest.raises(SignatureError, match="canonical low-S"):
            signing.verify(key.public_key(), data, twin, what="test")


def test_non_strict_der_and_out_of_range_values_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = pki.new_private_key()
    sig = signing.sign(key, b"x")
    r, s = decode_dss_signature(sig)
    body = sig[2:]
    long_form = sig[:1] + b"\x81" + bytes([len(body)]) + body  # BER long-form length: same values
    for bad, text in ((long_form, "not DER"), (sig + b"\x00", "not DER"), (b"", "not DER"),
                      (_der(r, 0), "canonical"), (_der(0, s), "canonical"), (_der(r + signing.P256_ORDER, s), "canonical")):
        with pytest.raises(SignatureError, match=text):
            signing.verify(key.public_key(), b"x", bad, what="test")


def test_submission_identity_is_the_signed_statement_not_the_signature() -> None:
    key = pki.new_private_key()
    env = Envelope(client_id="a", run_id="r", round=1, task_id="t", nonce=b"\x00" * 16, timestamp_ms=5,
                   payload_kind=PayloadKind.SCORES, payload_sha256=b"\x01" * 32)
    one = signing.sign(key, signing.envelope_bytes(env))
    two = signing.sign(key, signing.envelope_bytes(env))
    assert one != two  # randomised signatures
    from dataclasses import replace

    assert signing.envelope_digest(replace(env, signature=one)) == signing.envelope_digest(replace(env, signature=two))
    assert signing.envelope_digest(env) == hashlib.sha256(signing.envelope_bytes(env)).digest()
    assert signing.envelope_digest(replace(env, nonce=b"\x02" * 16)) != signing.envelope_digest(env)


def test_step_scores_digest_binds_the_step_and_its_own_domain() -> None:
    scores = [Score("i", 0.5)]
    expected = signing.sha256(signing.canonical(signing.DOMAIN_STEP_SCORES, [7, 1, "i", 0.5]))
    assert signing.step_scores_digest(7, scores) == expected
    assert signing.step_scores_digest(8, scores) != expected  # an answer to step 7 is not one to step 8
    assert signing.step_scores_digest(7, scores) != signing.scores_digest(scores)  # nor a SCORE payload
