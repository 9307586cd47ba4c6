"""``fedsecure bench mor``: the cost of one ALIGN step, and the federation tax.

The same stage — the built-in policy (random init: timing does not depend on training),
three clients of the three kinds (image+text, image, text; reward models at random init
on the default shape), uniform fusion — runs ``steps`` GRPO steps twice, side by side in
one process:

- **in process**: each client's reward model called directly (its channel scores the very
  items, PNG images included, that would travel);
- **remote**: a real server on loopback (mTLS, the round engine, an ALIGN phase), three
  real ``FederatedClient``s on threads, each answering over its score session with signed
  scores, verified by the server.

Per step: rollout, scoring round trip per client (p50/p99), fusion and update times, and
the step's wall time; the federation tax is the median remote step time ÷ the median
in-process step time. Both runs start from the same policy, seeds and prompts. The first
``warmup`` steps are left out of the medians. Everything here shares one machine's cores
(clients, server and GRPO in one process), so remote scoring also competes for the CPU.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from server.align.engine.recipe import GRPO_RECIPE

KINDS = (("it", "image_text"), ("img", "image"), ("txt", "text"))


@dataclass(frozen=True)
class MorBenchConfig:
    """Steps measured per path, warm-up steps dropped, prompts per step, group size, threads."""

    steps: int = 12
    warmup: int = 2
    prompts_per_step: int = 8
    group_size: int = GRPO_RECIPE.group_size
    threads: int = 2

    def __post_init__(self) -> None:
        if self.steps <= self.warmup or self.warmup < 0 or self.prompts_per_step < 1 or self.group_size < 2:
            raise ValueError("need steps > warmup >= 0, prompts_per_step >= 1, group_size >= 2")


def _models() -> dict[str, tuple[object, object]]:
    from fedsecure.models.reward import build_reward_model
    from tasks.easyvqa.models import reward_config as easyvqa_reward_config

    out = {}
    for i, (name, kind) in enumerate(KINDS):
        torch.manual_seed(i)
        out[name] = build_reward_model(easyvqa_reward_config(kind=kind))
    return out


def _modalities(kind: str) -> tuple:  # type: ignore[type-arg]
    from fedsecure.types import Modality

    return {"image_text": (Modality.IMAGE_TEXT,), "image": (Modality.IMAGE,), "text": (Modality.TEXT,)}[kind]


def _build_stage(roster: Sequence[object], cfg: MorBenchConfig, out: Path):  # type: ignore[no-untyped-def]
    from tasks.easyvqa.data import vocabulary
    from fedsecure.models.policy_vlm import build_tiny_vlm
    from server.align.engine.devices import select_placement
    from server.align.engine.grpo import GRPOConfig, GRPOEngine
    from server.align.engine.policy import Policy, PolicySetup
    from server.align.engine.prompts import vqa_prompts
    from server.align.engine.rollouts import SamplingConfig
    from server.align.combiners import Uniform
    from server.align.features import reference_features
    from server.align.reward import MixtureReward
    from server.align.stage import AlignStage, AlignStageConfig
    from tasks.easyvqa.shares import server_records

    model, processor = build_tiny_vlm(words=vocabulary(), seed=0)
    policy = Policy.for_vlm(model, processor, setup=PolicySetup(adapter="full"), placement=select_placement("cpu"))
    engine = GRPOEngine(policy=policy, config=GRPOConfig(group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step,
                                                         learning_rate=3e-4, seed=0,
                                                         sampling=SamplingConfig(max_new_tokens=4)),
                        checkpoint_dir=out, checkpoint_every=1)
    pool, _ = server_records(seed=0)
    reward = MixtureReward(clients=roster, combiner=Uniform(), features=reference_features(policy),  # type: ignore[arg-type]
                           deadline_s=60.0)
    return AlignStage(engine=engine, reward=reward, pool=vqa_prompts(pool[:200], processor=processor), monitor=[],
                      config=AlignStageConfig(steps_per_round=cfg.steps, max_skipped_steps=cfg.steps))


def _timed(stage) -> list[float]:  # type: ignore[no-untyped-def]
    """Wall time of each step, taken between the stage's per-step callbacks."""
    marks = [time.perf_counter()]
    stage.on_step = lambda report: marks.append(time.perf_counter())
    return marks


def _summary(stage, marks: list[float], warmup: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    logs = stage.reward.logs[warmup:]
    steps = [b - a for a, b in zip(marks, marks[1:], strict=False)][warmup:]
    reports = stage.reports[warmup:]

    def q(values: list[float], p: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, round(p * (len(values) - 1)))] if values else float("nan")

    per_client = {}
    for name in [c.name for c in stage.reward.clients]:
        trips = [e.scoring_s[name] for e in logs if name in e.scoring_s]
        per_client[name] = {"p50_s": round(q(trips, 0.5), 4), "p99_s": round(q(trips, 0.99), 4), "answered": len(trips)}
    return {"step_s": round(statistics.median(steps), 4), "rollout_s": round(statistics.median(r.rollout_s for r in reports), 4),
            "update_s": round(statistics.median(r.update_s for r in reports), 4),
            "fusion_s": round(statistics.median(e.fusion_s for e in logs), 5), "scoring": per_client,
            "skipped": sum(1 for r in reports if r.skipped), "steps": len(steps)}


