"""Bounds on the calls each identity holds open, and revocation of open calls.

Why (issue 23, items 3 and 4): a rate limit counts calls *started*, not calls *held*.
One enrolled client opened 1,024 idle streams within its rate and exhausted the
server-wide concurrency limit: every other client and the admin were refused. And a
client revoked by the admin kept answering on a stream it had opened before.

So, for every authenticated call (OWASP ASVS V11.1.4, "anti-automation": per-identity
limits on expensive or long-held resources):
- an identity holds at most ``per_identity`` calls at once;
- clients together hold at most ``client_calls``; the transport is sized larger than
  that, so operators (admin status, revocation), the key holder and health checks always
  find a free slot while clients saturate theirs;
- every call runs under a server-side time limit, whatever deadline the caller asked for;
- revoking an identity (:meth:`CallGuard.revoke`) ends each of its open calls at once.

The guard is used on the server's event loop only; it holds no locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from fedsecure.errors import CallRevoked, LimitExceeded

T = TypeVar("T")


@dataclass(eq=False)
class Ticket:
    """One admitted call: whose it is, and the event that ends it on revocation."""

    name: str
    counted_as_client: bool
    revoked: asyncio.Event = field(default_factory=asyncio.Event)


class CallGuard:
    """Admission of concurrent calls per identity; see the module docstring."""

    def __init__(self, *, per_identity: int, client_calls: int) -> None:
        if per_identity < 1 or client_calls < per_identity:
            raise ValueError(f"need 1 <= per_identity <= client_calls, got {per_identity}, {client_calls}")
        self.per_identity, self.client_calls = per_identity, client_calls
        self._open: dict[str, set[Ticket]] = {}
        self._clients_open = 0

    def open_calls(self, name: str) -> int:
        """How many calls ``name`` holds now."""
        return len(self._open.get(name, ()))

    def enter(self, name: str, *, is_client: bool) -> Ticket:
        """Admit one call of ``name``, or raise :class:`LimitExceeded` (RESOURCE_EXHAUSTED)."""
        held = self._open.setdefault(name, set())
        if len(held) >= self.per_identity:
            raise LimitExceeded(f"{name} already holds {len(held)} open calls (the limit per identity); "
                                "close some before opening more")
        if is_client and self._clients_open >= self.client_calls:
            raise LimitExceeded("the server holds its maximum of client calls; retry shortly")
        ticket = Ticket(name, is_client)
        held.add(ticket)
        self._clients_open += is_client
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Release ``ticket``'s slot (idempotent)."""
        held = self._open.get(ticket.name)
        if held is None or ticket not in held:
            return
        held.discard(ticket)
        self._clients_open -= ticket.counted_as_client
        if not held:
            del self._open[ticket.name]

    def revoke(self, name: str) -> int:
        """End every open call of ``name``; returns how many were open."""
        held = self._open.get(name, set())
        for ticket in held:
            ticket.revoked.set()
        return len(held)


async def bounded(awaitable: Awaitable[T], ticket: Ticket, timeout_s: float) -> T:
    """Await ``awaitable`` unless ``ticket`` is revoked first (raises :class:`CallRevoked`)
    or ``timeout_s`` passes (raises :class:`TimeoutError`); either way the work is
    cancelled and waited for, so its own clean-up (rollbacks, session detach) runs."""
    work = asyncio.ensure_future(awaitable)
    if ticket.revoked.is_set():
        work.cancel()
    revoked = asyncio.ensure_future(ticket.revoked.wait())
    try:
        done, _ = await asyncio.wait({work, revoked}, timeout=max(0.0, timeout_s),
                                     return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        revoked.cancel()
        await asyncio.gather(work, revoked, return_exceptions=True)
        raise
    revoked.cancel()
    if work in done and not work.cancelled():
        return work.result()
    work.cancel()
    await asyncio.gather(work, revoked, return_exceptions=True)
    if ticket.revoked.is_set():
        raise CallRevoked(f"the credential of {ticket.name} was revoked; its open calls are ended")
    raise TimeoutError(f"the call ran past the server's limit of {timeout_s:g} s")
