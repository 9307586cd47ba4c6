"""The server's SQLite database: one connection, its schema and version, transactions.

Every state change is one transaction, committed before the RPC that caused it
returns, with ``synchronous=FULL``: a ``kill -9`` at any point loses nothing that was
acknowledged. Only the event-loop thread touches the connection. The schema carries a
version (``PRAGMA user_version``); a database of another version is refused with a
message instead of being misread. The tables are owned by the stores in this package
(:mod:`~server.rounds.run_store`, :mod:`~server.rounds.client_store`,
:mod:`~server.rounds.submission_store`): no SQL is written anywhere else.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedsecure.errors import StateVersionError

# Version 2: submission ids and ledger-head digests are over what was signed (issue 10).
SCHEMA_VERSION = 2

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

Tx = sqlite3.Connection  # the connection inside an open transaction


def now_ms() -> int:
    """Wall-clock milliseconds (deadlines are absolute so they survive restarts)."""
    return int(time.time() * 1000)


class Database:
    """The connection, created with the current schema or checked to carry it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._open()
        except BaseException:
            self.conn.close()
            raise

    def _open(self) -> None:
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        empty = self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        if version == 0 and empty:
            with self.tx() as tx:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise StateVersionError(
                f"{self.path} holds server state of schema version {version}; this fedsecure uses version "
                f"{SCHEMA_VERSION}. Finish or export the old run with the fedsecure that wrote it, or start "
                "this server with a new --state folder.")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """One atomic transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
