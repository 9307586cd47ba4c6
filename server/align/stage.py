"""The ALIGN stage of a round (docs/design.md §4): refresh the router on the public
preference set with the clients' current reward models, then run GRPO steps on the fused
reward, checkpointing the policy, optimiser and router after every step, and watch for
reward hacking.

Rounds are numbered from 0 within the stage; round ``r`` covers GRPO steps
``[r·S, (r+1)·S)``. A server that restarts mid-round resumes from the last checkpointed
step: the interrupted step is redone with fresh rollouts and fresh scores (its first
scores were never applied, so none counts twice), and the router comes back as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from server.align.engine.grpo import GRPOEngine, StepReport
from server.align.engine.prompts import Prompt
from server.align.engine.vqa_eval import Judge, evaluate_policy, exact_match
from server.align.combiners import Routed
from server.align.preferences import PreferenceItems, PreferenceSet, joined, policy_lists
from server.align.promotion import Measured, PromotionGate
from server.align.reward import MixIn, MixtureReward
from server.align.router import (
    Router,
    fit_router,
    lift_by_group,
    weights_by_group,
)

log = logging.getLogger(__name__)

MIN_LISTS = 4  # policy lists of a group (with a right sample) needed before its lift counts


@dataclass(frozen=True)
class AlignStageConfig:
    """GRPO steps per round, how many skipped steps in a row end the stage, how many
    rounds of rising reward with falling held-out accuracy stop it (reward hacking), and
    the router's fitting steps per refresh."""

    steps_per_round: int = 10
    max_skipped_steps: int = 5
    # measured in the demo: fused reward -3.0 -> 0.8 -> 5.8 while held-out exact match
    # went 0.63 -> 0.59 -> 0.58; two such rounds in a row are enough to stop
    hacking_rounds: int = 2
    router_steps: int = 300
    # ... provided held-out accuracy fell by at least this much over those rounds in all
    hacking_min_drop: float = 0.02
    # a round's policy is promoted (exported) only if it beats the best so far, the start
    # included, by this much type-averaged held-out accuracy (server/align/promotion.py)
    promotion_margin: float = 0.01
    # ... and only if no question type fell below the best's by more than this
    promotion_max_type_drop: float = 0.05
    # GRPO only on the prompts of groups (question types) where the fused reward, under
    # the router just fit, puts the preferred answer first this far above chance on the
    # public preference lists (router.lift_by_group); None: on every prompt
    min_fused_lift: float | None = None
    # At each refresh, this many of the public preference prompts per group are answered by
    # the policy itself (group_size samples each), its samples judged by the task's metric
    # against the public reference, and the lists "a right sample above the wrong ones"
    # join the router's set; the fused reward's lift (min_fused_lift) is then measured on
    # them alone: the policy's own samples are what GRPO asks the reward to rank, and the
    # curated wrong answers told that apart badly (scenes: lists of curated answers passed,
    # the policy's samples then fell apart). 0: curated lists only.
    policy_lists_per_group: int = 0
    # Also measure the policy on the held-out monitor every this many steps within a round,
    # and promote it there if it passes the gate (0: at the round's end only). Measured on
    # scenes: GRPO on the one type the fused reward judged well lifted it (count 0.77 ->
    # 0.95) while the others fell within the round (colour 0.64 -> 0.15), so the round's
    # end had nothing to promote; earlier in the round the gain came first.
    monitor_every: int = 0
    # KL weight to the start on the prompts of the types left out by min_fused_lift (added
    # to GRPO's β there only): with β 0, nothing held them while the trusted types trained
    # the shared weights (measured in the demo: shape, left to a flat reward, fell 0.57 ->
    # 0.36 on the test in 60 steps while the other types learnt). 0: no anchor.
    left_out_beta: float = 0.0

    def __post_init__(self) -> None:
        if self.policy_lists_per_group < 0 or self.monitor_every < 0 or self.left_out_beta < 0:
            raise ValueError("policy_lists_per_group, monitor_every and left_out_beta cannot be negative")
        if self.steps_per_round < 1 or self.max_skipped_steps < 1 or self.hacking_rounds < 1 or self.router_steps < 0:
            raise ValueError("steps_per_round, max_skipped_steps and hacking_rounds must be >= 1, router_steps >= 0")
        if self.min_fused_lift is not None and not -1.0 <= self.min_fused_lift < 1.0:
            raise ValueError("min_fused_lift must be in [-1, 1) or None")
        if not all(0.0 <= x < 1.0 for x in (self.hacking_min_drop, self.promotion_margin,
                                             self.promotion_max_type_drop)):
            raise ValueError("hacking_min_drop, promotion_margin and promotion_max_type_drop must be in [0, 1)")


