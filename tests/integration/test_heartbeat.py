"""Heartbeats (issue 15 item 4): clients beat at the interval the server gives at Hello,
also while a long task runs; a phase whose only missing participants are silent closes
early — never below quorum — and a busy client that keeps beating is waited for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from client_sdk import FederatedClient
from fedsecure.types import LedgerHead, PhaseConfig, RunConfig, TaskKind
from tests.conftest import Federation
from tests.helpers import run_in_thread

INTERVAL_MS = 200  # silent after 3 intervals: 0.6 s


def _clients(fed: Federation, handlers: dict[str, Callable[..., object]],
             beating: dict[str, bool]) -> list[FederatedClient]:
    return [FederatedClient(kit=fed.kit(n), address=fed.address, poll_wait_ms=300, heartbeat=beating[n],
                            handlers={TaskKind.REPORT_LEDGER: handlers[n]} if n in handlers else None)
            for n in ("a", "b", "c")]


def _config(quorum: int) -> RunConfig:
    return RunConfig(rounds=1, quorum=quorum, min_clients=3, phases=(PhaseConfig(TaskKind.REPORT_LEDGER, 120),))


def test_a_phase_closes_early_when_only_a_silent_client_is_missing(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation(_config(quorum=2), heartbeat_interval_ms=INTERVAL_MS)
    release = threading.Event()

    def hang(task, ctx):  # type: ignore[no-untyped-def]
        release.wait(60)  # a client stuck in its task, sending nothing
        return LedgerHead()
    clients = _clients(fed, {"c": hang}, {"a": True, "b": True, "c": False})
    started = time.monotonic()
    threads = [run_in_thread(c) for c in clients]
    for t, out in threads[:2]:
        t.join(60)
        assert not t.is_alive() and "error" not in out, out
        assert out["summary"].completed["REPORT_LEDGER"] == 1
    assert time.monotonic() - started < 30  # the phase deadline is 120 s
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed) == ("finished", 1)
    release.set()
    t, out = threads[2]
    t.join(30)
    assert not t.is_alive() and out["summary"].refused and not out["summary"].completed  # too late: refused
    for c in clients:
        c.close()


def test_a_busy_client_that_keeps_beating_is_waited_for(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation(_config(quorum=2), heartbeat_interval_ms=INTERVAL_MS)

    def slow(task, ctx):  # type: ignore[no-untyped-def]
        time.sleep(2.5)  # four silent periods long, but beating all along
        return LedgerHead()
    clients = _clients(fed, {"c": slow}, {"a": True, "b": True, "c": True})
    threads = [run_in_thread(c) for c in clients]
    for t, out in threads:
        t.join(60)
        assert not t.is_alive() and "error" not in out, out
        assert out["summary"].completed["REPORT_LEDGER"] == 1 and not out["summary"].refused
    assert threads[2][1]["summary"].heartbeats >= 3
    for c in clients:
        c.close()


def test_never_below_quorum_even_when_the_rest_are_silent(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation(_config(quorum=3), heartbeat_interval_ms=INTERVAL_MS)
    release = threading.Event()

    def hang(task, ctx):  # type: ignore[no-untyped-def]
        release.wait(60)
        return LedgerHead()
    clients = _clients(fed, {"c": hang}, {"a": True, "b": True, "c": False})
    threads = [run_in_thread(c, max_idle_s=3.0, until_run_finished=True) for c in clients[:2]]
    hung = run_in_thread(clients[2])
    for t, _ in threads:
        t.join(60)
    time.sleep(1.0)  # c has been silent for several periods; 2 answered, quorum is 3
    status = fed.loop.call(fed.server.engine.status)
    assert status.state == "running" and status.rounds_closed == 0 and status.tasks_done == 2
    release.set()
    hung[0].join(30)
    deadline = time.monotonic() + 20
    while fed.loop.call(fed.server.engine.status).state != "finished" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fed.loop.call(fed.server.engine.status).rounds_closed == 1  # c's late answer completes the round
    for c in clients:
        c.close()
