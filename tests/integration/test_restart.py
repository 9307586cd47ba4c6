"""``kill -9`` of the server while tasks are out, then a restart on the same state:
the run completes, and what was accepted before the kill is neither lost nor counted
twice (even when the client resends it because the acknowledgement was lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from client_sdk import FederatedClient
from fedsecure.kit import load_kit
from fedsecure.proto.v1 import federation_pb2
from fedsecure.provision import Provisioned
from fedsecure.transport.retry import Backoff
from fedsecure.types import LedgerHead, Task, TaskKind
from tests.faults.harness import query
from tests.helpers import run_in_thread, wait_for


def _server(kits: Provisioned, state: Path, address: str, port_file: Path, log: Path) -> subprocess.Popen[bytes]:
    port_file.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "server", "--kit", str(kits.server), "--address", address,
         "--state", str(state), "--port-file", str(port_file), "--rounds", "2", "--quorum", "2",
         "--min-clients", "3", "--phases", "report_ledger", "--phase-deadline", "120"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115



def test_sigkill_while_tasks_are_out_then_restart(kits: Provisioned, tmp_path: Path) -> None:
    state, port_file, log = tmp_path / "state", tmp_path / "port", tmp_path / "server.log"
    db = state / "server.sqlite"
    proc = _server(kits, state, "127.0.0.1:0", port_file, log)
    procs = [proc]
    release = threading.Event()

    def slow_report(task: Task, ctx: object) -> LedgerHead:
        if task.round == 1:
            release.wait(60)  # c holds its round-1 task across the kill
        return LedgerHead()

    try:
        port = wait_for(lambda: port_file.exists() and port_file.read_text(), 30, "server port")
        address = f"127.0.0.1:{port}"
        backoff = Backoff(initial_s=0.1, max_delay_s=1.0, max_elapsed_s=60)
        clients = [FederatedClient(kit=load_kit(kits.clients[n]), address=address, poll_wait_ms=500, backoff=backoff,
                                   handlers={TaskKind.REPORT_LEDGER: slow_report} if n == "c" else None)
                   for n in "abc"]
        threads = [run_in_thread(c) for c in clients]
        before = wait_for(lambda: query(db, "SELECT submission_id, client, payload FROM submissions ORDER BY client")
                       if len(query(db, "SELECT 1 FROM submissions")) == 2 else None, 30, "a and b to submit")
        assert [row[1] for row in before] == ["a", "b"]

        os.kill(proc.pid, signal.SIGKILL)  # no chance to flush or say goodbye
        proc.wait(10)
        time.sleep(0.5)
        proc = _server(kits, state, address, port_file, log)
        procs.append(proc)
        wait_for(lambda: port_file.exists(), 30, "restarted server")

        # a's acknowledgement was "lost": it resends the exact signed submission.
        resend = federation_pb2.ReportLedgerRequest()
        resend.ParseFromString(before[0][2])
        ack = clients[0]._retry(lambda: clients[0]._stub.ReportLedger(resend, timeout=10))
        assert ack.duplicate and ack.submission_id == before[0][0]

        release.set()
        for t, out in threads:
            t.join(90)
            assert not t.is_alive() and "error" not in out, out
        for c in clients:
            c.close()
        runs = query(db, "SELECT state, rounds_closed FROM runs")
        assert runs == [("finished", 2)], (runs, log.read_text()[-3000:])
        per_task = query(db, "SELECT task_id, COUNT(*) FROM submissions GROUP BY task_id")
        assert len(per_task) == 6 and all(n == 1 for _, n in per_task)
        kept = query(db, "SELECT submission_id, client FROM submissions WHERE submission_id IN (?, ?)",
                      before[0][0], before[1][0])
        assert sorted(kept) == sorted((sid, client) for sid, client, _ in before)
        assert [o["summary"].completed["REPORT_LEDGER"] for _, o in threads] == [2, 2, 2]
        assert any(o["summary"].retries > 0 for _, o in threads)  # they rode out the outage
    finally:
        release.set()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)


def test_sigkill_mid_align_stage_resumes_from_the_last_step(kits: Provisioned, tmp_path: Path) -> None:
    """The ALIGN stage of the real server (the easy-VQA policy): SIGKILL after a few GRPO
    steps, restart on the same state; the clients reopen their score sessions, the stage
    resumes from its last checkpointed step for the same roster, and no step runs twice."""
    import json

    from fedsecure.types import Capabilities, Modality, Score, TaskReport

    state, port_file, log = tmp_path / "state", tmp_path / "port", tmp_path / "server.log"
    steps = 6

    def server(address: str) -> subprocess.Popen[bytes]:
        port_file.unlink(missing_ok=True)
        return subprocess.Popen(
            [sys.executable, "-m", "apps.cli", "server", "--kit", str(kits.server), "--address", address,
             "--state", str(state), "--port-file", str(port_file), "--rounds", "1", "--quorum", "2",
             "--min-clients", "3", "--phases", "align", "--phase-deadline", "600",
             # the curated lists: the clients here score by length, so on the policy's own
             # samples no type would be trusted and every step would pass at once, before the kill
             "--align-steps", str(steps), "--align-prompts", "4", "--align-policy-lists", "0"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def handler(task: Task, ctx) -> TaskReport:  # type: ignore[no-untyped-def]
        return ctx.score_session(task, lambda batch: [Score(i.item_id, float(len(i.completion)))
                                                      for i in batch.items])

    latest = state / "align" / "checkpoints" / "latest.json"
    proc = server("127.0.0.1:0")
    procs = [proc]
    try:
        port = wait_for(lambda: port_file.exists() and port_file.read_text(), 30, "server port")
        address = f"127.0.0.1:{port}"
        backoff = Backoff(initial_s=0.2, max_delay_s=1.0, max_elapsed_s=120)
        clients = [FederatedClient(kit=load_kit(kits.clients[n]), address=address, poll_wait_ms=500, backoff=backoff,
                                   capabilities=Capabilities(modalities=(Modality.TEXT,)),
                                   handlers={TaskKind.ALIGN: handler}) for n in "abc"]
        threads = [run_in_thread(c) for c in clients]
        wait_for(lambda: latest.exists() and json.loads(latest.read_text())["step"] >= 2, 300, "two GRPO steps")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = json.loads(latest.read_text())["step"]
        assert killed_at < steps
        proc = server(address)
        procs.append(proc)
        for t, out in threads:
            t.join(400)
            assert not t.is_alive() and "error" not in out, (out, log.read_text()[-3000:])
        for c in clients:
            c.close()
        assert json.loads(latest.read_text())["step"] == steps
        runs = query(state / "server.sqlite", "SELECT state, rounds_closed FROM runs")
        assert runs == [("finished", 1)], (runs, log.read_text()[-3000:])
        records = [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines()]
        align = [r for r in records if r.get("phase") == "align"]
        # the restarted server ran only the rest of the round: each step once
        assert len(align) == 1 and align[0]["steps"] == steps - killed_at and align[0]["router_fit"] is None, align
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