def _in_process(cfg: MorBenchConfig, models: dict, tmp: Path) -> dict[str, object]:  # type: ignore[type-arg]
    from fedsecure.models.scoring import score_items
    from fedsecure.types import Score
    from server.align.reward import ScoringClient

    def channel(model, tok):  # type: ignore[no-untyped-def]
        def score(exchange, items, timeout):  # type: ignore[no-untyped-def]
            return [Score(i.item_id, v) for i, v in zip(items, score_items(model, tok, items), strict=True)]
        return score

    roster = [ScoringClient(name, _modalities(kind), channel(*models[name])) for name, kind in KINDS]
    stage = _build_stage(roster, cfg, tmp / "in-process")
    marks = _timed(stage)
    stage.run_round(0)
    stage.reward.close()
    return _summary(stage, marks, cfg.warmup)


def _remote(cfg: MorBenchConfig, models: dict, tmp: Path) -> dict[str, object]:  # type: ignore[type-arg]
    from client_sdk import FederatedClient
    from fedsecure.kit import load_kit
    from fedsecure.models.scoring import score_items
    from tasks.easyvqa import TASK as EASYVQA
    from fedsecure.provision import provision
    from fedsecure.types import Capabilities, PhaseConfig, RunConfig, Score, TaskKind
    from keyholder.keys import generate_keys
    from server.app import start_server
    from server.align.sessions import ScoreSessions
    from server.align.planner import AlignPlanner
    from server.planners.metrics import MetricsLog
    from server.secagg.aggregator import SecureAggregator

    generate_keys(keys_dir=tmp / "kh")
    kits = provision(out=tmp / "kits", clients=[n for n, _ in KINDS],
                     keyholder_public_context=(tmp / "kh" / "ckks_public.ctx").read_bytes(), task=EASYVQA)
    built: list[object] = []

    def build(roster):  # type: ignore[no-untyped-def]
        stage = _build_stage(roster, cfg, tmp / "remote")
        built.append((stage, _timed(stage)))
        return stage

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro, timeout=60.0):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    sessions = ScoreSessions()
    planner = AlignPlanner(sessions=sessions, build_stage=build, metrics=MetricsLog(tmp / "metrics.jsonl"),
                           steps_per_round=cfg.steps, step_deadline_s=60.0, connect_timeout_s=60.0)
    server_kit = load_kit(kits.server)

    async def start():  # type: ignore[no-untyped-def]
        aggregator = SecureAggregator.open(kit=server_kit, state_dir=tmp / "server", keyholder_address="127.0.0.1:9")
        return await start_server(kit=server_kit, state_dir=tmp / "server", aggregator=aggregator, sessions=sessions,
                                  planners={TaskKind.ALIGN: planner},
                                  run_config=RunConfig(rounds=1, quorum=3, min_clients=3,
                                                       phases=(PhaseConfig(TaskKind.ALIGN, 1800),)))
    server = run(start())
    address = f"127.0.0.1:{server.port}"

    def handler(model, tok):  # type: ignore[no-untyped-def]
        def handle(task, ctx):  # type: ignore[no-untyped-def]
            return ctx.score_session(task, lambda batch: [Score(i.item_id, v) for i, v in
                                                          zip(batch.items, score_items(model, tok, batch.items),
                                                              strict=True)])
        return handle

    clients = [FederatedClient(kit=load_kit(kits.clients[name]), address=address, poll_wait_ms=500,
                               capabilities=Capabilities(modalities=_modalities(kind)),
                               handlers={TaskKind.ALIGN: handler(*models[name])}) for name, kind in KINDS]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    for c in clients:
        c.close()
    run(server.stop(grace=0.5))
    loop.call_soon_threadsafe(loop.stop)
    stage, marks = built[0]  # type: ignore[misc]
    stage.reward.close()
    return _summary(stage, marks, cfg.warmup)


def bench_mor(cfg: MorBenchConfig = MorBenchConfig()) -> dict[str, object]:
    """Run both paths; return their per-step figures and the federation tax."""
    torch.set_num_threads(cfg.threads)
    models = _models()
    with tempfile.TemporaryDirectory(prefix="bench-mor-") as tmp:
        local = _in_process(cfg, models, Path(tmp))
        remote = _remote(cfg, models, Path(tmp))
    return {"config": cfg.__dict__, "clients": [k for _, k in KINDS], "in_process": local, "remote": remote,
            "federation_tax": round(float(remote["step_s"]) / float(local["step_s"]), 3),  # type: ignore[arg-type]
            "target_tax": 1.3}
