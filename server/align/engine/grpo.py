"""The GRPO engine: rollouts, rewards, group-relative advantages, μ clipped-ratio updates
with a k3 KL penalty to the reference, gradient clipping, AdamW; checkpoints and resume.

One step = sample prompts → G completions each → rewards → advantages → μ updates. The
sampled completions are scored once; with μ = 1 the "old" log-probabilities are the
graded forward's own values detached (ratio 1), so no forward is done twice. With μ > 1
they are computed once, before the first update. The reference forward is skipped when
β = 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedsecure.progress import progress
from fedsecure.errors import CheckpointError, RewardRejected
from server.align.engine.sharding import PARALLEL_MODES, full_tensor, load_full, load_optimizer_state, optimizer_state, shard
from server.align.engine.grpo_checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from server.align.engine.grpo_loss import GRPOLossConfig, best_of_groups, group_advantages, grpo_loss, rank_unfinished_last
from server.align.engine.policy import Policy
from server.align.engine.prompts import Prompt, check_prompts, collate_images, collate_prompts
from server.align.engine.rollouts import CompletionScorer, Rollouts, SamplingConfig, generate, generate_graded

log = logging.getLogger(__name__)

RewardFn = Callable[[Sequence[Prompt], Sequence[str]], Sequence[float]]
"""Scores completions: ``reward(prompts, completions)`` returns one float per pair."""

AnswerForm = Callable[[Prompt, str], bool]
"""Whether a completion has the form of an answer to its prompt, judged without the answer
(e.g. a task's ``answers_in_form``); one out of form ranks like one that never ends."""

KLAnchor = Callable[[Prompt], float]
"""A prompt's extra KL weight to the reference policy (0: none), added to β."""


def per_completion(score: Callable[[Prompt, str], float]) -> RewardFn:
    """Lift a reward of one (prompt, completion) into the batch form the engine calls."""
    def batch(prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        return [score(p, c) for p, c in zip(prompts, completions, strict=True)]
    return batch


@dataclass(frozen=True)
class GRPOConfig:
    """Everything one GRPO run is configured by (saved with each checkpoint)."""

    group_size: int = 8
    prompts_per_step: int = 4
    updates_per_batch: int = 1  # μ
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # With μ = 1, score the policy with the forward that sampled it (one pass instead of
    # two; activation memory grows with max_new_tokens²). Ignored with μ > 1 or under DDP.
    single_pass: bool = False
    # prompts (with all their completions) per forward/backward; gradients are accumulated
    # over the batch's chunks. None: the whole batch at once.
    micro_batch_prompts: int | None = None
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # a completion that runs out of tokens before its end token, or is out of the answer
    # form the engine is given, ranks below every other one of its group
    # (grpo_loss.rank_unfinished_last)
    unfinished_last: bool = True

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: advantages are relative within a group")
        if self.prompts_per_step < 1 or self.updates_per_batch < 1:
            raise ValueError("prompts_per_step and updates_per_batch must be >= 1")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise ValueError("need learning_rate > 0, weight_decay >= 0, max_grad_norm > 0")
        if self.micro_batch_prompts is not None and self.micro_batch_prompts < 1:
            raise ValueError("micro_batch_prompts must be >= 1 (or None for the whole batch)")
        if self.sampling.temperature == 0:
            raise ValueError("GRPO samples its groups: temperature must be > 0")


@dataclass(frozen=True)
class StepReport:
    """What one step did. ``skipped`` names why no update was made (a rejected reward, or
    no group with any reward variance); the policy is then unchanged."""

    step: int
    mean_reward: float
    reward_std: float
    loss: float
    kl: float
    clipped_fraction: float
    grad_norm: float
    completion_tokens: int
    rollout_s: float
    update_s: float
    skipped: str | None = None


def check_rewards(values: Sequence[float], prompts: Sequence[Prompt]) -> torch.Tensor:
    """Refuse a reward vector of the wrong length or holding NaN/Inf, naming the prompt."""
    try:
        values = list(values)
    except TypeError as exc:
        raise RewardRejected(f"reward returned {type(values).__name__}, not a sequence of floats") from exc
    if len(values) != len(prompts):
        raise RewardRejected(f"reward returned {len(values)} values for {len(prompts)} completions")
    for v, p in zip(values, prompts, strict=True):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise RewardRejected(f"reward for prompt {p.prompt_id} is {v!r}, not a finite number",
                                 prompt_id=p.prompt_id)
    return torch.tensor(values, dtype=torch.float32)


class GRPOEngine:
    """Trains a :class:`Policy` with GRPO. ``checkpoint_dir`` (optional) receives a
    checkpoint every ``checkpoint_every`` steps; :meth:`resume` continues from the last.
    ``answer_form`` (optional): a completion out of form ranks last in its group, as one
    that never ends does (with ``config.unfinished_last``). ``kl_anchor`` (optional, may be
    set between steps): an extra KL weight to the reference per prompt, added to β — a
    caller holds some prompts near where the policy started while the others learn."""

    def __init__(self, *, policy: Policy, config: GRPOConfig, checkpoint_dir: Path | None = None,
                 checkpoint_every: int = 0, parallel: str = "ddp", answer_form: AnswerForm | None = None) -> None:
        if checkpoint_every < 0 or (checkpoint_every and checkpoint_dir is None):
            raise ValueError("checkpoint_every needs a checkpoint_dir and must be >= 0")
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, not {parallel!r}")
        if parallel == "fsdp" and not policy.placement.distributed:
            raise ValueError("parallel='fsdp' shards over ranks: run under torchrun with 2 or more processes")
        self.policy, self.config, self.parallel = policy, config, parallel
        self.answer_form = answer_form
        self.kl_anchor: KLAnchor | None = None
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, checkpoint_every
        if parallel == "fsdp":
            policy.fingerprint()  # of the whole weights, before they are split over the ranks
            shard(policy.model)  # before the optimiser: it must see the sharded parameters
        params = [p for _, p in policy.trainable()]
        self._params = params
        if not params:
            raise ValueError("the policy has no trainable parameters")
        # fused AdamW (one kernel over all parameters) exists for CPU and CUDA float tensors
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           fused=all(p.dtype in (torch.float32, torch.bfloat16) for p in params))
        self.step_count = 0
        # what a caller trains alongside the policy, checkpointed in the same step:
        # ``extra_state()`` → (tensors, JSON-able dict), ``restore_extra(tensors, dict)`` on resume
        self.extra_state: Callable[[], tuple[dict[str, torch.Tensor], dict[str, object]]] | None = None
        self.restore_extra: Callable[[dict[str, torch.Tensor], dict[str, object]], None] | None = None
        # the graded forward; under torchrun wrapped in DDP so gradients are averaged
        self.scorer: torch.nn.Module = CompletionScorer(policy.model, temperature=config.sampling.temperature,
                                                        suppressed=policy.suppressed, autocast=policy.placement.autocast)
        if policy.placement.distributed and parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = policy.placement.device
            # find_unused_parameters: a VLM leaves some weights out of the graph (e.g. the vision
            # tower's pooling head), which plain DDP would wait for forever
            self.scorer = DistributedDataParallel(self.scorer, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)

    # -- prompts ---------------------------------------------------------------------------
    def sample_prompts(self, pool: Sequence[Prompt]) -> list[Prompt]:
        """This step's prompts: a seeded draw without replacement, different on each rank."""
        p = self.policy.placement
        rng = np.random.default_rng([self.config.seed, self.step_count, p.rank])
        n = min(self.config.prompts_per_step, len(pool))
        return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]

    def sample(self, prompts: Sequence[Prompt], *, salt: int = 1) -> list[str]:
        """``group_size`` completions of the current policy for each prompt (prompt-major,
        as a step samples them, with a generator of its own: ``salt`` keeps it apart from the
        step's), decoded; no update. What the policy would say now, e.g. to measure a reward
        on the policy's own samples."""
        cfg, policy = self.config, self.policy
        check_prompts(prompts, needs_image=policy.is_vlm)
        generator = torch.Generator(device=policy.placement.device)
        generator.manual_seed(((cfg.seed * 1_000_003 + self.step_count) * 1009 + policy.placement.rank) * 31 + salt)
        rollouts = generate(policy.model, collate_prompts(prompts, pad_id=policy.pad_id), group_size=cfg.group_size,
                            config=cfg.sampling, eos_id=policy.eos_id, pad_id=policy.pad_id, generator=generator,
                            autocast=policy.placement.autocast, suppressed=policy.suppressed)
        return [policy.decode(row) for row in rollouts.completion_ids.tolist()]

    # -- one step --------------------------------------------------------------------------
    def step(self, prompts: Sequence[Prompt], reward: RewardFn) -> StepReport:
        """Roll out, score, and update on ``prompts``. A bad reward skips the update (the
        policy and optimiser are untouched) and is reported, never trained on."""
        cfg, policy = self.config, self.policy
        check_prompts(prompts, needs_image=policy.is_vlm)
        started = time.perf_counter()
        rollouts, graded, texts, expanded = self._rollout(prompts)
        rollout_s = time.perf_counter() - started
        tokens = int(rollouts.completion_mask.sum())
        try:
            rewards, rejected = check_rewards(reward(expanded, texts), expanded), None
        except RewardRejected as exc:
            rewards, rejected = torch.zeros(len(expanded)), exc
        if self._any_rank(rejected is not None):
            log.warning("step %d skipped: %s", self.step_count, rejected or "a reward was rejected on another rank")
            return self._finish(StepReport(self.step_count, math.nan, math.nan, math.nan, math.nan, math.nan,
                                           math.nan, tokens, rollout_s, 0.0, skipped=f"reward rejected: {rejected or 'on another rank'}"))
        mean, std = float(rewards.mean()), float(rewards.std()) if rewards.numel() > 1 else 0.0  # as judged
        judged = rewards
        if cfg.unfinished_last:
            finished = (rollouts.completion_ids == policy.eos_id).any(dim=1).cpu()
            if self.answer_form is not None:
                finished &= torch.tensor([self.answer_form(p, t) for p, t in zip(expanded, texts, strict=True)])
            rewards = rank_unfinished_last(rewards, finished, cfg.group_size)
        advantages = group_advantages(rewards, cfg.group_size, cfg.loss.std_eps, scale=cfg.loss.scale_rewards)
        # a best completion only where the judge itself told the group's answers apart
        best = best_of_groups(rewards, cfg.group_size, judged=judged) if cfg.loss.best_nll > 0 else None
        if not self._any_rank(bool(advantages.any())):
            return self._finish(StepReport(self.step_count, mean, std, 0.0, 0.0, 0.0, 0.0, tokens, rollout_s, 0.0,
                                           skipped="no group had reward variance: nothing to learn from"))
        started = time.perf_counter()
        kl_weight = None
        if self.kl_anchor is not None:
            extra = [float(self.kl_anchor(p)) for p in prompts]
            if any(not math.isfinite(x) or x < 0 for x in extra):
                raise ValueError("kl_anchor must give a finite weight >= 0 per prompt")
            if any(extra):
                kl_weight = cfg.loss.beta + torch.tensor(extra, dtype=torch.float32).repeat_interleave(cfg.group_size)
        stats = self._update(rollouts, advantages, prompts, graded, best, kl_weight)
        return self._finish(StepReport(self.step_count, mean, std, stats["loss"], stats["kl"],
                                       stats["clipped_fraction"], stats["grad_norm"], tokens, rollout_s,
                                       time.perf_counter() - started))

    def _single_pass(self) -> bool:
        return (self.config.single_pass and self.config.updates_per_batch == 1
                and self.config.micro_batch_prompts is None and not self.policy.placement.distributed)

    def _rollout(self, prompts: Sequence[Prompt]) -> tuple[Rollouts, torch.Tensor | None, list[str], list[Prompt]]:
        cfg, policy = self.config, self.policy
        batch = collate_prompts(prompts, pad_id=policy.pad_id)
        generator = torch.Generator(device=policy.placement.device)
        generator.manual_seed((cfg.seed * 1_000_003 + self.step_count) * 1009 + policy.placement.rank)
        kwargs = dict(group_size=cfg.group_size, config=cfg.sampling, eos_id=policy.eos_id, pad_id=policy.pad_id,
                      generator=generator, autocast=policy.placement.autocast, suppressed=policy.suppressed)
        graded = None
        if self._single_pass():
            rollouts, graded = generate_graded(policy.model, batch, **kwargs)  # type: ignore[arg-type]
        else:
            rollouts = generate(policy.model, batch, **kwargs)  # type: ignore[arg-type]
        texts = [policy.decode(row) for row in rollouts.completion_ids.tolist()]
        expanded = [p for p in prompts for _ in range(cfg.group_size)]
        return rollouts, graded, texts, expanded

    def _any_rank(self, flag: bool) -> bool:
        # Under DDP every rank must take the same branch, or the gradient all-reduce of the
        # ranks that update waits forever for the ones that skipped.
        if not self.policy.placement.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.policy.placement.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def _chunks(self, prompts: int) -> list[slice]:
        """Prompt ranges of one forward/backward each (whole groups, so the shared-prefix
        scorer still sees every completion of a prompt together)."""
        size = self.config.micro_batch_prompts or prompts
        return [slice(i, min(i + size, prompts)) for i in range(0, prompts, size)]

    def _update(self, rollouts: Rollouts, advantages: torch.Tensor, prompts: Sequence[Prompt],
                graded: torch.Tensor | None, best: torch.Tensor | None = None,
                kl_weight: torch.Tensor | None = None) -> dict[str, float]:
        cfg, policy = self.config, self.policy
        device, g = policy.placement.device, cfg.group_size
        advantages = advantages.to(device)
        mask = rollouts.completion_mask.to(device)
        chunks = [(c, slice(c.start * g, c.stop * g)) for c in self._chunks(len(prompts))]

        # each chunk's image inputs, batched once (the scorer encodes each prompt's image once
        # and shares the prefix across its G completions)
        images = [collate_images(prompts[c]) if policy.is_vlm else None for c, _ in chunks]

        def inputs(k: int, c: slice, rows: slice) -> tuple[object, ...]:
            chunk_images = images[k]
            return (rollouts.prompt_ids[::g][c], rollouts.prompt_mask[::g][c], rollouts.completion_ids[rows],
                    rollouts.completion_mask[rows],
                    None if chunk_images is None else {key: v.to(device) for key, v in chunk_images.items()})

        def score(module: torch.nn.Module) -> torch.Tensor:
            scorer = CompletionScorer(module, temperature=cfg.sampling.temperature, suppressed=policy.suppressed,
                                      autocast=policy.placement.autocast)
            return torch.cat([scorer(*inputs(k, c, rows)) for k, (c, rows) in enumerate(chunks)])

        ref_logp = old_logp = None
        with torch.no_grad():
            if cfg.loss.beta > 0 or kl_weight is not None:
                with policy.reference() as reference:
                    ref_logp = score(reference)
            if cfg.updates_per_batch > 1:
                old_logp = score(policy.model)
        # each chunk's loss is weighted by its share of what the loss averages over
        # (completions, or tokens), so the accumulated gradient is the full batch's
        if cfg.loss.averaging == "token":
            weights = [float(mask[rows].sum()) / max(float(mask.sum()), 1.0) for _, rows in chunks]
        else:
            weights = [(rows.stop - rows.start) / mask.shape[0] for _, rows in chunks]
        totals = {"loss": 0.0, "kl": 0.0, "clipped_fraction": 0.0, "grad_norm": 0.0}
        params = self._params
        for _ in range(cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            for k, ((c, rows), w) in enumerate(zip(chunks, weights, strict=True)):
                last = k == len(chunks) - 1
                # DDP all-reduces gradients once, on the last chunk; no_sync must cover the
                # forward as well as the backward, or the reducer expects a sync that never comes
                sync = contextlib.nullcontext() if last or not hasattr(self.scorer, "no_sync") else self.scorer.no_sync()
                with sync:
                    logp = graded if graded is not None else self.scorer(*inputs(k, c, rows))
                    loss, stats = grpo_loss(logp=logp,
                                            old_logp=logp.detach() if old_logp is None else old_logp[rows],
                                            ref_logp=None if ref_logp is None else ref_logp[rows],
                                            advantages=advantages[rows], mask=mask[rows], config=cfg.loss,
                                            best=None if best is None else best[rows].to(device), group_size=g,
                                            kl_weight=None if kl_weight is None else kl_weight[rows].to(device))
                    (loss * w).backward()
                totals["loss"] += loss.item() * w / cfg.updates_per_batch
                for key in ("kl", "clipped_fraction"):
                    totals[key] += stats[key] * w / cfg.updates_per_batch
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.optimizer.step()
            totals["grad_norm"] += float(grad_norm) / cfg.updates_per_batch
        return totals

    def pass_step(self, reason: str) -> StepReport:
        """Count a step in which nothing is sampled or learnt (the policy and optimiser
        untouched), checkpointed like any other: a caller with nothing it trusts to train
        on keeps its step numbering (e.g. the ALIGN stage's rounds of fixed length)."""
        return self._finish(StepReport(self.step_count, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan,
                                       0, 0.0, 0.0, skipped=f"passed: {reason}"))

    def _finish(self, report: StepReport) -> StepReport:
        self.step_count += 1
        if self.checkpoint_every and self.step_count % self.checkpoint_every == 0:
            self.save()
        return report

    # -- running and checkpoints -----------------------------------------------------------
    def train(self, pool: Sequence[Prompt], reward: RewardFn, *, steps: int,
              on_step: Callable[[StepReport], None] | None = None) -> list[StepReport]:
        """Run until ``steps`` steps are done in total (a resumed run does only the rest)."""
        if steps < 0:
            raise ValueError("steps must be >= 0")
        check_prompts(pool, needs_image=self.policy.is_vlm)
        reports = []
        with progress(total=steps, initial=self.step_count, desc="GRPO",
                      show=self.policy.placement.rank == 0) as bar:  # one bar under DDP
            while self.step_count < steps:
                report = self.step(self.sample_prompts(pool), reward)
                reports.append(report)
                bar.update(1)
                if on_step is not None:
                    on_step(report)
        return reports

    def _meta(self) -> dict[str, object]:
        return {"config": dataclasses.asdict(self.config), "fingerprint": self.policy.fingerprint(),
                "adapter": self.policy.setup.adapter, "parallel": self.parallel}

    def save(self) -> Path:
        """Checkpoint now (rank 0 only under DDP); returns the checkpoint directory."""
        if self.checkpoint_dir is None:
            raise CheckpointError("this engine has no checkpoint_dir")
        # Under FSDP gathering the full tensors is a collective: every rank takes part.
        trainable = {n: full_tensor(p.detach()) for n, p in self.policy.trainable()} if self.parallel == "fsdp" else None
        names = [n for n, _ in self.policy.trainable()]
        optimizer = optimizer_state(self.policy.model, self.optimizer, names) if self.parallel == "fsdp" else None
        if self.policy.placement.rank != 0:
            return self.checkpoint_dir
        extra, extra_meta = self.extra_state() if self.extra_state is not None else ({}, {})
        return save_checkpoint(self.checkpoint_dir, step=self.step_count,
                               trainable=trainable or {n: p for n, p in self.policy.trainable()},
                               optimizer=optimizer or self.optimizer.state_dict(), meta=self._meta(), extra=extra,
                               extra_meta=extra_meta)

    def resume(self) -> int:
        """Load the newest checkpoint in ``checkpoint_dir`` if any; returns the step reached.
        Refuses a checkpoint taken from another policy or configuration."""
        if self.checkpoint_dir is None:
            raise CheckpointError("this engine has no checkpoint_dir")
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return self.step_count
        state = load_checkpoint(path)
        meta = json.loads(json.dumps(self._meta()))
        for key in ("fingerprint", "config", "adapter"):
            if state.meta.get(key) != meta[key]:
                raise CheckpointError(f"checkpoint {path} was taken with a different {key}")
        taken = state.meta.get("parallel", "ddp")  # checkpoints from before FSDP: ddp's format
        if taken != self.parallel:
            raise CheckpointError(f"checkpoint {path} was taken with --parallel {taken}; resume it with the same")
        params = dict(self.policy.trainable())
        if set(state.trainable) != set(params):
            raise CheckpointError(f"checkpoint {path} holds other trainable parameters than this policy")
        for name, p in params.items():
            load_full(p, state.trainable[name])
        load_optimizer_state(self.policy.model, self.optimizer, state.optimizer, list(params))
        if self.restore_extra is not None:
            self.restore_extra(state.extra, state.extra_meta)
        self.step_count = state.step
        return self.step_count
