"""Runs, the attempts of their rounds, and the tasks of each phase (tables ``runs``,
``rounds`` and ``tasks``). Tasks are stored in their wire form (protobuf, never pickle)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from fedsecure import serde
from fedsecure.types import PhaseConfig, RunConfig, Task, TaskKind

from server.rounds.database import Database, Tx, now_ms

_RUN_COLUMNS = "run_id, config, state, detail, round, attempt, rounds_closed, waiting_since_ms"
_TASK_COLUMNS = "task, client, state, phase_index"


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


def _run(row: Sequence) -> RunRow:  # type: ignore[type-arg]
    return RunRow(row[0], config_from_json(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])


def _task(row: Sequence) -> TaskRow:  # type: ignore[type-arg]
    return TaskRow(serde.task_from_bytes(row[0]), row[1], row[2], row[3])


class RunStore:
    """The run state machine's durable state. Methods taking ``tx`` write inside the
    caller's transaction, so one transition is one commit."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- runs -------------------------------------------------------------------------

    def active(self) -> RunRow | None:
        """The run in progress (at most one), if any."""
        row = self.db.conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ('waiting', 'running')"
                                   " ORDER BY created_ms DESC LIMIT 1").fetchone()
        return _run(row) if row else None

    def latest(self) -> RunRow | None:
        """The newest run in any state."""
        row = self.db.conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_ms DESC, rowid DESC"
                                   " LIMIT 1").fetchone()
        return _run(row) if row else None

    def get(self, run_id: str) -> RunRow | None:
        """A run by id."""
        row = self.db.conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _run(row) if row else None

    def insert(self, run_id: str, config: RunConfig) -> None:
        """Create a run waiting for its first round."""
        with self.db.tx() as tx:
            tx.execute("INSERT INTO runs(run_id, config, state, created_ms, round, attempt, waiting_since_ms)"
                       " VALUES(?, ?, 'waiting', ?, 1, 1, ?)", (run_id, config_to_json(config), now_ms(), now_ms()))

    @staticmethod
    def update(tx: Tx, run_id: str, **fields: object) -> None:
        """Update run columns."""
        cols = ", ".join(f"{k}=?" for k in fields)
        tx.execute(f"UPDATE runs SET {cols} WHERE run_id=?", (*fields.values(), run_id))

    # --- rounds -----------------------------------------------------------------------

    def open_round(self, run_id: str, round_: int, attempt: int) -> RoundRow | None:
        """The open (or closing) attempt of a round, if any."""
        row = self.db.conn.execute(
            "SELECT run_id, round, attempt, state, phase_index, phase_state, phase_deadline_ms, participants"
            " FROM rounds WHERE run_id=? AND round=? AND attempt=? AND state='open'",
            (run_id, round_, attempt)).fetchone()
        if row is None:
            return None
        return RoundRow(*row[:7], tuple(json.loads(row[7])))

    def rounds(self, run_id: str) -> list[RoundRow]:
        """Every attempt of every round of a run, in order (the run's history)."""
        rows = self.db.conn.execute(
            "SELECT run_id, round, attempt, state, phase_index, phase_state, phase_deadline_ms, participants"
            " FROM rounds WHERE run_id=? ORDER BY round, attempt", (run_id,))
        return [RoundRow(*row[:7], tuple(json.loads(row[7]))) for row in rows]

    @staticmethod
    def insert_round(tx: Tx, run_id: str, round_: int, attempt: int, participants: Sequence[str]) -> None:
        """Create an open attempt of a round (phase 0 not yet planned)."""
        tx.execute("INSERT INTO rounds(run_id, round, attempt, state, phase_index, phase_state, phase_deadline_ms,"
                   " participants, opened_ms) VALUES(?, ?, ?, 'open', 0, 'planning', 0, ?, ?)",
                   (run_id, round_, attempt, json.dumps(list(participants)), now_ms()))

    @staticmethod
    def update_round(tx: Tx, run_id: str, round_: int, attempt: int, **fields: object) -> None:
        """Update round columns."""
        cols = ", ".join(f"{k}=?" for k in fields)
        tx.execute(f"UPDATE rounds SET {cols} WHERE run_id=? AND round=? AND attempt=?",
                   (*fields.values(), run_id, round_, attempt))

    # --- tasks ------------------------------------------------------------------------

    @staticmethod
    def insert_task(tx: Tx, task: Task, client: str, phase_index: int) -> None:
        """Persist a task in its wire form."""
        tx.execute("INSERT INTO tasks(task_id, run_id, round, attempt, phase_index, kind, client, state,"
                   " deadline_ms, task, created_ms) VALUES(?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                   (task.task_id, task.run_id, task.round, task.attempt, phase_index, int(task.kind), client,
                    task.deadline_unix_ms, serde.task_to_bytes(task), now_ms()))

    @staticmethod
    def set_task_state(tx: Tx, task_id: str, state: str) -> None:
        """Move one task to ``state`` (done, declined)."""
        tx.execute("UPDATE tasks SET state=? WHERE task_id=?", (state, task_id))

    @staticmethod
    def expire_open_tasks(tx: Tx, run_id: str, *, round_: int | None = None, attempt: int | None = None,
                          phase_index: int | None = None) -> None:
        """Expire the open tasks of a run, or of one attempt of a round, or of one phase."""
        where, args = ["run_id=?", "state='open'"], [run_id]
        for column, value in (("round", round_), ("attempt", attempt), ("phase_index", phase_index)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)  # type: ignore[arg-type]
        tx.execute(f"UPDATE tasks SET state='expired' WHERE {' AND '.join(where)}", args)

    @staticmethod
    def expire_client_tasks(tx: Tx, client: str) -> None:
        """Expire every open task of a client (it was revoked)."""
        tx.execute("UPDATE tasks SET state='expired' WHERE client=? AND state='open'", (client,))

    def task(self, task_id: str) -> TaskRow | None:
        """A task by id."""
        row = self.db.conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        return _task(row) if row else None

    def next_open_task(self, client: str, run_id: str, skip: Sequence[str] = ()) -> TaskRow | None:
        """The client's oldest open task in the run not in ``skip`` (re-delivered until answered)."""
        marks = ",".join("?" * len(skip))
        row = self.db.conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE client=? AND run_id=? AND state='open'"
            f" AND task_id NOT IN ({marks}) ORDER BY created_ms, task_id LIMIT 1",
            (client, run_id, *skip)).fetchone()
        return _task(row) if row else None

    def mark_delivered(self, task_id: str) -> None:
        """Record when a task was last handed to its client."""
        self.db.conn.execute("UPDATE tasks SET delivered_ms=? WHERE task_id=?", (now_ms(), task_id))

    def phase_tasks(self, run_id: str, round_: int, attempt: int, phase_index: int) -> list[TaskRow]:
        """Every task of one phase."""
        rows = self.db.conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE run_id=? AND round=? AND attempt=?"
            " AND phase_index=? ORDER BY client", (run_id, round_, attempt, phase_index))
        return [_task(r) for r in rows]

    def count_tasks(self, run_id: str, state: str) -> int:
        """How many tasks of a run are in ``state``."""
        return self.db.conn.execute("SELECT COUNT(*) FROM tasks WHERE run_id=? AND state=?",
                                    (run_id, state)).fetchone()[0]
