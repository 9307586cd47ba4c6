"""The ALIGN stage as the server runs it on a task (closed answer set or free text): the built-in policy (vision tower
pretrained on public images, SFT warm start on the seed set — :func:`prepare_base`),
prompts from the public pool, the router fit on the public ``router`` part, the
reward-hacking monitor and the promotion gate on public ``reward_eval`` questions (the
same number of each question type), checkpoints in the stage's folder, and the promoted
policy exported to ``policy/`` (the start until a round beats it; ``promoted.json`` says
which). ``evaluate_stage`` measures the base, the promoted and the last policy on fixed
test questions of the task.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fedsecure.models.policy_vlm import load_policy
from fedsecure.task import Task, balanced_by_answer, balanced_by_group, public_labelled
from server.align.engine.devices import select_placement
from server.align.engine.grpo import GRPOConfig, GRPOEngine
from server.align.engine.grpo_checkpoint import latest_checkpoint, load_checkpoint
from server.align.engine.grpo_loss import GRPOLossConfig
from server.align.engine.job import (
    AlignmentSettings,
    export_policy,
    prepare_base,
    prompt_pool,
)
from server.align.engine.policy import Policy, PolicySetup
from server.align.engine.prompts import vqa_prompts
from server.align.engine.recipe import GRPO_RECIPE
from server.align.engine.rollouts import SamplingConfig
from server.align.engine.vqa_eval import (
    EvalResult,
    answer_budget,
    eval_prompts,
    evaluate_policy,
    evaluate_text_only,
    task_answer_form,
    task_judge,
    text_only_answers,
)
from server.align.combiners import Routed
from server.align.features import reference_features
from server.align.promotion import Measured
from server.align.reward import MixtureReward, ScoringClient
from server.align.router import Router
from server.align.preferences import PreferenceSet
from server.align.stage import AlignStage, AlignStageConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
POLICY, PROMOTED = "policy", "promoted.json"
# full fine-tuning with the publicly pretrained vision tower frozen (server/align/engine/policy.py)
STAGE_SETUP = PolicySetup(adapter="full", freeze_vision_tower=True)


@dataclass(frozen=True)
class VQAStageSettings:
    """Sizes of the ALIGN stage. What an operator sets comes from
    :class:`server.settings.ServerSettings` (its one source of defaults); the rest are
    the stage's own."""

    out: Path
    steps_per_round: int
    prompts_per_step: int
    learning_rate: float
    beta: float
    # GRPO only on the question types where the fused reward beats chance by this much
    # (AlignStageConfig.min_fused_lift; None: every type) ...
    min_fused_lift: float | None
    # ... measured on lists from the policy's own samples on this many public router
    # questions per type (AlignStageConfig.policy_lists_per_group; 0: on the curated lists)
    policy_lists_per_group: int
    # held-out measurement (and promotion) every this many steps inside a round (0: at its end)
    monitor_every: int
    # KL weight to the start on the types left out (AlignStageConfig.left_out_beta)
    left_out_beta: float
    step_deadline_s: float
    hacking_rounds: int
    seed: int
    group_size: int = GRPO_RECIPE.group_size
    best_nll: float = GRPO_RECIPE.best_nll  # GRPOLossConfig.best_nll
    pool_size: int = 1500  # balanced by type
    router_per_type: int = 100  # public router questions of each type (the part is three-quarters yes/no)
    # held-out questions of each type, its answers evenly (monitor and promotion gate). 250,
    # not 100: with 100 the gate promoted a step whose held-out type mean rose +0.023 while
    # 2,000 test questions said it fell (0.677 -> 0.668; issue 24's demo); the noise of a
    # type mean shrinks as 1/sqrt(n). A group with fewer held-out questions gives all it has.
    monitor_per_type: int = 250
    device: str = "auto"


