"""The round engine over real gRPC with test handlers: phases, quorum, deadlines,
dropouts, retries, sampling, typed refusals, ledger heads, admin control."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest

from client_sdk import FederatedClient
from fedsecure.admin_client import AdminClient
from fedsecure.errors import PrivacyBudgetExceeded
from fedsecure.kit import load_kit
from fedsecure.provision import Provisioned
from fedsecure.types import Decline, DeclineReason, LedgerHead, PhaseConfig, RunConfig, Task, TaskKind
from tests.conftest import Federation
from tests.helpers import StaticScorePlanner, length_scorer, run_in_thread


def _clients(fed: Federation, names: str, **kw: object) -> list[FederatedClient]:
    return [FederatedClient(kit=fed.kit(n), address=fed.address, poll_wait_ms=500, **kw) for n in names]  # type: ignore[arg-type]


def _run_all(clients: list[FederatedClient], timeout: float = 60, **kw: object) -> list[dict]:  # type: ignore[type-arg]
    started = [run_in_thread(c, **kw) for c in clients]
    for t, _ in started:
        t.join(timeout)
        assert not t.is_alive(), "client did not finish"
    for c in clients:
        c.close()
    outs = [o for _, o in started]
    for o in outs:
        assert "error" not in o, o.get("error")
    return outs


def _rounds(fed: Federation, run_id: str) -> list[tuple[int, int, str, list[str]]]:
    rows = fed.store(lambda s: s.runs.rounds(run_id))
    return [(r.round, r.attempt, r.state, list(r.participants)) for r in rows]


def test_full_run_with_scoring_and_ledger_phases(start_federation: Callable[..., Federation]) -> None:
    planner = StaticScorePlanner()
    cfg = RunConfig(rounds=2, quorum=2, min_clients=3,
                    phases=(PhaseConfig(TaskKind.SCORE, 30), PhaseConfig(TaskKind.REPORT_LEDGER, 30)))
    fed = start_federation(cfg, planners={TaskKind.SCORE: planner})
    heads = {n: LedgerHead(seq=i + 1, entry_sha256=bytes([i]) * 32, epsilon=0.5 * i, delta=1e-5, epsilon_budget=8.0)
             for i, n in enumerate("abc")}
    clients = [FederatedClient(kit=fed.kit(n), address=fed.address, poll_wait_ms=500,
                               handlers={TaskKind.SCORE: length_scorer}, ledger_head=lambda n=n: heads[n])
               for n in "abc"]
    outs = _run_all(clients)
    for o in outs:
        assert dict(o["summary"].completed) == {"SCORE": 2, "REPORT_LEDGER": 2}
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed) == ("finished", 2)
    assert planner.closed == [(1, 1, ["a", "b", "c"]), (2, 1, ["a", "b", "c"])]
    assert fed.store(lambda s: s.submissions.ledger_head("c")) == heads["c"]
    assert fed.store(lambda s: s.submissions.count(status.run_id)) == 12


def test_dropout_round_closes_at_deadline_with_quorum(start_federation: Callable[..., Federation]) -> None:
    cfg = RunConfig(rounds=1, quorum=2, min_clients=3, phases=(PhaseConfig(TaskKind.SCORE, 2),))
    fed = start_federation(cfg, planners={TaskKind.SCORE: StaticScorePlanner()})
    vanished = threading.Event()

    def disappears(task: Task, ctx: object) -> object:
        vanished.wait(30)  # gone mid-round: holds its task and never answers in time
        return length_scorer(task, ctx)

    a, b = _clients(fed, "ab", handlers={TaskKind.SCORE: length_scorer})
    (c,) = _clients(fed, "c", handlers={TaskKind.SCORE: disappears})
    t0 = time.monotonic()
    ab = [run_in_thread(x) for x in (a, b)]
    tc, out_c = run_in_thread(c)
    for t, _ in ab:
        t.join(30)
    elapsed = time.monotonic() - t0
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed) == ("finished", 1)
    assert elapsed >= 1.5, "closed before the deadline although c never answered"
    ((_, _, state, participants),) = _rounds(fed, status.run_id)
    assert state == "closed" and participants == ["a", "b", "c"]
    done = fed.store(lambda s: {t.client: t.state for t in s.runs.phase_tasks(status.run_id, 1, 1, 0)})
    assert done == {"a": "done", "b": "done", "c": "expired"}
    vanished.set()  # c comes back too late: its submission is refused, not counted
    tc.join(30)
    assert len(out_c["summary"].refused) == 1 and "FAILED_PRECONDITION" in out_c["summary"].refused[0]
    assert fed.store(lambda s: s.submissions.count(status.run_id)) == 2
    for x in (a, b, c):
        x.close()


def test_round_below_quorum_is_retried_never_closed(start_federation: Callable[..., Federation]) -> None:
    cfg = RunConfig(rounds=1, quorum=2, min_clients=2, max_attempts=3, phases=(PhaseConfig(TaskKind.SCORE, 30),))
    fed = start_federation(cfg, planners={TaskKind.SCORE: StaticScorePlanner()})

    def flaky(task: Task, ctx: object) -> object:
        if task.attempt == 1:
            return Decline(DeclineReason.NO_DATA, "data not mounted yet")
        return length_scorer(task, ctx)

    (a,) = _clients(fed, "a", handlers={TaskKind.SCORE: flaky})
    (b,) = _clients(fed, "b", handlers={TaskKind.SCORE: length_scorer})
    _run_all([a, b])
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed, status.attempt) == ("finished", 1, 2)
    assert [(r, at, st) for r, at, st, _ in _rounds(fed, status.run_id)] == [(1, 1, "retried"), (1, 2, "closed")]


def test_run_fails_rather_than_closing_with_fewer(start_federation: Callable[..., Federation]) -> None:
    cfg = RunConfig(rounds=1, quorum=2, min_clients=2, max_attempts=2, phases=(PhaseConfig(TaskKind.SCORE, 30),))
    fed = start_federation(cfg, planners={TaskKind.SCORE: StaticScorePlanner()})
    (a,) = _clients(fed, "a")  # no SCORE handler: declines as unsupported
    (b,) = _clients(fed, "b", handlers={TaskKind.SCORE: length_scorer})
    outs = _run_all([a, b])
    assert outs[0]["summary"].declined["SCORE"] == 2
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed) == ("failed", 0)
    assert "quorum 2" in status.detail


def test_budget_exhausted_client_is_not_sampled_again(start_federation: Callable[..., Federation]) -> None:
    fed = start_federation(None, planners={TaskKind.SCORE: StaticScorePlanner()})

    def broke(task: Task, ctx: object) -> object:
        raise PrivacyBudgetExceeded("epsilon 8.4 would exceed the budget of 8.0")

    (c,) = _clients(fed, "c", handlers={TaskKind.SCORE: broke})
    clients = [*_clients(fed, "ab", handlers={TaskKind.SCORE: length_scorer}), c]
    for x in clients:  # all three enrolled before the run starts, so round 1 samples all
        x.hello()
    cfg = RunConfig(rounds=2, quorum=2, min_clients=2, phases=(PhaseConfig(TaskKind.SCORE, 30),))
    fed.loop.call(lambda: fed.server.engine.start_run(cfg))
    outs = _run_all(clients)
    assert outs[2]["summary"].declined["SCORE"] == 1
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed) == ("finished", 2)
    rounds = _rounds(fed, status.run_id)
    # Round 1 closes with a and b (c declined, quorum still met); round 2 never samples c.
    assert [(st, p) for _, _, st, p in rounds] == [("closed", ["a", "b", "c"]), ("closed", ["a", "b"])]
    assert {i.name: i.state for i in fed.store(lambda s: s.client_infos())}["c"] == "exhausted"


def test_sampling_at_rate(start_federation: Callable[..., Federation]) -> None:
    cfg = RunConfig(rounds=3, sample_rate=0.5, quorum=2, min_clients=4, phases=(PhaseConfig(TaskKind.SCORE, 30),))
    fed = start_federation(cfg, planners={TaskKind.SCORE: StaticScorePlanner()})
    _run_all(_clients(fed, "abcd", handlers={TaskKind.SCORE: length_scorer}))
    status = fed.loop.call(fed.server.engine.status)
    assert status.state == "finished"
    assert [len(p) for *_, p in _rounds(fed, status.run_id)] == [2, 2, 2]


def test_ledger_rollback_is_refused(start_federation: Callable[..., Federation]) -> None:
    cfg = RunConfig(rounds=2, quorum=2, min_clients=3, phases=(PhaseConfig(TaskKind.REPORT_LEDGER, 2),))
    fed = start_federation(cfg)

    def rolls_back(task: Task, ctx: object) -> LedgerHead:  # the second report rolls the ledger back
        return LedgerHead(seq=5 if task.round == 1 else 3, entry_sha256=b"h" * 32)

    (a,) = _clients(fed, "a", handlers={TaskKind.REPORT_LEDGER: rolls_back})
    outs = _run_all([a, *_clients(fed, "bc")])
    refused = outs[0]["summary"].refused
    assert len(refused) == 1 and "rolled back" in refused[0]
    assert fed.store(lambda s: s.submissions.ledger_head("a")).seq == 5


def test_admin_controls_runs(start_federation: Callable[..., Federation], kits: Provisioned) -> None:
    fed = start_federation()
    with AdminClient(kit=load_kit(kits.admin), address=fed.address) as admin:
        run, enrolled, revoked = admin.status()
        assert (run.state, enrolled, revoked) == ("none", 0, 0)
        with pytest.raises(grpc.RpcError) as err:
            admin.start_run(RunConfig(rounds=1, quorum=1, min_clients=1, phases=(PhaseConfig(TaskKind.TRAIN, 5),)))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "no planner" in err.value.details()
        started = admin.start_run(RunConfig(rounds=5, quorum=1, min_clients=1))
        assert started.state == "waiting"
        with pytest.raises(grpc.RpcError) as err:
            admin.start_run(RunConfig(rounds=1, quorum=1, min_clients=1))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert admin.stop_run(started.run_id).state == "stopped"
        with pytest.raises(grpc.RpcError) as err:
            admin._stub.StartRun(__import__("fedsecure.proto.v1.admin_pb2", fromlist=["x"]).StartRunRequest(),
                                 timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "rounds" in err.value.details()


def test_admin_status_watch_prints_each_change_until_the_run_ends(
        start_federation: Callable[..., Federation], kits: Provisioned, capsys: pytest.CaptureFixture[str]) -> None:
    from apps.cli import main

    cfg = RunConfig(rounds=2, quorum=2, min_clients=2, phases=(PhaseConfig(TaskKind.REPORT_LEDGER, 30),))
    fed = start_federation(cfg)
    result: dict[str, int] = {}
    watcher = threading.Thread(target=lambda: result.setdefault("code", main(
        ["admin", "--kit", str(kits.admin), "--address", fed.address, "status", "--watch", "--interval", "0.1"])))
    watcher.start()
    time.sleep(1.0)  # the run waits for its clients: the watcher has printed that
    clients = _clients(fed, "ab")
    started = [run_in_thread(c) for c in clients]
    watcher.join(60)
    for t, _ in started:
        t.join(30)
    lines = capsys.readouterr().out.splitlines()
    assert result["code"] == 0 and "finished" in lines[-1] and "2 rounds closed" in lines[-1]
    assert len(lines) >= 2 and len({line[9:] for line in lines}) == len(lines)  # a line per change only
    for c in clients:
        c.close()


def test_ledger_heads_reach_the_metrics_log_for_the_run_report(start_federation: Callable[..., Federation],
                                                               tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from server.report import summarise
    from server.planners.ledger import LedgerReportPlanner
    from server.planners.metrics import MetricsLog

    log = tmp_path / "metrics.jsonl"
    cfg = RunConfig(rounds=1, quorum=2, min_clients=2, phases=(PhaseConfig(TaskKind.REPORT_LEDGER, 30),))
    fed = start_federation(cfg, planners={TaskKind.REPORT_LEDGER: LedgerReportPlanner(metrics=MetricsLog(log))})
    heads = {n: LedgerHead(seq=2, entry_sha256=bytes(32), epsilon=eps, delta=1e-5, epsilon_budget=8.0)
             for n, eps in (("a", 1.5), ("b", 2.5))}
    clients = [FederatedClient(kit=fed.kit(n), address=fed.address, poll_wait_ms=500, ledger_head=lambda n=n: heads[n])
               for n in "ab"]
    _run_all(clients)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["client"], r["epsilon"]) for r in records if r["phase"] == "ledger") == [("a", 1.5), ("b", 2.5)]
    assert summarise(records)["clients"]["b"]["1"] == {"epsilon": 2.5, "epsilon_budget": 8.0}
