"""Attack review (issue 23, item 7): a ledger is written by the client it audits, so a
client can sign any value into any field. A script in `round` must not reach audit.html,
a string where a number belongs must FAIL that ledger only, and the honest ledgers in
the same `fedsecure audit` command still get their verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.cli import main
from fedsecure.crypto import pki
from fedsecure.kit import load_kit
from fedsecure.privacy.audit import audit_ledger
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.privacy.ledger import Ledger, LedgerError, verify_ledger
from fedsecure.privacy.report import to_html
from fedsecure.provision import Provisioned

BUDGET = PrivacyBudget(8.0, 1e-5)
SCRIPT = "<script>alert(1)</script>"


def _honest(kits: Provisioned, path: Path, name: str) -> Ledger:
    led = Ledger(path, kit=load_kit(kits.clients[name]), budget=BUDGET)
    led.record(run_id="run-1", round_=1, step=(1.0, 0.01, 100), epsilon_after=1.25, data_digest="ab" * 32)
    return led


def _signed_hostile(kits: Provisioned, path: Path, name: str, **values: object) -> None:
    """Append an entry carrying ``values``, validly signed by the client's own key (what
    a malicious client can always do to its own ledger)."""
    led = _honest(kits, path, name)
    last = led.entries[-1]
    fields = dict(run_id="run-1", round_=2, step=(1.0, 0.01, 100), eps=1.8, data_digest="cd" * 32)
    fields.update(values)  # type: ignore[arg-type]
    led._append(led._entry(seq=last.seq + 1, prev=last.sha256(), **fields))  # type: ignore[arg-type]


def test_a_script_in_a_signed_round_never_reaches_the_page(kits: Provisioned, tmp_path: Path) -> None:
    path = tmp_path / "evil.jsonl"
    _signed_hostile(kits, path, "a", round_=SCRIPT)
    ca = load_kit(kits.server).ca_cert
    with pytest.raises(LedgerError, match="field 'round' must be a non-negative integer"):
        verify_ledger(path, ca_cert=ca)
    audit = audit_ledger(path, ca_cert=ca)
    assert not audit.ok
    page = to_html([audit])
    assert "<script" not in page
    # Values a verified ledger does carry are escaped too (the run id is the client's text).
    honest = tmp_path / "honest.jsonl"
    led = Ledger(honest, kit=load_kit(kits.clients["b"]), budget=BUDGET)
    led.record(run_id=SCRIPT, round_=1, step=(1.0, 0.01, 100), epsilon_after=1.25, data_digest="ab" * 32)
    page = to_html([audit_ledger(honest, ca_cert=ca)])
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("values, field", [
    ({"eps": "8"}, "epsilon_after"),
    ({"step": ("1.0", 0.01, 100)}, "noise_multiplier"),
    ({"step": (1.0, 0.01, True)}, "steps"),
    ({"step": (1.0, float("nan"), 100)}, "sample_rate"),
    ({"round_": -1}, "round"),
])
def test_a_malformed_ledger_fails_alone_and_the_others_are_still_audited(
        kits: Provisioned, tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict, field: str) -> None:  # type: ignore[type-arg]
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    _signed_hostile(kits, bad, "a", **values)
    _honest(kits, good, "b")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(pki.cert_pem(load_kit(kits.server).ca_cert))
    page = tmp_path / "audit.html"
    code = main(["audit", str(bad), str(good), "--ca", str(ca_path), "--json", "--html", str(page)])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    verdicts = {Path(x["path"]).name: x for x in out["ledgers"]}
    assert verdicts["bad.jsonl"]["ok"] is False
    assert any(f"field '{field}'" in v for v in verdicts["bad.jsonl"]["violations"]), verdicts["bad.jsonl"]
    assert verdicts["good.jsonl"]["ok"] is True and verdicts["good.jsonl"]["client"] == "b"
    assert "FAIL" in page.read_text() and "PASS" in page.read_text()


def test_unparseable_lines_are_a_violation_not_a_traceback(kits: Provisioned, tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    _honest(kits, path, "a")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    audit = audit_ledger(path, ca_cert=load_kit(kits.server).ca_cert)
    assert not audit.ok and "not one JSON object per line" in audit.violations[0]
