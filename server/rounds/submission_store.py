"""What clients sent and what the server published: accepted submissions (with their
nonces), the privacy-ledger heads clients reported, and published aggregates (tables
``submissions``, ``ledger_heads`` and ``aggregates``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from fedsecure.types import LedgerHead

from server.rounds.database import Database, Tx, now_ms

_SUBMISSION_COLUMNS = "submission_id, task_id, client, payload_kind, payload"
_HEAD_COLUMNS = "seq, entry_sha256, epsilon, delta, epsilon_budget"


@dataclass(frozen=True)
class SubmissionRow:
    """An accepted submission: who, for which task, and its payload bytes (protobuf)."""

    submission_id: str
    task_id: str
    client: str
    payload_kind: int
    payload: bytes


class SubmissionStore:
    """Accepted submissions, reported ledger heads, published aggregates."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- submissions --------------------------------------------------------------------

    def get(self, submission_id: str) -> SubmissionRow | None:
        """A submission by id (the digest of what its signer signed)."""
        row = self.db.conn.execute(f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE submission_id=?",
                                   (submission_id,)).fetchone()
        return SubmissionRow(*row) if row else None

    def for_task(self, task_id: str) -> SubmissionRow | None:
        """The accepted submission of a task, if any."""
        row = self.db.conn.execute(f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE task_id=?",
                                   (task_id,)).fetchone()
        return SubmissionRow(*row) if row else None

    def nonce_used(self, client: str, nonce: bytes) -> bool:
        """Whether a client already used a nonce."""
        return self.db.conn.execute("SELECT 1 FROM submissions WHERE client=? AND nonce=?",
                                    (client, nonce)).fetchone() is not None

    @staticmethod
    def insert(tx: Tx, *, submission_id: str, task_id: str, client: str, nonce: bytes, payload_kind: int,
               payload: bytes) -> None:
        """Record an accepted submission inside the caller's transaction."""
        tx.execute("INSERT INTO submissions(submission_id, task_id, client, nonce, payload_kind, payload,"
                   " received_ms) VALUES(?, ?, ?, ?, ?, ?, ?)",
                   (submission_id, task_id, client, nonce, payload_kind, payload, now_ms()))

    def count(self, run_id: str | None = None) -> int:
        """Accepted submissions, of one run or of all."""
        if run_id is None:
            return self.db.conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
        return self.db.conn.execute("SELECT COUNT(*) FROM submissions s JOIN tasks t USING(task_id)"
                                    " WHERE t.run_id=?", (run_id,)).fetchone()[0]

    # --- ledger heads -------------------------------------------------------------------

    def ledger_head(self, client: str) -> LedgerHead:
        """The newest head a client reported (the empty head if none)."""
        row = self.db.conn.execute(f"SELECT {_HEAD_COLUMNS} FROM ledger_heads WHERE client=?"
                                   " ORDER BY seq DESC LIMIT 1", (client,)).fetchone()
        return LedgerHead(*row) if row else LedgerHead()

    def ledger_heads(self) -> dict[str, list[LedgerHead]]:
        """Every head every client reported, oldest first (what the auditor cross-checks)."""
        out: dict[str, list[LedgerHead]] = {}
        for client, *head in self.db.conn.execute(f"SELECT client, {_HEAD_COLUMNS} FROM ledger_heads"
                                                  " ORDER BY client, seq"):
            out.setdefault(client, []).append(LedgerHead(*head))
        return out

    def find_ledger_head(self, client: str, seq: int) -> LedgerHead | None:
        """The head a client reported at ``seq``, if any."""
        row = self.db.conn.execute(f"SELECT {_HEAD_COLUMNS} FROM ledger_heads WHERE client=? AND seq=?",
                                   (client, seq)).fetchone()
        return LedgerHead(*row) if row else None

    @staticmethod
    def insert_ledger_head(tx: Tx, client: str, head: LedgerHead) -> None:
        """Record a head inside the caller's transaction (no-op if already recorded)."""
        tx.execute("INSERT OR IGNORE INTO ledger_heads(client, seq, entry_sha256, epsilon, delta, epsilon_budget,"
                   " reported_ms) VALUES(?, ?, ?, ?, ?, ?, ?)",
                   (client, head.seq, head.entry_sha256, head.epsilon, head.delta, head.epsilon_budget, now_ms()))

    # --- aggregates ---------------------------------------------------------------------

    def publish_aggregate(self, *, run_id: str, round_: int, group: str, encoding: str,
                          chunk_digests: Sequence[bytes], contributors: int) -> None:
        """Make an aggregate downloadable (idempotent: re-publishing keeps the first)."""
        with self.db.tx() as tx:
            tx.execute("INSERT OR IGNORE INTO aggregates(run_id, round, group_name, encoding, chunk_digests,"
                       " contributors, published_ms) VALUES(?, ?, ?, ?, ?, ?, ?)",
                       (run_id, round_, group, encoding, json.dumps([d.hex() for d in chunk_digests]),
                        contributors, now_ms()))

    def uploaders(self, run_id: str, round_: int, payload_kind: int) -> list[str]:
        """Clients with an accepted submission of ``payload_kind`` in the round's last
        attempt (the one that closed), sorted."""
        rows = self.db.conn.execute(
            "SELECT DISTINCT s.client FROM submissions s JOIN tasks t ON t.task_id = s.task_id"
            " WHERE t.run_id=? AND t.round=? AND s.payload_kind=? AND t.attempt ="
            " (SELECT MAX(attempt) FROM tasks WHERE run_id=? AND round=?) ORDER BY s.client",
            (run_id, round_, payload_kind, run_id, round_)).fetchall()
        return [r[0] for r in rows]

    def aggregate_groups(self, run_id: str, round_: int) -> list[str]:
        """Names of the aggregates published for a round, sorted."""
        rows = self.db.conn.execute("SELECT group_name FROM aggregates WHERE run_id=? AND round=?"
                                    " ORDER BY group_name", (run_id, round_)).fetchall()
        return [r[0] for r in rows]

    def latest_published(self, *, exclude_run: str = "") -> tuple[str, int] | None:
        """(run, round) of the newest round with published aggregates of a *finished*
        run other than ``exclude_run``: what an on-demand personalisation starts from."""
        row = self.db.conn.execute(
            "SELECT a.run_id, MAX(a.round) FROM aggregates a JOIN runs r ON r.run_id = a.run_id"
            " WHERE r.state='finished' AND a.run_id<>? GROUP BY a.run_id ORDER BY r.created_ms DESC, r.rowid DESC"
            " LIMIT 1", (exclude_run,)).fetchone()
        return (row[0], int(row[1])) if row else None

    def live_update_payloads(self, payload_kind: int) -> list[bytes]:
        """Payloads of accepted submissions of ``payload_kind`` whose round attempt is still
        open: their chunks may yet be summed (a closing retried, a sum rebuilt). Those of
        closed attempts are superseded by the published aggregate, those of retried ones
        expired."""
        return [row[0] for row in self.db.conn.execute(
            "SELECT s.payload FROM submissions s JOIN tasks t ON t.task_id = s.task_id"
            " JOIN rounds r ON (r.run_id, r.round, r.attempt) = (t.run_id, t.round, t.attempt)"
            " WHERE s.payload_kind=? AND r.state NOT IN ('closed', 'retried')", (payload_kind,))]

    def published_chunk_digests(self) -> set[bytes]:
        """Every chunk of every published aggregate (kept: later rounds and TAP read them)."""
        return {bytes.fromhex(h) for (text,) in self.db.conn.execute("SELECT chunk_digests FROM aggregates")
                for h in json.loads(text)}

    def aggregate(self, run_id: str, round_: int, group: str) -> tuple[str, list[bytes], int] | None:
        """(encoding, chunk digests, contributors) of a published aggregate."""
        row = self.db.conn.execute("SELECT encoding, chunk_digests, contributors FROM aggregates WHERE run_id=?"
                                   " AND round=? AND group_name=?", (run_id, round_, group)).fetchone()
        if row is None:
            return None
        return row[0], [bytes.fromhex(h) for h in json.loads(row[1])], row[2]
