"""The ALIGN stage over real gRPC on loopback (mTLS): three clients open score sessions
for their ALIGN tasks, answer each GRPO step's batch with signed scores — one judging the
toy task, one random, one inverted — and the routed fusion of their scores raises the toy
reward of the server's policy over two rounds; the router learns whom to trust."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from client_sdk import FederatedClient
from client_sdk.outcomes import TaskContext
from fedsecure.types import Capabilities, Modality, PhaseConfig, RunConfig, Score, ScoreBatch, Task, TaskKind, TaskReport
from server.align.engine.grpo import GRPOEngine
from server.align.combiners import Routed
from server.align.features import reference_features
from server.align.reward import MixtureReward, ScoringClient
from server.align.router import Router
from server.align.sessions import ScoreSessions
from server.align.stage import AlignStage, AlignStageConfig
from server.align.planner import AlignPlanner
from server.planners.metrics import MetricsLog
from tests.conftest import Federation
from tests.helpers import TEST_SHAPE, run_in_thread
from tests.test_grpo_engine import config, pool, tiny_policy
from tests.test_mixture_stage import _toy, mean_toy, preferences

STEPS = 6


def handler(score: Callable[[str], float]) -> Callable[[Task, TaskContext], TaskReport]:
    def handle(task: Task, ctx: TaskContext) -> TaskReport:
        def scorer(batch: ScoreBatch) -> Sequence[Score]:
            return [Score(i.item_id, score(i.completion)) for i in batch.items]
        return ctx.score_session(task, scorer)
    return handle


def test_grpo_on_fused_client_rewards_over_grpc(start_federation: Callable[..., Federation], tmp_path: Path) -> None:
    sessions = ScoreSessions()
    built: list[AlignStage] = []

    def build_stage(roster: Sequence[ScoringClient]) -> AlignStage:
        policy = tiny_policy()
        engine = GRPOEngine(policy=policy, config=config(lr=1e-2), checkpoint_dir=tmp_path / "align",
                            checkpoint_every=1)
        router = Router(feature_dim=32, clients=len(roster), hidden=16)
        reward = MixtureReward(clients=roster, combiner=Routed(router), features=reference_features(policy),
                               deadline_s=20.0, min_grace_s=20.0)  # every client counted: no grace cut-off
        stage = AlignStage(engine=engine, reward=reward, pool=pool(), monitor=[], preferences=preferences(),
                           router=router, config=AlignStageConfig(steps_per_round=STEPS, router_steps=200))
        built.append(stage)
        return stage

    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    planner = AlignPlanner(sessions=sessions, build_stage=build_stage, metrics=metrics, steps_per_round=STEPS,
                           step_deadline_s=20.0, connect_timeout_s=30.0)
    cfg = RunConfig(rounds=2, quorum=2, min_clients=3, phases=(PhaseConfig(TaskKind.ALIGN, 300),))
    fed = start_federation(cfg, planners={TaskKind.ALIGN: planner}, sessions=sessions)
    rng = random.Random(0)
    scorers = {"a": lambda c: 10.0 * _toy(c) + 3.0, "b": lambda c: rng.gauss(0, 1), "c": lambda c: -_toy(c)}
    clients = [FederatedClient(kit=fed.kit(n), address=fed.address, poll_wait_ms=500,
                               capabilities=Capabilities(modalities=(Modality.TEXT,), block_shape=TEST_SHAPE),
                               handlers={TaskKind.ALIGN: handler(s)}) for n, s in scorers.items()]
    threads = [run_in_thread(c) for c in clients]
    for t, out in threads:
        t.join(600)
        assert not t.is_alive() and "error" not in out, out
        assert dict(out["summary"].completed) == {"ALIGN": 2}
    for c in clients:
        c.close()
    status = fed.loop.call(fed.server.engine.status)
    assert (status.state, status.rounds_closed) == ("finished", 2)

    stage = built[0]
    assert len(built) == 1 and stage.engine.step_count == 2 * STEPS
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    align = [r for r in records if r["phase"] == "align"]
    assert [r["round"] for r in align] == [1, 2] and all(r["skipped"] == 0 and r["left_out"] == {} for r in align)
    assert all(r["connected"] == ["a", "b", "c"] for r in align)
    weights = align[-1]["router_weights"]["toy"]
    assert weights["a"] >= 0.499 and weights["c"] < min(0.15, weights["b"]), weights  # a holds the cap
    # every step's batch went out and came back signed, over each client's one session
    assert all(len(e.answered) == 3 for e in stage.reward.logs)
    fresh = build_stage([ScoringClient(n, (Modality.TEXT,), lambda s, i, t: []) for n in "abc"])
    fresh.engine.checkpoint_dir = tmp_path / "unused"
    assert mean_toy(stage) > mean_toy(fresh) + 0.1


class ForgingClient(FederatedClient):
    """Answers each batch with scores whose signed digest names the *next* step (or, with
    ``replay``, resends its first answer for every later step)."""

    def __init__(self, *args: object, replay: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.replay = replay

    def _serve_session(self, task, scorer):  # type: ignore[no-untyped-def, override]
        import queue as queue_

        from fedsecure import serde
        from fedsecure.crypto import signing
        from fedsecure.proto.v1 import federation_pb2
        from fedsecure.types import PayloadKind, StepScores

        outbox: queue_.Queue = queue_.Queue()
        outbox.put(federation_pb2.ScoreSessionRequest(open=federation_pb2.ScoreSessionOpen(task_id=task.task_id)))
        responses = self._stub.ScoreSession(iter(outbox.get, None), timeout=60)
        first = None
        for resp in responses:
            if resp.WhichOneof("part") == "end":
                break
            batch = serde.score_batch_from_proto(resp.batch)
            scores = tuple(scorer(batch))
            if self.replay and first is not None:
                outbox.put(first)
                continue
            step = batch.step if self.replay else batch.step + 1
            env = self.sign(task, PayloadKind.STEP_SCORES, signing.step_scores_digest(step, scores))
            msg = serde.step_scores_to_proto(StepScores(step=batch.step, envelope=env, scores=scores))
            first = first or msg
            outbox.put(msg)
        outbox.put(None)
        return 0, "done"


def test_forged_and_replayed_step_answers_are_left_out(start_federation: Callable[..., Federation],
                                                       tmp_path: Path) -> None:
    sessions = ScoreSessions()
    built: list[AlignStage] = []

    def build_stage(roster: Sequence[ScoringClient]) -> AlignStage:
        policy = tiny_policy()
        engine = GRPOEngine(policy=policy, config=config(), checkpoint_dir=tmp_path / "align", checkpoint_every=1)
        reward = MixtureReward(clients=roster, combiner=Routed(Router(feature_dim=32, clients=len(roster))),
                               features=reference_features(policy), deadline_s=2.0, min_grace_s=2.0)
        stage = AlignStage(engine=engine, reward=reward, pool=pool(), monitor=[], preferences=preferences(),
                           router=reward.combiner.router, config=AlignStageConfig(steps_per_round=3, router_steps=10))
        built.append(stage)
        return stage

    planner = AlignPlanner(sessions=sessions, build_stage=build_stage, metrics=MetricsLog(tmp_path / "m.jsonl"),
                           steps_per_round=3, step_deadline_s=2.0, connect_timeout_s=30.0)
    fed = start_federation(RunConfig(rounds=1, quorum=2, min_clients=3, phases=(PhaseConfig(TaskKind.ALIGN, 300),)),
                           planners={TaskKind.ALIGN: planner}, sessions=sessions)
    caps = Capabilities(modalities=(Modality.TEXT,), block_shape=TEST_SHAPE)
    good = FederatedClient(kit=fed.kit("a"), address=fed.address, poll_wait_ms=500, capabilities=caps,
                           handlers={TaskKind.ALIGN: handler(lambda c: _toy(c))})
    forger = ForgingClient(kit=fed.kit("b"), address=fed.address, poll_wait_ms=500, capabilities=caps,
                           handlers={TaskKind.ALIGN: handler(lambda c: _toy(c))})
    replayer = ForgingClient(kit=fed.kit("c"), address=fed.address, poll_wait_ms=500, capabilities=caps,
                             handlers={TaskKind.ALIGN: handler(lambda c: _toy(c))}, replay=True)
    threads = [run_in_thread(c) for c in (good, forger, replayer)]
    for t, out in threads:
        t.join(300)
        assert not t.is_alive() and "error" not in out, out
    for c in (good, forger, replayer):
        c.close()
    stage = built[0]
    grpo = stage.reward.logs  # the round's three GRPO steps (the router's items rode in the first)
    assert [e.exchange for e in grpo] == [1, 2, 3]
    assert all("refused" in e.left_out["b"] and "digest" in e.left_out["b"] for e in grpo)
    # c's first answer is its honest one (used if it came within the step's grace); replayed
    # later, it is for a step no longer pending: dropped, c is left out of every later step
    assert "a" in grpo[0].answered and "b" not in grpo[0].answered, [(e.answered, e.left_out) for e in grpo]
    assert all(e.answered == ["a"] for e in grpo[1:]), [(e.answered, e.left_out) for e in grpo]
    assert all(any(w in e.left_out["c"] for w in ("deadline", "grace", "not asked", "earlier step")) for e in grpo[1:])
    assert stage.engine.step_count == 3
