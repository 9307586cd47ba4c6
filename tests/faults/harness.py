"""A whole federation as separate processes, for the fault matrix: the real key holder
and server (`fedsecure keyholder`, `fedsecure server` with the reward planners), clients
on threads or in processes of their own, and the checks every cell ends with.

The run: 2 rounds of TRAIN (real CKKS uploads of both attention groups, summed by the
server, decrypted by the key holder), SCORE, PERSONALISE (the last round only: the
clients report TAP's metrics) and REPORT_LEDGER; 3 clients whose updates hold one
constant each, so a published mean tells exactly who was counted and how often.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from client_sdk import FederatedClient, Update
from fedsecure.kit import load_kit
from fedsecure.provision import Provisioned
from fedsecure.transport.retry import Backoff
from fedsecure.types import Capabilities, LedgerHead, Modality, PayloadKind, Task, TaskKind, TaskReport, TrainSpec
from keyholder.decryption_log import verify_decryption_log
from tests.helpers import IMAGE, TEST_SHAPE, TEXT, encrypted_update, length_scorer, run_in_thread, wait_for

VALUES = {"a": 0.1, "b": 0.2, "c": 0.6, "d": 0.9}
N = 2048
ROUNDS = 2
CAPABILITIES = Capabilities(modalities=(Modality.IMAGE, Modality.TEXT), block_shape=TEST_SHAPE)
BACKOFF = Backoff(initial_s=0.2, max_delay_s=1.0, max_elapsed_s=120)
REPO = Path(__file__).resolve().parents[2]


def fault_update(kit: Any, task: Task) -> Update:
    """The client's update for a TRAIN task: its constant in both attention groups,
    weighted by its share of the participants' pairs (none declared: one each)."""
    assert isinstance(task.spec, TrainSpec)
    value = VALUES[kit.name]
    return encrypted_update(kit, {IMAGE: np.full(N, value), TEXT: np.full(N, value)},
                            1.0 / task.spec.weight_total)


def personalised_report(task: Task) -> TaskReport:
    """A PERSONALISE answer: the metrics a client reports after TAP (its model stays home)."""
    assert task.kind is TaskKind.PERSONALISE
    return TaskReport(metrics=(("heldout_accuracy_personalised", 0.5),))


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Read the server's database read-only (an empty list before it exists)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


@dataclass
class Hold:
    """Blocks one client's handler for one task kind (in one round) until released."""

    client: str
    kind: TaskKind
    round: int = 1
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def wait_if_mine(self, client: str, task: Task) -> None:
        if (client, task.kind, task.round) == (self.client, self.kind, self.round):
            self.entered.set()
            self.release.wait(120)


