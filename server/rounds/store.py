"""Durable server state in SQLite (WAL): runs, rounds, tasks, submissions, clients,
revocations, ledger heads and published aggregates.

Every state change is one transaction, committed before the RPC that caused it
returns, with ``synchronous=FULL``: a ``kill -9`` at any point loses nothing that was
acknowledged, and a resent submission finds its earlier copy (counted once).
Only the event-loop thread touches the connection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedsecure import serde
from fedsecure.types import Capabilities, ClientInfo, LedgerHead, Modality, RunConfig, Task, TaskKind, PhaseConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients(
  name TEXT PRIMARY KEY, state TEXT NOT NULL, capabilities TEXT NOT NULL, sdk_version TEXT NOT NULL,
  cert_fingerprint TEXT NOT NULL, enrolled_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS revocations(
  name TEXT PRIMARY KEY, reason TEXT NOT NULL, revoked_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
  run_id TEXT PRIMARY KEY, config TEXT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL,
  rounds_closed INTEGER NOT NULL DEFAULT 0, waiting_since_ms INTEGER);
CREATE TABLE IF NOT EXISTS rounds(
  run_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, state TEXT NOT NULL,
  phase_index INTEGER NOT NULL, phase_state TEXT NOT NULL, phase_deadline_ms INTEGER NOT NULL,
  participants TEXT NOT NULL, opened_ms INTEGER NOT NULL, closed_ms INTEGER,
  PRIMARY KEY(run_id, round, attempt));
CREATE TABLE IF NOT EXISTS tasks(
  task_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL,
  phase_index INTEGER NOT NULL, kind INTEGER NOT NULL, client TEXT NOT NULL, state TEXT NOT NULL,
  deadline_ms INTEGER NOT NULL, task BLOB NOT NULL, created_ms INTEGER NOT NULL, delivered_ms INTEGER);
CREATE INDEX IF NOT EXISTS tasks_by_client ON tasks(client, state);
CREATE INDEX IF NOT EXISTS tasks_by_phase ON tasks(run_id, round, attempt, phase_index);
CREATE TABLE IF NOT EXISTS submissions(
  submission_id TEXT PRIMARY KEY, task_id TEXT NOT NULL UNIQUE REFERENCES tasks(task_id),
  client TEXT NOT NULL, nonce BLOB NOT NULL, payload_kind INTEGER NOT NULL, payload BLOB NOT NULL,
  received_ms INTEGER NOT NULL, UNIQUE(client, nonce));
CREATE TABLE IF NOT EXISTS ledger_heads(
  client TEXT NOT NULL, seq INTEGER NOT NULL, entry_sha256 BLOB NOT NULL, epsilon REAL NOT NULL,
  delta REAL NOT NULL, epsilon_budget REAL NOT NULL, reported_ms INTEGER NOT NULL,
  PRIMARY KEY(client, seq));
CREATE TABLE IF NOT EXISTS aggregates(
  run_id TEXT NOT NULL, round INTEGER NOT NULL, group_name TEXT NOT NULL, encoding TEXT NOT NULL,
  chunk_digests TEXT NOT NULL, contributors INTEGER NOT NULL, published_ms INTEGER NOT NULL,
  PRIMARY KEY(run_id, round, group_name));
"""

ACTIVE_RUN_STATES = ("waiting", "running")