@dataclass
class AlignRoundResult:
    """One round of the stage: steps done and skipped, the fused reward's raw level next
    to held-out accuracy, the router's fit and weights per question type, who was left
    out and how often, repeat offenders, and why the stage stopped (None: it did not)."""

    round: int
    steps: int = 0  # the round's steps run, skipped and passed ones included
    skipped: int = 0
    passed: int = 0  # of ``steps``, those without an update because no group was trusted (policy_lists_per_group)
    checks: list[dict[str, float]] = field(default_factory=list)  # the monitor inside the round (monitor_every)
    reward_level: float = float("nan")
    monitor_accuracy: float = float("nan")
    monitor_by_type: dict[str, float] = field(default_factory=dict)
    monitor_type_mean: float = float("nan")
    # the promotion gate: the start's held-out figures, whether this round's policy was
    # promoted, and the promoted one after this round (-1: the start)
    start_accuracy: float = float("nan")
    start_by_type: dict[str, float] = field(default_factory=dict)
    promoted: bool = False
    fallen: dict[str, float] = field(default_factory=dict)  # types that fell too far to promote, by how much
    best_round: int = -1
    best_type_mean: float = float("nan")
    router_fit: dict[str, float] | None = None
    router_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    # the fused reward's lift over chance per group, and the groups it is not used on
    fused_lift: dict[str, float] = field(default_factory=dict)
    fused_lift_on: str = "public lists"  # or "policy samples" (AlignStageConfig.policy_lists_per_group)
    policy_lists: int = 0  # lists this refresh whose preferred answer the policy itself sampled (the lift is on them)
    policy_right: dict[str, float] = field(default_factory=dict)  # share of its samples right, per group
    groups_left_out: list[str] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    offenders: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: str | None = None


