"""The key holder's decryption receipt, as the server checks it before publishing
(issue 15 item 5): a genuine receipt verifies; one for another decryption, a tampered
entry or plaintext, a forged signature or a certificate of another role is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from fedsecure.crypto.receipts import aggregate_digest, verify_receipt
from fedsecure.errors import CertificateError, SignatureError
from fedsecure.kit import load_kit
from fedsecure.provision import Provisioned
from keyholder.decryption_log import DecryptionLog, verify_decryption_log

PLAIN = b"\x00" * 64
CHUNKS = (hashlib.sha256(b"c0").digest(), hashlib.sha256(b"c1").digest())
EXPECTED = dict(run_id="run-1", round_=2, group="attn.text@random-h64l2a4m128", contributors=["a", "b"],
                aggregate_chunk_sha256=CHUNKS, plaintext=PLAIN)


def _receipt(kit_path: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    log = DecryptionLog(tmp_path / "decryptions.jsonl", kit=load_kit(kit_path))
    return log.append(run_id="run-1", round_=2, group=EXPECTED["group"], contributors=["a", "b"],  # type: ignore[arg-type]
                      submissions=["s1", "s2"], total_weight=0.9, aggregate_sha256=aggregate_digest(CHUNKS),
                      sampled_chunks=[0], plaintext_sha256=hashlib.sha256(PLAIN).hexdigest())


def test_a_genuine_receipt_verifies_and_matches_the_log(kits: Provisioned, tmp_path: Path) -> None:
    receipt = _receipt(kits.keyholder, tmp_path)
    verify_receipt(receipt, ca_cert=load_kit(kits.keyholder).ca_cert, **EXPECTED)  # type: ignore[arg-type]
    (entry,) = verify_decryption_log(tmp_path / "decryptions.jsonl", cert=load_kit(kits.keyholder).cert)
    assert receipt.entry_json == entry.json() and receipt.log_entry_sha256.hex() == entry.sha256()


@pytest.mark.parametrize("change", [dict(run_id="run-2"), dict(round_=3), dict(group="attn.image@random-h64l2a4m128"),
                                    dict(contributors=["b", "a"]), dict(contributors=["a"]),
                                    dict(aggregate_chunk_sha256=CHUNKS[::-1]), dict(plaintext=b"\x01" + PLAIN[1:])])
def test_a_receipt_for_another_decryption_is_refused(kits: Provisioned, tmp_path: Path,
                                                     change: dict[str, object]) -> None:
    receipt = _receipt(kits.keyholder, tmp_path)
    with pytest.raises(SignatureError, match="names another"):
        verify_receipt(receipt, ca_cert=load_kit(kits.keyholder).ca_cert, **{**EXPECTED, **change})  # type: ignore[arg-type]


def test_tampered_forged_or_foreign_receipts_are_refused(kits: Provisioned, other_kits: Provisioned,
                                                         tmp_path: Path) -> None:
    ca = load_kit(kits.keyholder).ca_cert
    receipt = _receipt(kits.keyholder, tmp_path)
    entry = json.loads(receipt.entry_json)
    edited = dataclasses.replace(receipt, entry_json=json.dumps({**entry, "contributors": ["a", "c"]},
                                                                sort_keys=True, separators=(",", ":")))
    with pytest.raises(SignatureError, match="does not hash"):
        verify_receipt(edited, ca_cert=ca, **EXPECTED)  # type: ignore[arg-type]
    flipped = dataclasses.replace(receipt, signature=bytes([receipt.signature[0] ^ 1]) + receipt.signature[1:])
    with pytest.raises(SignatureError):
        verify_receipt(flipped, ca_cert=ca, **EXPECTED)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="no log entry"):
        verify_receipt(dataclasses.replace(receipt, entry_json="", keyholder_certificate=b""), ca_cert=ca,
                       **EXPECTED)  # type: ignore[arg-type]
    # Signed by a client of the consortium, or by another consortium's key holder: refused.
    by_client = _receipt(kits.clients["a"], tmp_path / "client")
    with pytest.raises(CertificateError, match="not a key holder"):
        verify_receipt(by_client, ca_cert=ca, **EXPECTED)  # type: ignore[arg-type]
    foreign = _receipt(other_kits.keyholder, tmp_path / "other")
    with pytest.raises(CertificateError):
        verify_receipt(foreign, ca_cert=ca, **EXPECTED)  # type: ignore[arg-type]
