"""The server's score sessions: answers reach only the step they were asked for, a late
or unasked answer is dropped and counted, and a step waits (within its deadline) for an
expected client whose session broke to reopen it."""

from __future__ import annotations

import asyncio
import time

import pytest

from fedsecure.types import AlignSpec, Score, ScoreBatch, ScoreItem, Task, TaskKind
from server.align.sessions import ScoreSessions

TASK = Task(run_id="r", round=1, task_id="t", kind=TaskKind.ALIGN, deadline_unix_ms=0, attempt=1, spec=AlignSpec())
ITEMS = (ScoreItem("x"),)


def test_answers_reach_their_step_only() -> None:
    async def scenario() -> None:
        hub = ScoreSessions()
        session = hub.attach("a", TASK)
        ask = asyncio.create_task(hub.request("a", 7, ITEMS, 5.0))
        await asyncio.sleep(0)
        batch = await session.outbox.get()
        assert isinstance(batch, ScoreBatch) and batch.step == 7 and batch.items == ITEMS
        assert not hub.deliver(session, 8, [Score("x", 1.0)])  # never asked: dropped
        assert hub.deliver(session, 7, [Score("x", 2.0)])
        assert await ask == (Score("x", 2.0),)
        assert not hub.deliver(session, 7, [Score("x", 3.0)])  # late repeat: dropped
        assert (session.answered, session.dropped) == (1, 2)
        refused = asyncio.create_task(hub.request("a", 9, ITEMS, 5.0))
        await asyncio.sleep(0)
        hub.deliver(session, 9, error=ValueError("refused: bad signature"))
        with pytest.raises(ValueError, match="bad signature"):
            await refused
        with pytest.raises(TimeoutError):
            await hub.request("a", 10, ITEMS, 0.05)
    asyncio.run(scenario())


def test_a_step_waits_for_an_expected_client_to_reconnect() -> None:
    async def scenario() -> None:
        hub = ScoreSessions()
        hub.expected = {"a"}
        with pytest.raises(ConnectionError):  # not expected this round: absent at once
            await hub.request("b", 1, ITEMS, 5.0)
        started = time.monotonic()
        ask = asyncio.create_task(hub.request("a", 1, ITEMS, 5.0))
        await asyncio.sleep(0.2)
        session = hub.attach("a", TASK)  # the session reopens within the step's deadline
        await session.outbox.get()
        hub.deliver(session, 1, [Score("x", 1.0)])
        assert await ask == (Score("x", 1.0),) and time.monotonic() - started < 2.0
        hub.detach(session)
        with pytest.raises(ConnectionError):  # gone for good: absent once the deadline passes
            await hub.request("a", 2, ITEMS, 0.2)
    asyncio.run(scenario())


def test_a_newer_session_replaces_the_old_one_and_end_reaches_it() -> None:
    async def scenario() -> None:
        hub = ScoreSessions()
        old = hub.attach("a", TASK)
        new = hub.attach("a", TASK)
        assert [x async for x in old.outgoing()] == ["replaced by a newer session"]
        assert await hub.wait_for(["a"], 0.1) == ["a"] and hub.connected() == ["a"]
        hub.end(None, "round done")
        assert [x async for x in new.outgoing()] == ["round done"]
    asyncio.run(scenario())