class AlignStage:
    """Runs the ALIGN stage's rounds on ``engine`` with ``reward`` (whose combiner is
    :class:`Routed` when a router is used); see the module docstring. ``on_promote(m)`` is
    called with the live policy being the newly promoted one (the start included): the
    place to export it."""

    def __init__(self, *, engine: GRPOEngine, reward: MixtureReward, pool: Sequence[Prompt],
                 monitor: Sequence[Prompt], config: AlignStageConfig = AlignStageConfig(),
                 preferences: PreferenceSet | None = None, router: Router | None = None,
                 log_path: Path | None = None, on_step: Callable[[StepReport], None] | None = None,
                 on_promote: Callable[[Measured], None] | None = None,
                 pool_groups: Sequence[str] | None = None, judge: Judge = exact_match,
                 answer_tokens: int = 4) -> None:
        if router is not None and preferences is None:
            raise ValueError("a router needs the public preference set to be fit on")
        if router is not None and not (isinstance(reward.combiner, Routed) and reward.combiner.router is router):
            raise ValueError("the reward must fuse with this router")
        if engine.checkpoint_dir is None or engine.checkpoint_every != 1:
            raise ValueError("the ALIGN stage checkpoints every step: give the engine a checkpoint_dir and "
                             "checkpoint_every=1")
        if pool_groups is not None and len(pool_groups) != len(pool):
            raise ValueError("pool_groups must name one group per prompt of the pool")
        if config.min_fused_lift is not None and (pool_groups is None or router is None):
            raise ValueError("min_fused_lift needs the router and the pool's groups")
        self.engine, self.reward, self.pool, self.monitor = engine, reward, list(pool), list(monitor)
        self.judge, self.answer_tokens = judge, answer_tokens  # the task's metric on the held-out monitor
        self.pool_groups = list(pool_groups) if pool_groups is not None else None
        self._group_of = ({p.prompt_id: g for p, g in zip(self.pool, self.pool_groups, strict=True)}
                          if self.pool_groups is not None else {})
        self.trusted: set[str] | None = None  # groups GRPO trains on this round (None: all)
        self._sampled: tuple[bool, ...] = ()  # per policy list: is its preferred answer a sample of the policy
        self.config, self.preferences, self.router = config, preferences, router
        self.log_path, self.on_step, self.on_promote = log_path, on_step, on_promote
        self.gate = PromotionGate(margin=config.promotion_margin, max_type_drop=config.promotion_max_type_drop)
        self.history: list[dict[str, float]] = []  # per finished round: reward level, monitor accuracy
        self.reports: list[StepReport] = []  # every step this process ran
        self.skipped_in_a_row = 0
        engine.extra_state = self._extra_state
        engine.restore_extra = self._restore_extra
        if config.left_out_beta > 0:
            engine.kl_anchor = self._left_out_anchor

    # -- checkpointed with every step ---------------------------------------------------------
    def _extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        tensors = {f"router.{k}": v for k, v in self.router.state_dict().items()} if self.router is not None else {}
        return tensors, {"history": self.history, "skipped_in_a_row": self.skipped_in_a_row,
                         "promotion": self.gate.to_json(),
                         "trusted": sorted(self.trusted) if self.trusted is not None else None}

    def _restore_extra(self, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
        if self.router is not None:
            state = {k[len("router."):]: v for k, v in tensors.items() if k.startswith("router.")}
            self.router.load_state_dict(state)  # strict: a checkpoint of another router is refused
        self.history = list(meta.get("history", []))  # type: ignore[call-overload]
        self.skipped_in_a_row = int(meta.get("skipped_in_a_row", 0))  # type: ignore[call-overload]
        if isinstance(meta.get("promotion"), dict):
            self.gate = PromotionGate.from_json(meta["promotion"])  # type: ignore[arg-type]
        trusted = meta.get("trusted")
        self.trusted = {str(g) for g in trusted} if isinstance(trusted, list) else None

    def resume(self) -> int:
        """Load the newest checkpoint (policy, optimiser, router, counters); the step reached."""
        return self.engine.resume()

    # -- the router -----------------------------------------------------------------------
    def mix_preferences_into_next_step(self, result: AlignRoundResult) -> None:
        """Send the public preference set inside the next GRPO step's batch, and refit the
        router (continuing from its weights) on the clients' scores of it before that step's
        own items are fused. Mixed in, with random ids and order and groups of the step's
        size, a client cannot answer the router's items differently from the policy's
        (issue 23 item 1)."""
        if self.router is None or self.preferences is None:
            return
        router, prefs, steps, seed = self.router, self.preferences, self.config.router_steps, self.engine.step_count
        sampled = self._policy_lists(result)
        curated = len(prefs.prompts)
        if sampled is not None:
            prefs = joined(prefs, sampled)
        layout = PreferenceItems.of(prefs, group_size=self.engine.config.group_size)

        def on_scores(raw: torch.Tensor, answered: torch.Tensor) -> None:
            data = layout.scores(raw, answered, self.reward.prompt_features(prefs.prompts))
            try:
                fit = fit_router(router, data, steps=steps, seed=seed)
            except ValueError as exc:  # nobody scored a pair: the router stays as it was
                log.warning("router not refit this round: %s", exc)
                return
            result.router_fit = dataclasses.asdict(fit)
            if sampled is not None:  # lists whose preferred answer the policy itself sampled
                judged = torch.tensor([curated + i for i, own in enumerate(self._sampled) if own], dtype=torch.long)
            else:
                judged = torch.arange(curated)
            groups = [prefs.groups[i] for i in judged.tolist()]
            lift = lift_by_group(router, data.subset(judged), groups, layout.same_group(prefs)[judged]) \
                if len(judged) else {}
            # a lift measured on too few lists is no verdict: that group is not trusted
            result.fused_lift = {g: v for g, v in lift.items() if groups.count(g) >= MIN_LISTS or sampled is None}
            result.fused_lift_on = "policy samples" if sampled is not None else "public lists"
            floor = self.config.min_fused_lift
            if floor is not None:
                trusted = {g for g, lift in result.fused_lift.items() if lift >= floor}
                if trusted & set(self.pool_groups or ()):
                    self.trusted = trusted
                    result.groups_left_out = sorted(set(self.pool_groups or ()) - trusted)
                elif sampled is not None:
                    # Judged on the policy's own samples, the fused reward ranks none of its
                    # groups well: GRPO would learn only its bias (measured on scenes: every
                    # type fell). The round's remaining steps pass without an update.
                    self.trusted = set()
                    result.groups_left_out = sorted(set(self.pool_groups or ()))
                else:  # no group to trust on the curated lists: leave the pool whole, the promotion gate decides
                    self.trusted = None

        self.reward.mix_in = MixIn(prompts=layout.prompts, completions=layout.completions, on_scores=on_scores)

    def _policy_lists(self, result: AlignRoundResult) -> PreferenceSet | None:
        """Lists from the policy's own samples on ``policy_lists_per_group`` public
        preference prompts of each group (a seeded draw per step), judged by the task's
        metric against their public references (:func:`policy_lists`); None when off or
        when the policy got every sample right."""
        k = self.config.policy_lists_per_group
        if k == 0 or self.preferences is None:
            return None
        rng = random.Random(f"policy-lists:{self.engine.config.seed}:{self.engine.step_count}")
        by_group: dict[str, list[Prompt]] = {}
        for p, g in zip(self.preferences.prompts, self.preferences.groups, strict=True):
            if p.answer is not None:
                by_group.setdefault(g, []).append(p)
        prompts = [p for g in sorted(by_group) for p in rng.sample(by_group[g], min(k, len(by_group[g])))]
        if not prompts:
            return None
        started = time.perf_counter()
        completions = self.engine.sample(prompts)
        lists, self._sampled, result.policy_right = policy_lists(prompts, completions,
                                                                 group_size=self.engine.config.group_size,
                                                                 judge=self.judge)
        result.policy_lists = sum(self._sampled)
        log.info("ALIGN: %d lists from the policy's own samples (%d with a right sample) on %d public prompts "
                 "(%.1f s); right per group %s", len(self._sampled), result.policy_lists, len(prompts),
                 time.perf_counter() - started, result.policy_right)
        return lists

    def _trusted_reward(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        """The fused reward, flat on the prompts of groups the refresh does not trust (no
        advantage from it; only the engine's answer-form check ranks their completions):
        the step that carries the refresh drew its prompts before the verdict, and anchored
        steps draw them on purpose (:meth:`_anchored`)."""
        rewards = self.reward(prompts, completions)
        if self.trusted is None or self.pool_groups is None:
            return rewards
        return [r if self._group_of.get(p.prompt_id) in self.trusted else 0.0
                for p, r in zip(prompts, rewards, strict=True)]

    def _pool(self) -> list[Prompt]:
        """The prompts GRPO draws from: the pool, less the groups the fused reward cannot
        judge once the router has been fit this round, unless an anchor holds them
        (:meth:`_anchored`); the round's first step, whose items carry the preference
        lists, draws from the whole pool."""
        if self.trusted is None or self.pool_groups is None:
            return self.pool
        if self._anchored():
            return self.pool
        return [p for p, g in zip(self.pool, self.pool_groups, strict=True) if g in self.trusted]

    def _left_out_anchor(self, prompt: Prompt) -> float:
        """The KL weight a prompt adds to GRPO's β: ``left_out_beta`` on a prompt of a group
        the refresh does not trust, none elsewhere (or before any verdict)."""
        if self.trusted is None:
            return 0.0
        group = self._group_of.get(prompt.prompt_id)
        return self.config.left_out_beta if group is not None and group not in self.trusted else 0.0

    def _anchored(self) -> bool:
        """Whether the types left out stay in the steps with a flat reward, so that only an
        anchor acts on them: the KL to the start (β > 0, or ``left_out_beta`` > 0 on them
        alone, once some type is trusted), or the
        task's answer-form check (the engine's ``answer_form``), which ranks their completions
        out of form last without any label. Measured on scenes: trained on colour and count
        alone, the policy lost position 0.26 -> 0.09 within ten steps; trained on count and
        describe alone, it answered "the triangle is yellow triangle ." to colour questions
        (colour 0.56 -> 0.10 in 40 steps)."""
        kl = self.engine.config.loss.beta > 0 or self.config.left_out_beta > 0
        return (bool(self.trusted) and kl) or self.engine.answer_form is not None

    def router_weights(self) -> dict[str, dict[str, float]]:
        """Mean routing weight per client and question type on the preference prompts."""
        if self.router is None or self.preferences is None:
            return {}
        feats = self.reward.prompt_features(self.preferences.prompts)
        with torch.no_grad():
            w = self.router.weights(feats, torch.ones(len(feats), self.router.clients, dtype=torch.bool))
        return weights_by_group(w, self.preferences.groups, [c.name for c in self.reward.clients])

    # -- one round ------------------------------------------------------------------------
    def run_round(self, round_: int) -> AlignRoundResult:
        """Run (or finish, after a restart) round ``round_`` of the stage."""
        started = time.perf_counter()
        cfg, engine = self.config, self.engine
        result = AlignRoundResult(round=round_)
        first, target = round_ * cfg.steps_per_round, (round_ + 1) * cfg.steps_per_round
        if engine.step_count < first:
            raise ValueError(f"round {round_} starts at step {first}; the engine is at step {engine.step_count}")
        self.reward.new_round()
        if engine.step_count == 0 and self.gate.start is None and self.monitor:
            ev = evaluate_policy(engine.policy, self.monitor, judge=self.judge,
                                 max_new_tokens=self.answer_tokens)
            self.gate.measure_start(Measured(round=-1, step=0, accuracy=ev.accuracy, by_type=ev.by_type))
            log.info("ALIGN start: held-out accuracy %.3f, type-averaged %.3f %s", ev.accuracy,
                     self.gate.start.type_mean, ev.by_type)  # type: ignore[union-attr]
            if self.on_promote is not None:
                self.on_promote(self.gate.start)  # type: ignore[arg-type]
        if engine.step_count == first:
            if self.trusted is not None and not self.trusted:
                self.trusted = None  # the step carrying the refresh draws from the whole pool
            self.mix_preferences_into_next_step(result)
        logs_before = len(self.reward.logs)
        while engine.step_count < target:
            self.reward.step = engine.step_count
            pool = self._pool()
            if not pool:  # nothing the fused reward can judge this round: count the step, learn nothing
                report = engine.pass_step("the fused reward ranks no group's samples well enough")
                self.reports.append(report)
                result.steps += 1
                result.passed += 1
                continue
            report = engine.step(engine.sample_prompts(pool), self._trusted_reward)  # checkpoints the step
            self.reports.append(report)
            result.steps += 1
            if self.on_step is not None:
                self.on_step(report)
            if report.skipped and self.trusted is not None and not self.trusted:
                result.passed += 1  # the refresh trusted no group: its own step learnt nothing, as meant
            elif report.skipped:
                result.skipped += 1
                self.skipped_in_a_row += 1
                if self.skipped_in_a_row >= cfg.max_skipped_steps:
                    result.stopped = (f"{self.skipped_in_a_row} steps in a row were skipped (last: {report.skipped}); "
                                      "the ALIGN stage ends here")
                    break
            else:
                self.skipped_in_a_row = 0
                self._check_within(result, first, target)
        logs = self.reward.logs[logs_before:]
        for entry in logs:
            for name in entry.left_out:
                result.left_out[name] = result.left_out.get(name, 0) + 1
        levels = [sum(e.raw_mean.values()) / len(e.raw_mean) for e in logs if e.raw_mean]
        result.reward_level = sum(levels) / len(levels) if levels else float("nan")
        result.offenders = self.reward.offenders()
        result.router_weights = self.router_weights()
        if self.monitor:
            ev = evaluate_policy(engine.policy, self.monitor, judge=self.judge,
                                 max_new_tokens=self.answer_tokens)
            result.monitor_accuracy, result.monitor_by_type = ev.accuracy, ev.by_type
            measured = Measured(round=round_, step=engine.step_count, accuracy=ev.accuracy, by_type=ev.by_type)
            result.monitor_type_mean = measured.type_mean
            if self.gate.start is not None:
                verdict = self.gate.consider(measured)
                result.promoted, result.fallen = result.promoted or verdict.promoted, verdict.fallen
                if verdict.promoted and self.on_promote is not None:  # this very policy, not one inside the round
                    self.on_promote(measured)
        if self.gate.start is not None and self.gate.best is not None:
            result.start_accuracy, result.start_by_type = self.gate.start.accuracy, dict(self.gate.start.by_type)
            result.best_round, result.best_type_mean = self.gate.best.round, self.gate.best.type_mean
        if result.stopped is None:
            result.stopped = self._hacking(result)
        result.seconds = time.perf_counter() - started
        self.history.append({"reward_level": result.reward_level, "monitor_accuracy": result.monitor_accuracy})
        if engine.step_count > 0:
            # The round's verdicts (history, promotion) came after its last step's checkpoint:
            # checkpoint again so that a restart knows them.
            engine.save()
        self._write(result)
        return result

    def _check_within(self, result: AlignRoundResult, first: int, target: int) -> None:
        """Every ``monitor_every`` steps inside a round (not at its end, which the round's
        own measurement covers): measure on the held-out monitor and promote through the
        gate. A promotion is checkpointed at once, so a restart knows what was exported."""
        every, step = self.config.monitor_every, self.engine.step_count
        if not every or not self.monitor or self.gate.start is None or (step - first) % every or step >= target:
            return
        ev = evaluate_policy(self.engine.policy, self.monitor, judge=self.judge, max_new_tokens=self.answer_tokens)
        measured = Measured(round=result.round, step=step, accuracy=ev.accuracy, by_type=ev.by_type)
        verdict = self.gate.consider(measured)
        result.checks.append({"step": step, "type_mean": round(measured.type_mean, 4), "promoted": verdict.promoted,
                              **{f"by_type.{t}": round(v, 4) for t, v in ev.by_type.items()}})
        log.info("ALIGN step %d: held-out type-averaged %.3f %s%s", step, measured.type_mean, ev.by_type,
                 " (promoted)" if verdict.promoted else "")
        if verdict.promoted:
            result.promoted = True
            if self.on_promote is not None:
                self.on_promote(measured)
            self.engine.save()

    def _hacking(self, result: AlignRoundResult) -> str | None:
        """Held-out accuracy fell ``hacking_rounds`` rounds in a row, by ``hacking_min_drop``
        or more in all. Only what the server measures itself counts: the clients' raw
        score level is theirs to move (an offset, or a value that overflows, once blinded
        a rule that needed the reward to rise: issue 23 item 2). It is logged, not trusted."""
        series = [*(h["monitor_accuracy"] for h in self.history), result.monitor_accuracy]
        n = self.config.hacking_rounds
        if len(series) < n + 1:
            return None
        window = series[-(n + 1):]
        if not all(math.isfinite(a) for a in window):
            return None  # no held-out set: nothing the server can judge by
        if all(b < a for a, b in zip(window, window[1:], strict=False)) and \
                window[0] - window[-1] >= self.config.hacking_min_drop:
            return (f"reward hacking suspected: held-out accuracy fell for {n} rounds in a row "
                    f"({window[0]:.3f} -> {window[-1]:.3f}) while the policy trained on the fused reward; the "
                    "ALIGN stage stops")
        return None

    def _write(self, result: AlignRoundResult) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), "phase": "align", **dataclasses.asdict(result)},
                                sort_keys=True, default=float) + "\n")
