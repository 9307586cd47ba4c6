"""FedCola over real gRPC with heterogeneous clients (issue 12): two image+text clients,
an image-only client and a text-only client of *another* architecture. Attention groups
aggregate across kinds within (stack, backbone, shape); MLP adapters only between the two
image+text clients, with FedCola's compensation; the image-only client's gate borrows the
text stack's mean; the differently shaped client trains and scores alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk import FederatedClient
from client_sdk.dp_training import DPSettings
from client_sdk.reward_participant import ParticipantConfig, RewardParticipant
from fedsecure.models.groups import GroupKey
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.types import PhaseConfig, RunConfig, TaskKind
from server.planners.metrics import MetricsLog
from server.planners.score import ScorePlanner
from server.planners.train import TrainPlanner
from tasks.easyvqa import TASK as EASYVQA
from tasks.easyvqa.shares import client_pairs, server_part
from tests.conftest import Federation
from tests.helpers import run_in_thread

NAMES = ("a", "b", "c", "d")
KINDS = {"a": "image_text", "b": "image_text", "c": "image", "d": "text"}
SHAPE = "h64l2a4m128"      # the default reward model
OTHER = "h64l1a4m128"      # d: one block instead of two


@pytest.mark.parametrize("share_heads", [False, True], ids=["fedcola", "fedcola+heads"])
def test_fedcola_round_with_heterogeneous_architectures(start_federation: Callable[..., Federation],
                                                        tmp_path: Path, share_heads: bool) -> None:
    metrics = MetricsLog(tmp_path / "metrics.jsonl")

    def planners(aggregator):  # type: ignore[no-untyped-def]
        return {TaskKind.TRAIN: TrainPlanner(metrics=metrics, aggregator=aggregator, local_steps=6,
                                             learning_rate=3e-3, batch_size=32, head_sharing=share_heads),
                TaskKind.SCORE: ScorePlanner(task=EASYVQA, questions=server_part("reward_eval", seed=0), metrics=metrics,
                                             prompts_per_round=3)}
    cfg = RunConfig(rounds=2, quorum=2, min_clients=4, phases=(PhaseConfig(TaskKind.TRAIN, 240),
                                                               PhaseConfig(TaskKind.SCORE, 120)))
    fed = start_federation(cfg, planners=planners, keyholder=True)
    parts, clients = {}, []
    for name in NAMES:
        model = easyvqa_reward_config(kind=KINDS[name], **({"layers": 1} if name == "d" else {}))
        part = RewardParticipant(kit=fed.kit(name), state_dir=tmp_path / name,
                                 pairs=client_pairs(name=name, clients=list(NAMES), kind=KINDS[name], limit=300),
                                 config=ParticipantConfig(model=model, budget=PrivacyBudget(8.0, 1e-5), dp=DPSettings()))
        parts[name] = part
        clients.append(FederatedClient(kit=fed.kit(name), address=fed.address, poll_wait_ms=500,
                                       capabilities=part.capabilities(), handlers=part.handlers()))
    threads = [run_in_thread(c) for c in clients]
    for t, out in threads:
        t.join(400)
        assert not t.is_alive() and "error" not in out, out
        assert dict(out["summary"].completed) == {"TRAIN": 2, "SCORE": 2}, out["summary"]
    for c in clients:
        c.close()
    assert fed.loop.call(fed.server.engine.status).rounds_closed == 2

    def group(family: str, stack: str, shape: str = SHAPE) -> str:
        return GroupKey.of(family=family, stack=stack, backbone_sha256="", shape=shape).name

    # Round 1 published: attention per stack across kinds of the same shape, the image+text
    # MLPs between a and b; nothing of d's shape (alone in its groups: below the quorum).
    published = fed.store(lambda s: {g: s.submissions.aggregate(fed.server.engine.status().run_id, 1, g)[2]
                                     for g in s.submissions.aggregate_groups(fed.server.engine.status().run_id, 1)})
    # with share_heads, a and b's heads and fusion layers too (c and d have no same-kind peer)
    heads = {group("head_image_text", "head"): 2, group("head_image_text", "fuse"): 2} if share_heads else {}
    assert published == {group("attn", "image"): 3, group("attn", "text"): 2,
                         group("mlp_image_text", "image"): 2, group("mlp_image_text", "text"): 2, **heads}
    assert not any(OTHER in g for g in published)
    assert not parts["d"].applied  # d trained and scored alone
    assert {g for _, g, _ in parts["c"].applied} == {group("attn", "image")}
    assert {g for r, g, _ in parts["a"].applied if r == 1} == set(published)

    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    plan2 = next(r for r in records if r["phase"] == "train_plan" and r["round"] == 2)
    n = {name: len(parts[name].train_data) for name in NAMES}
    expected = (n["a"] + n["b"]) / (n["a"] + n["b"] + n["c"])  # S_m: a, b, c (d has another shape)
    for family, stack in [*(("mlp_image_text", s) for s in ("image", "text")),
                          *(("head_image_text", s) for s in ("head", "fuse") if share_heads)]:
        assert plan2[f"compensation.{group(family, stack)}"] == pytest.approx(expected)
    assert share_heads or not any("head_" in k for k in plan2)
    assert plan2["aux.c"] == [group("attn", "text")] and "aux.d" not in plan2 and "aux.a" not in plan2
    assert plan2["upload.a"] == plan2["upload.b"] == ("attn+mlp+head" if share_heads else "attn+mlp")
    assert plan2["upload.c"] == plan2["upload.d"] == "attn"
    # c's gate started at 0 in round 2 and moved under DP-SGD; round 1 had nothing to borrow.
    first, second = (dict(r.metrics) for r in parts["c"].reports)
    assert "gate_mean" not in first and second["gate_max_abs"] > 0.0
    scores = [r for r in records if r["phase"] == "score"]
    assert {r["client"] for r in scores} == set(NAMES) and all(r["finite"] for r in scores)
