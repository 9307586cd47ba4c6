"""The ALIGN stage as the server runs it on easy-VQA: the built-in policy (vision tower
pretrained on public images, SFT warm start on the seed set — :func:`prepare_base`),
prompts from the public pool, the router fit on the public ``router`` part, the
reward-hacking monitor on public ``reward_eval`` questions, and checkpoints in the
stage's folder. ``evaluate_stage`` measures the base and the aligned policy on fixed
easy-VQA test questions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedsecure.data.shares import server_part, server_records
from fedsecure.models.policy_vlm import load_policy
from server.alignment.devices import select_placement
from server.alignment.grpo import GRPOConfig, GRPOEngine
from server.alignment.grpo_checkpoint import latest_checkpoint, load_checkpoint
from server.alignment.grpo_loss import GRPOLossConfig
from server.alignment.job import AlignmentSettings, prepare_base
from server.alignment.policy import Policy, PolicySetup
from server.alignment.prompts import vqa_prompts
from server.alignment.rollouts import SamplingConfig
from server.alignment.vqa_eval import EvalResult, eval_prompts, evaluate_policy
from server.mixture.combiners import Routed
from server.mixture.features import reference_features
from server.mixture.reward import MixtureReward, ScoringClient
from server.mixture.router import Router
from server.mixture.stage import AlignStage, AlignStageConfig, PreferenceSet

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class VQAStageSettings:
    """Sizes of the easy-VQA ALIGN stage (defaults: the CPU demo's)."""

    out: Path
    steps_per_round: int = 20
    prompts_per_step: int = 16
    group_size: int = 8
    learning_rate: float = 3e-4
    beta: float = 0.04
    pool_size: int = 2000
    router_pairs: int = 300
    monitor_questions: int = 200
    step_deadline_s: float = 30.0
    hacking_rounds: int = 2
    seed: int = 0
    device: str = "auto"


def build_vqa_stage(roster: Sequence[ScoringClient], settings: VQAStageSettings) -> AlignStage:
    """The stage for ``roster`` (fixed order: the router's client axis)."""
    base = prepare_base(AlignmentSettings(out=settings.out, seed=settings.seed, device=settings.device))
    model, processor = load_policy(base)
    policy = Policy.for_vlm(model, processor, setup=PolicySetup(adapter="full"),
                            placement=select_placement(settings.device))
    config = GRPOConfig(group_size=settings.group_size, prompts_per_step=settings.prompts_per_step,
                        learning_rate=settings.learning_rate, seed=settings.seed,
                        loss=GRPOLossConfig(beta=settings.beta),
                        sampling=SamplingConfig(temperature=1.0, max_new_tokens=4))
    engine = GRPOEngine(policy=policy, config=config, checkpoint_dir=settings.out / CHECKPOINTS, checkpoint_every=1)
    pool_records, _ = server_records(seed=0)
    pool = vqa_prompts(pool_records[:settings.pool_size], processor=processor)
    preferences = PreferenceSet.from_records(server_part("router")[:settings.router_pairs], processor=processor,
                                             seed=settings.seed)
    monitor = vqa_prompts(server_part("reward_eval")[:settings.monitor_questions], processor=processor)
    features = reference_features(policy)
    router = Router(feature_dim=int(features(pool[:1]).shape[1]), clients=len(roster))
    reward = MixtureReward(clients=roster, combiner=Routed(router), features=features,
                           deadline_s=settings.step_deadline_s)
    return AlignStage(engine=engine, reward=reward, pool=pool, monitor=monitor, preferences=preferences,
                      router=router, config=AlignStageConfig(steps_per_round=settings.steps_per_round,
                                                             hacking_rounds=settings.hacking_rounds),
                      log_path=settings.out / "align.jsonl")


@dataclass(frozen=True)
class StageEvaluation:
    """Test exact match of the base policy and of the stage's last checkpoint."""

    start: EvalResult
    end: EvalResult
    steps: int


def evaluate_stage(out: Path, *, limit: int = 500, seed: int = 0, device: str = "auto") -> StageEvaluation:
    """Measure the base policy in ``out`` and the same policy with the stage's latest
    checkpoint applied, on ``limit`` fixed easy-VQA test questions."""
    model, processor = load_policy(out / "base")
    policy = Policy.for_vlm(model, processor, setup=PolicySetup(adapter="full"), placement=select_placement(device))
    test = eval_prompts(processor, limit=limit, seed=seed)
    start = evaluate_policy(policy, test)
    path = latest_checkpoint(out / CHECKPOINTS)
    if path is None:
        return StageEvaluation(start=start, end=start, steps=0)
    state = load_checkpoint(path)
    params = dict(policy.trainable())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state.trainable[name].to(p.device, p.dtype))
    return StageEvaluation(start=start, end=evaluate_policy(policy, test), steps=state.step)
