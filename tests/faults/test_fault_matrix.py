"""The fault matrix (issue 15 item 3): one test per cell, each on a whole federation of
processes (tests/faults/harness.py) running 2 rounds of TRAIN (CKKS through the key
holder), SCORE, PERSONALISE (last round) and REPORT_LEDGER. After every fault the run must finish, nothing accepted
before the fault may be lost, nothing may count twice (each published mean is exactly
the contributors' values once each), and the key holder's decryption log must verify.

The cell "object store full" is tests/integration/test_object_store.py; "client killed
mid-ALIGN-session" and "server killed mid-ALIGN" are tests/integration/test_restart.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsecure.provision import Provisioned
from fedsecure.types import PayloadKind, TaskKind
from tests.faults.harness import FaultFederation, Hold
from tests.helpers import wait_for


@pytest.fixture
def federation(kits: Provisioned, keyholder_keys: Path, tmp_path: Path) -> Iterator[FaultFederation]:
    fed = FaultFederation(kits, keyholder_keys, tmp_path)
    try:
        yield fed
    finally:
        fed.close()


def _start(fed: FaultFederation, hold: Hold | None = None, clients: str = "abc") -> None:
    fed.start_keyholder()
    fed.start_server()
    for name in clients:
        fed.start_client(name, hold)


@pytest.mark.parametrize("kind, payload, round_", [
    (TaskKind.TRAIN, PayloadKind.UPDATE, 1), (TaskKind.SCORE, PayloadKind.SCORES, 1),
    (TaskKind.PERSONALISE, PayloadKind.TASK_REPORT, 2), (TaskKind.REPORT_LEDGER, PayloadKind.LEDGER_HEAD, 1)],
    ids=["train", "score", "personalise", "report_ledger"])
def test_server_sigkill_while_a_phase_is_open(federation: FaultFederation, kind: TaskKind, payload: PayloadKind,
                                              round_: int) -> None:
    fed = federation
    hold = Hold("c", kind, round_)  # c is still working when the server dies
    _start(fed, hold)
    assert hold.entered.wait(120), fed.tail()
    wait_for(lambda: len(fed.submissions(payload)) == 2, 60, "a's and b's answers")
    before = fed.submissions()  # everything accepted so far, of every kind
    fed.signal("server", signal.SIGKILL)
    fed.start_server()
    hold.release.set()
    print("fault-matrix:", fed.finish_and_check(before=before))


def test_server_sigkill_while_closing_with_the_key_holder_decrypting(federation: FaultFederation) -> None:
    """The key holder is frozen (SIGSTOP) so that the server's decryption call is in
    flight when the server dies in phase state "closing"."""
    fed = federation
    _start(fed)
    fed.signal("keyholder", signal.SIGSTOP)
    wait_for(lambda: fed.phase_state() == "closing", 120, "the TRAIN phase to start closing")
    time.sleep(1.0)  # the decryption call is open now
    before = fed.submissions()
    assert len(before) == 3
    fed.signal("server", signal.SIGKILL)
    fed.signal("keyholder", signal.SIGCONT)
    fed.start_server()
    print("fault-matrix:", fed.finish_and_check(before=before))


def test_keyholder_sigkill_mid_decryption(federation: FaultFederation) -> None:
    """Killed while a decryption call is open, and again the moment its first log entry
    appears (decrypted and logged, the answer maybe never sent): restarted on its state,
    it answers the server's retry of the very same sum and nothing else."""
    fed = federation
    _start(fed)
    fed.signal("keyholder", signal.SIGSTOP)
    wait_for(lambda: fed.phase_state() == "closing", 120, "the TRAIN phase to start closing")
    time.sleep(1.0)
    fed.signal("keyholder", signal.SIGKILL)
    fed.start_keyholder()
    log = fed.kh_state / "decryptions.jsonl"
    wait_for(lambda: log.exists() and log.read_text().strip(), 120, "the first decryption")
    fed.signal("keyholder", signal.SIGKILL)
    fed.start_keyholder()
    print("fault-matrix:", fed.finish_and_check(before=fed.submissions()))


@pytest.mark.parametrize("hang", ["upload", "score"])
def test_client_killed_mid_task_then_restarted(federation: FaultFederation, hang: str) -> None:
    """c's process dies mid-upload (header and first chunk sent) or mid-scoring; a new
    process for c gets the same task again and answers it once."""
    fed = federation
    _start(fed, clients="ab")
    proc = fed.client_process("c", "--hang", hang)
    needle = f"c: hanging mid-{'upload' if hang == 'upload' else 'scoring'}"
    wait_for(lambda: needle in fed.log.read_text(errors="replace"), 120, needle)
    time.sleep(0.5)
    before = fed.submissions()
    proc.kill()
    proc.wait(10)
    partial = PayloadKind.UPDATE if hang == "upload" else PayloadKind.SCORES
    assert all(client != "c" for _, client in fed.submissions(partial))  # nothing of c's partial work counted
    fed.start_client("c")
    print("fault-matrix:", fed.finish_and_check(before=before))


def test_client_clock_skewed_beyond_the_window(kits: Provisioned, keyholder_keys: Path, tmp_path: Path) -> None:
    """c's clock runs 20 minutes ahead (the window is 10): each of its signed answers is
    refused; every phase closes at its deadline on a and b (quorum 2), counted once each."""
    fed = FaultFederation(kits, keyholder_keys, tmp_path, quorum=2, phase_deadline_s=8)
    try:
        _start(fed, clients="ab")
        proc = fed.client_process("c", "--skew-s", "1200")
        print("fault-matrix:", fed.finish_and_check(before=[], contributors=("a", "b")))
        assert all(client != "c" for _, client in fed.submissions())
        assert "outside the allowed clock skew" in fed.log.read_text(errors="replace")
        proc.wait(60)
        assert "c: done {} refused" in fed.log.read_text(errors="replace")
    finally:
        fed.close()