class FaultFederation:
    """Key holder, server and clients as processes and threads on loopback."""

    def __init__(self, kits: Provisioned, keyholder_keys: Path, tmp: Path, *, quorum: int = 3,
                 phase_deadline_s: int = 90) -> None:
        self.kits, self.keys, self.tmp = kits, keyholder_keys, tmp
        self.quorum, self.phase_deadline_s = quorum, phase_deadline_s
        self.state, self.kh_state = tmp / "server-state", tmp / "keyholder-state"
        self.db = self.state / "server.sqlite"
        self.log = tmp / "federation.log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kh_address = self.address = ""
        self.threads: list[tuple[threading.Thread, dict[str, Any]]] = []
        self.clients: list[FederatedClient] = []

    # --- processes ----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], address: str) -> str:
        port_file = self.tmp / f"{name}.port"
        port_file.unlink(missing_ok=True)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "apps.cli", *args, "--address", address, "--port-file", str(port_file)],
            cwd=REPO, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, f"{name} to serve")
        return f"127.0.0.1:{port}"

    def start_keyholder(self) -> None:
        """Start (or restart, on the same port and state) the key holder."""
        self.kh_address = self._spawn("keyholder", ["keyholder", "--kit", str(self.kits.keyholder), "--keys",
                                                    str(self.keys), "--state", str(self.kh_state)],
                                      self.kh_address or "127.0.0.1:0")

    def start_server(self) -> None:
        """Start (or restart, on the same port and state) the server."""
        self.address = self._spawn("server", [
            "server", "--kit", str(self.kits.server), "--state", str(self.state), "--keyholder-address",
            self.kh_address, "--rounds", str(ROUNDS), "--quorum", str(self.quorum), "--min-clients", "3",
            "--phases", "train,score,personalise,report_ledger", "--phase-deadline", str(self.phase_deadline_s),
            "--prompts-per-round", "2", "--local-steps", "1", "--align-steps", "0"], self.address or "127.0.0.1:0")

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to a process; after SIGKILL, reap it."""
        proc = self.procs[name]
        os.kill(proc.pid, sig)
        if sig is signal.SIGKILL:
            proc.wait(10)

    def close(self) -> None:
        """Release held handlers' waiters, stop every process."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for c in self.clients:
            c.close()

    # --- clients ------------------------------------------------------------------------

    def start_client(self, name: str, hold: Hold | None = None) -> None:
        """A client on a thread, serving until the run finishes (riding out restarts)."""
        kit = load_kit(self.kits.clients[name])

        def train(task: Task, ctx: Any) -> Update:
            if hold:
                hold.wait_if_mine(name, task)
            return fault_update(kit, task)

        def score(task: Task, ctx: Any) -> Any:
            if hold:
                hold.wait_if_mine(name, task)
            return length_scorer(task, ctx)

        def report_ledger(task: Task, ctx: Any) -> LedgerHead:
            if hold:
                hold.wait_if_mine(name, task)
            return LedgerHead()

        def personalise(task: Task, ctx: Any) -> TaskReport:
            if hold:
                hold.wait_if_mine(name, task)
            return personalised_report(task)

        client = FederatedClient(kit=kit, address=self.address, poll_wait_ms=500, backoff=BACKOFF,
                                 capabilities=CAPABILITIES, handlers={TaskKind.TRAIN: train, TaskKind.SCORE: score,
                                                                      TaskKind.PERSONALISE: personalise,
                                                                      TaskKind.REPORT_LEDGER: report_ledger})
        self.clients.append(client)
        self.threads.append(run_in_thread(client))

    def client_process(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        """A client in a process of its own (``tests.faults.client_process``), to be killed."""
        return subprocess.Popen([sys.executable, "-m", "tests.faults.client_process", "--kit",
                                 str(self.kits.clients[name]), "--address", self.address, *extra],
                                cwd=REPO, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115

    # --- what the server's database says ----------------------------------------------

    def submissions(self, kind: PayloadKind | None = None) -> list[tuple[str, str]]:
        """(submission id, client) of accepted submissions, optionally of one payload kind."""
        if kind is None:
            return query(self.db, "SELECT submission_id, client FROM submissions ORDER BY client")
        return query(self.db, "SELECT submission_id, client FROM submissions WHERE payload_kind=? ORDER BY client",
                     int(kind))

    def phase_state(self) -> str | None:
        """The open attempt's phase state ("open", "closing", ...), if any."""
        rows = query(self.db, "SELECT phase_state FROM rounds WHERE state NOT IN ('closed', 'retried')")
        return rows[0][0] if rows else None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    # --- the end of every cell ----------------------------------------------------------

    def finish_and_check(self, *, before: list[tuple[str, str]], contributors: tuple[str, ...] = ("a", "b", "c"),
                         timeout_s: float = 240) -> dict[str, Any]:
        """Wait for the run to finish, then check: nothing accepted before the fault was
        lost, nothing was counted twice (one submission per task; each published mean is
        exactly the contributors' values once each), and the decryption log verifies and
        never decrypted two different aggregates of one contribution."""
        for t, out in self.threads:
            t.join(timeout_s)
            assert not t.is_alive() and "error" not in out, (out, self.tail())
        runs = query(self.db, "SELECT state, rounds_closed, detail FROM runs")
        assert [(s, n) for s, n, _ in runs] == [("finished", ROUNDS)], (runs, self.tail())
        ids = {sid for sid, _ in self.submissions()}
        assert {sid for sid, _ in before} <= ids, "an accepted submission was lost"
        per_task = query(self.db, "SELECT task_id, COUNT(*) FROM submissions GROUP BY task_id")
        assert all(n == 1 for _, n in per_task)
        from server.rounds.objects import ObjectStore

        objects = ObjectStore(self.state / "objects")
        expected = float(np.mean([VALUES[c] for c in contributors]))
        published = query(self.db, "SELECT round, group_name, chunk_digests, contributors FROM aggregates")
        assert sorted((r, g) for r, g, _, _ in published) == [(r, g) for r in range(1, ROUNDS + 1)
                                                                for g in sorted((IMAGE, TEXT))], published
        for _, _, digests, n in published:
            mean = np.frombuffer(b"".join(objects.get(bytes.fromhex(d)) for d in json.loads(digests)), dtype="<f4")
            assert n == len(contributors) and mean.size == N and np.max(np.abs(mean - expected)) < 1e-4, (n, mean[:3])
        entries = verify_decryption_log(self.kh_state / "decryptions.jsonl",
                                        cert=load_kit(self.kits.keyholder).cert)
        by_group: dict[tuple[int, str], set[tuple[tuple[str, ...], str]]] = {}
        for e in entries:
            by_group.setdefault((e.round, e.group), set()).add((e.contributors, e.aggregate_sha256))
        assert all(len(v) == 1 for v in by_group.values()), by_group  # repeats only of the very same sum
        assert all(c == tuple(sorted(contributors)) for v in by_group.values() for c, _ in v), by_group
        restarts = self.log.read_text(errors="replace").count("listening on port") - 2
        return {"submissions": len(ids), "kept_from_before": len(before), "decryptions": len(entries),
                "repeated_decryptions": len(entries) - len(by_group), "process_starts_after_the_first": restarts}