def build_vqa_stage(roster: Sequence[ScoringClient], settings: VQAStageSettings, *, task: Task) -> AlignStage:
    """The stage for ``roster`` (fixed order: the router's client axis)."""
    base = prepare_base(AlignmentSettings(out=settings.out, seed=settings.seed, device=settings.device), task=task)
    model, processor = load_policy(base)
    policy = Policy.for_vlm(model, processor, setup=STAGE_SETUP, placement=select_placement(settings.device))
    pool = vqa_prompts(prompt_pool(task, settings.pool_size), processor=processor)
    config = GRPOConfig(group_size=settings.group_size, prompts_per_step=settings.prompts_per_step,
                        learning_rate=settings.learning_rate, seed=settings.seed,
                        loss=GRPOLossConfig(beta=settings.beta, best_nll=settings.best_nll),
                        sampling=SamplingConfig(temperature=GRPO_RECIPE.temperature,
                                                max_new_tokens=answer_budget(processor, task)))
    # The task's label-free format check: the clients' reward models never saw an answer
    # about the wrong shape or a sentence broken off, and GRPO learned both (issue 25)
    engine = GRPOEngine(policy=policy, config=config, checkpoint_dir=settings.out / CHECKPOINTS, checkpoint_every=1,
                        answer_form=task_answer_form(task))
    preferences = PreferenceSet.from_records(balanced_by_group(task.server_part("router"), settings.router_per_type),
                                             processor=processor, task=task)
    monitor = vqa_prompts(balanced_by_answer(task.server_part("reward_eval"), settings.monitor_per_type),
                          processor=processor)
    features = reference_features(policy)
    router = Router(feature_dim=int(features(pool[:1]).shape[1]), clients=len(roster))
    reward = MixtureReward(clients=roster, combiner=Routed(router), features=features,
                           deadline_s=settings.step_deadline_s)

    def export(measured: Measured) -> None:
        # The live policy is the promoted one: export it, then say so (the file last, so a
        # crash in between leaves the previous pair consistent or a newer policy unnamed).
        export_policy(policy, processor, settings.out / POLICY)
        tmp = settings.out / f".{PROMOTED}.tmp"
        tmp.write_text(json.dumps({**asdict(measured), "type_mean": measured.type_mean}, sort_keys=True))
        os.replace(tmp, settings.out / PROMOTED)
        log.info("ALIGN: exported the %s policy (step %d, type-averaged held-out accuracy %.3f) to %s",
                 "start" if measured.round < 0 else f"round-{measured.round}", measured.step, measured.type_mean,
                 settings.out / POLICY)

    return AlignStage(engine=engine, reward=reward, pool=pool, monitor=monitor, preferences=preferences,
                      router=router, config=AlignStageConfig(steps_per_round=settings.steps_per_round,
                                                             hacking_rounds=settings.hacking_rounds,
                                                             min_fused_lift=settings.min_fused_lift,
                                                             policy_lists_per_group=settings.policy_lists_per_group,
                                                             monitor_every=settings.monitor_every,
                                                             left_out_beta=settings.left_out_beta),
                      log_path=settings.out / "align.jsonl", on_promote=export,
                      pool_groups=[str(p.group) for p in pool], judge=task_judge(task),
                      answer_tokens=config.sampling.max_new_tokens)


@dataclass(frozen=True)
class StageEvaluation:
    """Test exact match of the base policy, of the promoted (exported) one and of the
    stage's last checkpoint; the steps taken and the step the promoted policy is from
    (0: the start)."""

    start: EvalResult
    end: EvalResult
    last: EvalResult
    steps: int
    promoted_step: int
    # no policy: the most common answer for the question text among the server's public
    # labelled examples (never a client's share, never the held-out part)
    text_only: EvalResult


def evaluate_stage(out: Path, *, task: Task, limit: int = 500, seed: int = 0, device: str = "auto") -> StageEvaluation:
    """Measure the base policy in ``out``, the exported (promoted) policy and the policy of
    the stage's latest checkpoint on ``limit`` fixed test questions of ``task``."""
    model, processor = load_policy(out / "base")
    policy = Policy.for_vlm(model, processor, setup=STAGE_SETUP, placement=select_placement(device))
    test = eval_prompts(processor, task=task, limit=limit, seed=seed)
    judge = task_judge(task)
    budget = answer_budget(processor, task)
    start = evaluate_policy(policy, test, judge=judge, max_new_tokens=budget)
    text_only = evaluate_text_only(test, text_only_answers(public_labelled(task)), judge=judge)
    path = latest_checkpoint(out / CHECKPOINTS)
    if path is None:
        return StageEvaluation(start=start, end=start, last=start, steps=0, promoted_step=0, text_only=text_only)
    state = load_checkpoint(path)
    params = dict(policy.trainable())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state.trainable[name].to(p.device, p.dtype))
    last = evaluate_policy(policy, test, judge=judge, max_new_tokens=budget)
    promoted_file = out / PROMOTED
    promoted_step = int(json.loads(promoted_file.read_text())["step"]) if promoted_file.is_file() else state.step
    if promoted_step == state.step:
        end = last
    elif promoted_step == 0:
        end = start
    else:
        exported, exported_processor = load_policy(out / POLICY)
        end = evaluate_policy(Policy.for_vlm(exported, exported_processor, setup=STAGE_SETUP,
                                             placement=select_placement(device)), test, judge=judge,
                               max_new_tokens=budget)
    return StageEvaluation(start=start, end=end, last=last, steps=state.step, promoted_step=promoted_step,
                           text_only=text_only)
