"""The server's durable state: one SQLite database (:mod:`~server.rounds.database`) and
the three stores that own its tables — runs, rounds and tasks
(:class:`~server.rounds.run_store.RunStore`); clients and revocations
(:class:`~server.rounds.client_store.ClientStore`); submissions, ledger heads and
aggregates (:class:`~server.rounds.submission_store.SubmissionStore`). Operations that
span stores in one transaction live here. SQL is written nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedsecure.errors import StateVersionError
from fedsecure.types import ClientInfo

from server.rounds.client_store import ClientStore
from server.rounds.database import Database, Tx, now_ms
from server.rounds.run_store import RoundRow, RunRow, RunStore, TaskRow
from server.rounds.submission_store import SubmissionRow, SubmissionStore

__all__ = ["Store", "StateVersionError", "Tx", "now_ms", "RoundRow", "RunRow", "TaskRow", "SubmissionRow"]


class Store:
    """The database and its stores; the one owner of the server's state."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.runs = RunStore(self.db)
        self.clients = ClientStore(self.db)
        self.submissions = SubmissionStore(self.db)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """One atomic transaction across the stores."""
        with self.db.tx() as tx:
            yield tx

    def revoke(self, name: str, reason: str) -> bool:
        """Revoke a client: on the list, marked revoked, its open tasks expired (one
        transaction); True if it was not revoked before."""
        with self.tx() as tx:
            newly = ClientStore.add_revocation(tx, name, reason)
            RunStore.expire_client_tasks(tx, name)
        return newly

    def client_infos(self) -> list[ClientInfo]:
        """Every enrolled client with its newest ledger head (the admin's view)."""
        return [ClientInfo(name=name, state=state, capabilities=caps, last_seen_ms=seen,
                           ledger_head=self.submissions.ledger_head(name), sdk_version=sdk)
                for name, state, caps, sdk, seen in self.clients.rows()]
