"""The ALIGN stage's fast scoring path, server side: one score session per client per
stage (a bidirectional gRPC stream the client opens for its ALIGN task), one batch per
GRPO step, answers matched to the step they were asked for (docs/design.md §4).

Transport-agnostic: the servicer feeds answers in (:meth:`ScoreSessions.deliver`) and
streams :meth:`Session.outgoing` out; the GRPO loop, on worker threads, asks through
:meth:`ScoreSessions.scorer`, which crosses to the loop through
:func:`server.align.threads.on_loop`. Everything but ``scorer`` runs on the server's event loop.
An answer for a step that is not pending (late, repeated, or never asked) is dropped and
counted, never applied to another step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from fedsecure.types import Score, ScoreBatch, ScoreItem, Task
from server.align.threads import on_loop

log = logging.getLogger(__name__)

END = object()


@dataclass(eq=False)
class Session:
    """One client's open score session for one ALIGN task."""

    client: str
    task: Task
    outbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    pending: dict[int, asyncio.Future[Sequence[Score]]] = field(default_factory=dict)
    nonces: set[bytes] = field(default_factory=set)
    answered: int = 0
    dropped: int = 0
    asked: int = 0      # batches sent: the client may send no more answers than this
    received: int = 0   # answers received, verified or not
    end_reason: str = ""

    def is_pending(self, step: int) -> bool:
        """Whether a step is waiting for this client's answer to ``step``."""
        fut = self.pending.get(step)
        return fut is not None and not fut.done()

    async def outgoing(self) -> AsyncIterator[ScoreBatch | str]:
        """Batches to send, then the reason the session ends (a str), then nothing."""
        while True:
            item = await self.outbox.get()
            if item is END:
                yield self.end_reason
                return
            yield item  # type: ignore[misc]


class ScoreSessions:
    """The open score sessions, by client; see the module docstring."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Condition | None = None
        # called (on the loop) when a session opens, e.g. to start or resume the stage's driver
        self.on_attach: Callable[[Session], None] | None = None
        # clients expected in the current round: a step waits (within its deadline) for one
        # of them whose session broke to reopen it, instead of counting it absent at once
        self.expected: set[str] = set()

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._condition():
                self._condition().notify_all()
        asyncio.get_running_loop().create_task(notify())

    async def _until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds after a session change, or ``timeout_s``."""
        cond = self._condition()
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(predicate), max(0.0, timeout_s))
            except TimeoutError:
                pass
            return predicate()

    def attach(self, client: str, task: Task) -> Session:
        """Open ``client``'s session for ``task``; an older session of that client ends."""
        self._loop = asyncio.get_running_loop()
        old = self._sessions.get(client)
        if old is not None:
            self._end(old, "replaced by a newer session")
        session = Session(client=client, task=task)
        self._sessions[client] = session
        self._notify()
        if self.on_attach is not None:
            self.on_attach(session)
        return session

    def detach(self, session: Session) -> None:
        """Forget ``session`` (its stream ended); pending steps fail at once."""
        if self._sessions.get(session.client) is session:
            del self._sessions[session.client]
        for fut in session.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"{session.client}'s score session closed"))

    def connected(self, task_ids: Sequence[str] | None = None) -> list[str]:
        """Clients with an open session (for one of ``task_ids``, if given)."""
        return sorted(c for c, s in self._sessions.items() if task_ids is None or s.task.task_id in task_ids)

    async def wait_for(self, clients: Sequence[str], timeout_s: float) -> list[str]:
        """Wait until every one of ``clients`` has a session, or ``timeout_s``; returns
        those connected."""
        await self._until(lambda: all(c in self._sessions for c in clients), timeout_s)
        return [c for c in clients if c in self._sessions]

    async def request(self, client: str, step: int, items: Sequence[ScoreItem], timeout_s: float) -> Sequence[Score]:
        """Send ``client`` the step's batch and wait for its verified answer; raises
        ConnectionError without a session, TimeoutError past the deadline."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        if client not in self._sessions and client in self.expected:
            await self._until(lambda: client in self._sessions, timeout_s)
        session = self._sessions.get(client)
        if session is None:
            raise ConnectionError(f"{client} has no open score session")
        timeout_s = max(0.0, until - loop.time())
        if step in session.pending:
            raise ValueError(f"step {step} is already pending for {client}")
        fut: asyncio.Future[Sequence[Score]] = loop.create_future()
        session.pending[step] = fut
        session.asked += 1
        deadline_ms = int((time.time() + timeout_s) * 1000)
        session.outbox.put_nowait(ScoreBatch(step=step, items=tuple(items), deadline_unix_ms=deadline_ms))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            session.pending.pop(step, None)

    def deliver(self, session: Session, step: int, scores: Sequence[Score] | None = None,
                error: Exception | None = None) -> bool:
        """Hand the answer (or why it was refused) to the waiting step; False (and counted)
        when no such step is pending."""
        fut = session.pending.get(step)
        if fut is None or fut.done():
            session.dropped += 1
            return False
        if error is not None:
            fut.set_exception(error)
        else:
            session.answered += 1
            fut.set_result(tuple(scores or ()))
        return True

    def end(self, clients: Sequence[str] | None, reason: str) -> None:
        """End the sessions of ``clients`` (all if None): each gets ``reason``, then its stream closes."""
        for c in list(self._sessions) if clients is None else clients:
            session = self._sessions.get(c)
            if session is not None:
                self._end(session, reason)

    def revoke(self, client: str) -> None:
        """``client``'s credential was revoked: its session ends and no step waits for it."""
        self.expected.discard(client)
        session = self._sessions.get(client)
        if session is not None:
            self._end(session, "the client's credential was revoked")
            self.detach(session)

    @staticmethod
    def _end(session: Session, reason: str) -> None:
        session.end_reason = reason
        session.outbox.put_nowait(END)

    def scorer(self, client: str) -> Callable[[int, Sequence[ScoreItem], float], Sequence[Score]]:
        """A blocking channel for worker threads (what :class:`MixtureReward` calls)."""
        def score(step: int, items: Sequence[ScoreItem], timeout_s: float) -> Sequence[Score]:
            if self._loop is None:
                raise ConnectionError(f"{client} has no open score session")
            return on_loop(self._loop, self.request(client, step, items, timeout_s), timeout_s=timeout_s)
        return score
