"""The privacy ledger: signed, hash-chained, refusing tampering, naming the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsecure.kit import load_kit
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.privacy.ledger import Ledger, LedgerError, verify_ledger
from fedsecure.provision import Provisioned

BUDGET = PrivacyBudget(8.0, 1e-5)


def _ledger(kits: Provisioned, path: Path, name: str = "a", n: int = 3) -> Ledger:
    led = Ledger(path, kit=load_kit(kits.clients[name]), budget=BUDGET)
    for r in range(1, n + 1):
        led.record(run_id="run-1", round_=r, step=(1.0, 0.01, 100), epsilon_after=0.5 * r, data_digest="ab" * 32)
    return led


def _lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text().splitlines()]


def _write(path: Path, lines: list[dict]) -> None:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(x, sort_keys=True, separators=(",", ":")) + "\n" for x in lines))


def test_ledger_round_trip_and_reopen(kits: Provisioned, tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    led = _ledger(kits, path)
    head = led.head()
    assert (head.seq, head.epsilon, len(led.history())) == (3, 1.5, 3)
    again = Ledger(path, kit=load_kit(kits.clients["a"]), budget=BUDGET)
    assert again.head() == head and again.history() == led.history()
    entries = verify_ledger(path, ca_cert=load_kit(kits.server).ca_cert)
    assert [e.seq for e in entries] == [0, 1, 2, 3]


@pytest.mark.parametrize("tamper, message", [
    (lambda ls: ls[2].update(epsilon_after=0.1), "entry 2 (line 3): signature"),
    (lambda ls: ls.pop(2), "entry 2 (line 3): sequence number 3"),
    (lambda ls: ls.__setitem__(slice(1, 3), [ls[2], ls[1]]), "entry 1 (line 2): sequence number 2"),
    (lambda ls: ls[1].update(noise_multiplier=9.0), "entry 1 (line 2): signature"),
])
def test_edits_removals_and_reordering_are_named(kits: Provisioned, tmp_path: Path, tamper, message) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ledger.jsonl"
    _ledger(kits, path)
    lines = _lines(path)
    tamper(lines)
    _write(path, lines)
    with pytest.raises(LedgerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verify_ledger(path, ca_cert=load_kit(kits.server).ca_cert)


def test_renumbered_entry_breaks_the_chain(kits: Provisioned, tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(kits, path)
    lines = _lines(path)
    del lines[1]
    for i, line in enumerate(lines):
        line["seq"] = i
    _write(path, lines)
    with pytest.raises(LedgerError, match=r"entry 1 \(line 2\)"):
        verify_ledger(path, ca_cert=load_kit(kits.server).ca_cert)


def test_ledger_signed_by_another_key_is_refused(kits: Provisioned, tmp_path: Path) -> None:
    mine, theirs = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _ledger(kits, mine, "a")
    _ledger(kits, theirs, "b")
    forged = _lines(mine)[:2] + _lines(theirs)[2:]  # b's signatures spliced into a's ledger
    _write(mine, forged)
    with pytest.raises(LedgerError, match=r"entry 2 \(line 3\)"):
        verify_ledger(mine, ca_cert=load_kit(kits.server).ca_cert)


def test_foreign_ca_is_refused(kits: Provisioned, other_kits: Provisioned, tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(kits, path)
    with pytest.raises(LedgerError, match="genesis certificate refused"):
        verify_ledger(path, ca_cert=load_kit(other_kits.server).ca_cert)


def test_torn_tail_is_dropped_and_budget_cannot_change(kits: Provisioned, tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(kits, path)
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"seq":4,"prev')  # crash inside the write
    led = Ledger(path, kit=load_kit(kits.clients["a"]), budget=BUDGET)
    assert led.head().seq == 3 and path.read_bytes() == intact
    with pytest.raises(LedgerError, match="budget"):
        Ledger(path, kit=load_kit(kits.clients["a"]), budget=PrivacyBudget(80.0, 1e-5))
    with pytest.raises(LedgerError, match="belongs to a"):
        Ledger(path, kit=load_kit(kits.clients["b"]), budget=BUDGET)
    with pytest.raises(LedgerError, match="beyond the budget"):
        led.record(run_id="r", round_=9, step=(1.0, 0.1, 10), epsilon_after=9.0, data_digest="")
    assert path.read_bytes() == intact