def now_ms() -> int:
    """Wall-clock milliseconds (deadlines are absolute so they survive restarts)."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class RunRow:
    """A run as stored."""

    run_id: str
    config: RunConfig
    state: str
    detail: str
    round: int
    attempt: int
    rounds_closed: int
    waiting_since_ms: int | None


@dataclass(frozen=True)
class RoundRow:
    """One attempt of one round, and where it stands."""

    run_id: str
    round: int
    attempt: int
    state: str
    phase_index: int
    phase_state: str
    phase_deadline_ms: int
    participants: tuple[str, ...]


@dataclass(frozen=True)
class TaskRow:
    """A task as stored: its wire form plus its state."""

    task: Task
    client: str
    state: str
    phase_index: int


@dataclass(frozen=True)
class SubmissionRow:
    """An accepted submission: who, for which task, and its payload bytes (protobuf)."""

    submission_id: str
    task_id: str
    client: str
    payload_kind: int
    payload: bytes


def config_to_json(c: RunConfig) -> str:
    """Stable JSON of a run config (stored, never unpickled)."""
    return json.dumps({
        "rounds": c.rounds, "sample_rate": c.sample_rate, "quorum": c.quorum, "min_clients": c.min_clients,
        "phases": [[int(p.kind), p.deadline_s] for p in c.phases], "max_attempts": c.max_attempts,
        "enroll_timeout_s": c.enroll_timeout_s}, sort_keys=True)


def config_from_json(text: str) -> RunConfig:
    """Inverse of :func:`config_to_json`."""
    d = json.loads(text)
    d["phases"] = tuple(PhaseConfig(TaskKind(k), s) for k, s in d["phases"])
    return RunConfig(**d)


class Store:
    """The server's SQLite database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- clients and revocations ---------------------------------------------------

    def upsert_client(self, *, name: str, capabilities: Capabilities, sdk_version: str, fingerprint: str) -> None:
        """Enrol a client or refresh its declared capabilities."""
        caps = json.dumps({"modalities": [int(m) for m in capabilities.modalities],
                           "sample_counts": dict(capabilities.sample_counts)}, sort_keys=True)
        t = now_ms()
        with self.tx() as db:
            db.execute(
                "INSERT INTO clients(name, state, capabilities, sdk_version, cert_fingerprint, enrolled_ms, last_seen_ms)"
                " VALUES(?, 'active', ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET capabilities=excluded.capabilities,"
                " sdk_version=excluded.sdk_version, cert_fingerprint=excluded.cert_fingerprint,"
                " last_seen_ms=excluded.last_seen_ms",
                (name, caps, sdk_version, fingerprint, t, t))

    def touch_client(self, name: str) -> bool:
        """Record that a client was seen; False if it never enrolled."""
        cur = self.db.execute("UPDATE clients SET last_seen_ms=? WHERE name=?", (now_ms(), name))
        return cur.rowcount == 1

    def set_client_state(self, name: str, state: str) -> None:
        """Mark a client active, exhausted or revoked."""
        self.db.execute("UPDATE clients SET state=? WHERE name=?", (state, name))

    def clients(self) -> list[ClientInfo]:
        """Every enrolled client with its newest ledger head."""
        rows = self.db.execute(
            "SELECT name, state, capabilities, sdk_version, last_seen_ms FROM clients ORDER BY name").fetchall()
        out = []
        for name, state, caps, sdk, seen in rows:
            c = json.loads(caps)
            out.append(ClientInfo(
                name=name, state=state,
                capabilities=Capabilities(tuple(Modality(m) for m in c["modalities"]),
                                          tuple(sorted(c["sample_counts"].items()))),
                last_seen_ms=seen, ledger_head=self.ledger_head(name), sdk_version=sdk))
        return out

    def eligible_clients(self, *, seen_since_ms: int) -> list[str]:
        """Active clients seen recently: the pool participants are sampled from."""
        rows = self.db.execute(
            "SELECT name FROM clients WHERE state='active' AND last_seen_ms>=? ORDER BY name", (seen_since_ms,))
        return [r[0] for r in rows]

    def revoke(self, name: str, reason: str) -> bool:
        """Add ``name`` to the revocation list; True if it was not there yet."""
        with self.tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO revocations(name, reason, revoked_ms) VALUES(?, ?, ?)",
                             (name, reason, now_ms()))
            db.execute("UPDATE clients SET state='revoked' WHERE name=?", (name,))
            db.execute("UPDATE tasks SET state='expired' WHERE client=? AND state='open'", (name,))
            return cur.rowcount == 1

    def revoked_names(self) -> set[str]:
        """Names on the revocation list."""
        return {r[0] for r in self.db.execute("SELECT name FROM revocations")}

    # --- ledger heads -------------------------------------------------------------

    def ledger_head(self, client: str) -> LedgerHead:
        """The newest head a client reported (the empty head if none)."""
        row = self.db.execute(
            "SELECT seq, entry_sha256, epsilon, delta, epsilon_budget FROM ledger_heads WHERE client=?"
            " ORDER BY seq DESC LIMIT 1", (client,)).fetchone()
        return LedgerHead(*row) if row else LedgerHead()

    def ledger_heads(self, client: str) -> list[LedgerHead]:
        """Every head a client reported, oldest first (the auditor cross-checks these)."""
        rows = self.db.execute(
            "SELECT seq, entry_sha256, epsilon, delta, epsilon_budget FROM ledger_heads WHERE client=?"
            " ORDER BY seq", (client,))
        return [LedgerHead(*r) for r in rows]

    def find_ledger_head(self, client: str, seq: int) -> LedgerHead | None:
        """The head a client reported at ``seq``, if any."""
        row = self.db.execute(
            "SELECT seq, entry_sha256, epsilon, delta, epsilon_budget FROM ledger_heads WHERE client=? AND seq=?",
            (client, seq)).fetchone()
        return LedgerHead(*row) if row else None

    @staticmethod
    def insert_ledger_head(db: sqlite3.Connection, client: str, head: LedgerHead) -> None:
        """Record a head inside the caller's transaction (no-op if already recorded)."""
        db.execute(
            "INSERT OR IGNORE INTO ledger_heads(client, seq, entry_sha256, epsilon, delta, epsilon_budget,"
            " reported_ms) VALUES(?, ?, ?, ?, ?, ?, ?)",
            (client, head.seq, head.entry_sha256, head.epsilon, head.delta, head.epsilon_budget, now_ms()))

    # --- runs, rounds, tasks ----------------------------------------------------------

    def active_run(self) -> RunRow | None:
        """The run in progress (at most one), if any."""
        row = self.db.execute(
            "SELECT run_id, config, state, detail, round, attempt, rounds_closed, waiting_since_ms FROM runs"
            " WHERE state IN ('waiting', 'running') ORDER BY created_ms DESC LIMIT 1").fetchone()
        return self._run(row) if row else None

    def latest_run(self) -> RunRow | None:
        """The newest run in any state."""
        row = self.db.execute(
            "SELECT run_id, config, state, detail, round, attempt, rounds_closed, waiting_since_ms FROM runs"
            " ORDER BY created_ms DESC, rowid DESC LIMIT 1").fetchone()
        return self._run(row) if row else None

    def run(self, run_id: str) -> RunRow | None:
        """A run by id."""
        row = self.db.execute(
            "SELECT run_id, config, state, detail, round, attempt, rounds_closed, waiting_since_ms FROM runs"
            " WHERE run_id=?", (run_id,)).fetchone()
        return self._run(row) if row else None

    @staticmethod
    def _run(row: Sequence) -> RunRow:  # type: ignore[type-arg]
        return RunRow(row[0], config_from_json(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])

    def insert_run(self, run_id: str, config: RunConfig) -> None:
        """Create a run waiting for its first round."""
        with self.tx() as db:
            db.execute("INSERT INTO runs(run_id, config, state, created_ms, round, attempt, waiting_since_ms)"
                       " VALUES(?, ?, 'waiting', ?, 1, 1, ?)", (run_id, config_to_json(config), now_ms(), now_ms()))

    @staticmethod
    def update_run(db: sqlite3.Connection, run_id: str, **fields: object) -> None:
        """Update run columns inside the caller's transaction."""
        cols = ", ".join(f"{k}=?" for k in fields)
        db.execute(f"UPDATE runs SET {cols} WHERE run_id=?", (*fields.values(), run_id))

    def open_round(self, run_id: str, round_: int, attempt: int) -> RoundRow | None:
        """The open (or closing) attempt of a round, if any."""
        row = self.db.execute(
            "SELECT run_id, round, attempt, state, phase_index, phase_state, phase_deadline_ms, participants"
            " FROM rounds WHERE run_id=? AND round=? AND attempt=? AND state='open'",
            (run_id, round_, attempt)).fetchone()
        if row is None:
            return None
        return RoundRow(*row[:7], tuple(json.loads(row[7])))

    @staticmethod
    def insert_round(db: sqlite3.Connection, run_id: str, round_: int, attempt: int,
                     participants: Sequence[str]) -> None:
        """Create an open attempt of a round (phase 0 not yet planned)."""
        db.execute("INSERT INTO rounds(run_id, round, attempt, state, phase_index, phase_state, phase_deadline_ms,"
                   " participants, opened_ms) VALUES(?, ?, ?, 'open', 0, 'planning', 0, ?, ?)",
                   (run_id, round_, attempt, json.dumps(list(participants)), now_ms()))

    @staticmethod
    def update_round(db: sqlite3.Connection, run_id: str, round_: int, attempt: int, **fields: object) -> None:
        """Update round columns inside the caller's transaction."""
        cols = ", ".join(f"{k}=?" for k in fields)
        db.execute(f"UPDATE rounds SET {cols} WHERE run_id=? AND round=? AND attempt=?",
                   (*fields.values(), run_id, round_, attempt))

    @staticmethod
    def insert_task(db: sqlite3.Connection, task: Task, client: str, phase_index: int) -> None:
        """Persist a task in its wire form (protobuf, never pickle)."""
        db.execute("INSERT INTO tasks(task_id, run_id, round, attempt, phase_index, kind, client, state,"
                   " deadline_ms, task, created_ms) VALUES(?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                   (task.task_id, task.run_id, task.round, task.attempt, phase_index, int(task.kind), client,
                    task.deadline_unix_ms, serde.task_to_bytes(task), now_ms()))

    def task(self, task_id: str) -> TaskRow | None:
        """A task by id."""
        row = self.db.execute("SELECT task, client, state, phase_index FROM tasks WHERE task_id=?",
                              (task_id,)).fetchone()
        return self._task(row) if row else None

    @staticmethod
    def _task(row: Sequence) -> TaskRow:  # type: ignore[type-arg]
        return TaskRow(serde.task_from_bytes(row[0]), row[1], row[2], row[3])

    def next_open_task(self, client: str, run_id: str, skip: Sequence[str] = ()) -> TaskRow | None:
        """The client's oldest open task in the run not in ``skip`` (re-delivered until answered)."""
        marks = ",".join("?" * len(skip))
        row = self.db.execute(
            "SELECT task, client, state, phase_index FROM tasks WHERE client=? AND run_id=? AND state='open'"
            f" AND task_id NOT IN ({marks}) ORDER BY created_ms, task_id LIMIT 1",
            (client, run_id, *skip)).fetchone()
        return self._task(row) if row else None

    def mark_delivered(self, task_id: str) -> None:
        """Record when a task was last handed to its client."""
        self.db.execute("UPDATE tasks SET delivered_ms=? WHERE task_id=?", (now_ms(), task_id))

    def phase_tasks(self, run_id: str, round_: int, attempt: int, phase_index: int) -> list[TaskRow]:
        """Every task of one phase."""
        rows = self.db.execute(
            "SELECT task, client, state, phase_index FROM tasks WHERE run_id=? AND round=? AND attempt=?"
            " AND phase_index=? ORDER BY client", (run_id, round_, attempt, phase_index))
        return [self._task(r) for r in rows]

    def count_tasks(self, run_id: str, state: str) -> int:
        """How many tasks of a run are in ``state``."""
        return self.db.execute("SELECT COUNT(*) FROM tasks WHERE run_id=? AND state=?",
                               (run_id, state)).fetchone()[0]

    # --- submissions ----------------------------------------------------------------

    def submission(self, submission_id: str) -> SubmissionRow | None:
        """A submission by id (the digest of its signed envelope)."""
        row = self.db.execute("SELECT submission_id, task_id, client, payload_kind, payload FROM submissions"
                              " WHERE submission_id=?", (submission_id,)).fetchone()
        return SubmissionRow(*row) if row else None

    def submission_for_task(self, task_id: str) -> SubmissionRow | None:
        """The accepted submission of a task, if any."""
        row = self.db.execute("SELECT submission_id, task_id, client, payload_kind, payload FROM submissions"
                              " WHERE task_id=?", (task_id,)).fetchone()
        return SubmissionRow(*row) if row else None

    def nonce_used(self, client: str, nonce: bytes) -> bool:
        """Whether a client already used a nonce."""
        return self.db.execute("SELECT 1 FROM submissions WHERE client=? AND nonce=?",
                               (client, nonce)).fetchone() is not None

    @staticmethod
    def insert_submission(db: sqlite3.Connection, *, submission_id: str, task_id: str, client: str,
                          nonce: bytes, payload_kind: int, payload: bytes) -> None:
        """Record an accepted submission inside the caller's transaction."""
        db.execute("INSERT INTO submissions(submission_id, task_id, client, nonce, payload_kind, payload,"
                   " received_ms) VALUES(?, ?, ?, ?, ?, ?, ?)",
                   (submission_id, task_id, client, nonce, payload_kind, payload, now_ms()))

    def count_submissions(self, run_id: str) -> int:
        """Accepted submissions of a run."""
        return self.db.execute("SELECT COUNT(*) FROM submissions s JOIN tasks t USING(task_id) WHERE t.run_id=?",
                               (run_id,)).fetchone()[0]

    # --- aggregates -----------------------------------------------------------------

    def publish_aggregate(self, *, run_id: str, round_: int, group: str, encoding: str,
                          chunk_digests: Sequence[bytes], contributors: int) -> None:
        """Make an aggregate downloadable (idempotent: re-publishing keeps the first)."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO aggregates(run_id, round, group_name, encoding, chunk_digests,"
                       " contributors, published_ms) VALUES(?, ?, ?, ?, ?, ?, ?)",
                       (run_id, round_, group, encoding, json.dumps([d.hex() for d in chunk_digests]),
                        contributors, now_ms()))

    def aggregate_groups(self, run_id: str, round_: int) -> list[str]:
        """Names of the aggregates published for a round, sorted."""
        rows = self.db.execute("SELECT group_name FROM aggregates WHERE run_id=? AND round=? ORDER BY group_name",
                               (run_id, round_)).fetchall()
        return [r[0] for r in rows]

    def aggregate(self, run_id: str, round_: int, group: str) -> tuple[str, list[bytes], int] | None:
        """(encoding, chunk digests, contributors) of a published aggregate."""
        row = self.db.execute("SELECT encoding, chunk_digests, contributors FROM aggregates WHERE run_id=?"
                              " AND round=? AND group_name=?", (run_id, round_, group)).fetchone()
        if row is None:
            return None
        return row[0], [bytes.fromhex(h) for h in json.loads(row[1])], row[2]
