"""Personalisation's settings and its privacy pre-flight.

Both stages read private pairs, so both are releases in the client's ledger:
- stage 1: one Gaussian mechanism per shared component (noise multiplier
  ``decision_noise``, sample rate 1: every validation pair), see :mod:`.rules`, and one
  more after stage 2 that keeps the distilled model only if its validation accuracy
  beats the stage-1 model's by the margin (distillation can hurt: measured, one client's
  held-out accuracy 0.67 -> 0.59 after 30 steps at the reserve's noise);
  all are charged in one entry before stage 1;
- stage 2: DP-SGD distillation, ``distill_steps`` Poisson-sampled steps whose noise is
  calibrated so that the whole ledger ends at or below the client's ε budget. The budget
  kept back from federated training (``PrivacyBudget.personalisation_reserve``) is what
  makes room for it.
The plan is computed before any data is read; a plan that does not fit is refused with
:class:`~fedsecure.errors.PrivacyBudgetExceeded` and nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedsecure.errors import PrivacyBudgetExceeded
from fedsecure.privacy.accountant import Step, calibrate_noise, epsilon
from fedsecure.privacy.budget import PrivacyBudget


# Personalisation spends the budget to its end, so it aims a little below it: the
# auditor's independent accountant (dp-accounting, other RDP orders) recomputed up to
# 0.09 % more than Opacus's for the demo's ledgers (8.0032 for a ledger at 7.996).
ACCOUNTING_HEADROOM = 0.005


@dataclass(frozen=True)
class PersonalisationSettings:
    """TAP's knobs (margin, λ, τ, steps) and the privacy of the replacement decisions.

    ``resolution`` is the standard deviation of the decision noise on the *mean* loss
    difference that a client accepts: with noise σ·C on the sum, a validation split needs
    at least ``σ·C / resolution`` pairs (:attr:`min_validation_pairs`); fewer cannot
    tell a real difference from the noise, and personalisation is refused."""

    margin: float = 0.01           # TAP's code
    distill_steps: int = 30
    distill_weight: float = 1.0    # λ
    temperature: float = 1.0       # τ
    learning_rate: float = 0.003   # a tenth of training's: measured least harmful under the reserve's noise
    batch_size: int = 64
    # σ of each decision: 4 costs ~0.3 (3 queries) to ~0.5 (5) on top of 7.2 at δ=1e-5 and
    # leaves 30 distillation steps at σ≈1; 6 was cheaper but too coarse (bench personalise).
    decision_noise: float = 4.0
    loss_clip: float = 1.0         # C: a pair's loss difference is clipped to [-C, C]
    resolution: float = 0.05

    def __post_init__(self) -> None:
        # Refused up front (docs: bad input -> clear error, nothing replaced).
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"replacement margin must be finite and >= 0, got {self.margin}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature τ must be finite and > 0, got {self.temperature}")
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise ValueError(f"distillation weight λ must be finite and >= 0, got {self.distill_weight}")
        if self.distill_steps < 0 or self.batch_size < 1:
            raise ValueError("distill_steps must be >= 0 and batch_size >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        for name in ("decision_noise", "loss_clip", "resolution"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")

    @property
    def min_validation_pairs(self) -> int:
        """The fewest validation pairs a decision is made on (σ·C / resolution)."""
        return math.ceil(self.decision_noise * self.loss_clip / self.resolution)


@dataclass(frozen=True)
class PersonalisationPlan:
    """The releases personalisation will make, as accountant steps, and ε after each."""

    decisions: Step | None      # (σ, 1.0, components + 1 if distilling); None: nothing to decide
    distillation: Step | None   # (σ, q, steps); None: no distillation asked
    epsilon_after_decisions: float
    epsilon_after: float


def plan_personalisation(*, history: Sequence[Step], budget: PrivacyBudget, accountant: str, components: int,
                         train_pairs: int, settings: PersonalisationSettings,
                         decisions_done: bool = False, distillation_done: bool = False) -> PersonalisationPlan:
    """The releases of both stages given the ledger's ``history``; raises
    PrivacyBudgetExceeded (before any data is read) when they do not fit the budget.
    ``decisions_done`` / ``distillation_done``: that stage's release is already in
    ``history`` (a resumed personalisation); it is not planned again."""
    target = budget.epsilon * (1.0 - ACCOUNTING_HEADROOM)
    decisions: Step | None = None
    queries = components + (1 if settings.distill_steps > 0 else 0)  # + keep-or-drop the distilled model
    if queries > 0 and not decisions_done:
        decisions = (settings.decision_noise, 1.0, queries)
    after_decisions = [*history, *([decisions] if decisions else [])]
    eps_decisions = epsilon(after_decisions, delta=budget.delta, kind=accountant)
    if eps_decisions > target:
        raise PrivacyBudgetExceeded(
            f"the {queries} replacement decisions would bring ε to {eps_decisions:.3f} > budget "
            f"{budget.epsilon:g}; spent so far {epsilon(history, delta=budget.delta, kind=accountant):.3f} "
            f"(the personalisation reserve is {budget.personalisation_reserve:.0%} of the budget)")
    distillation: Step | None = None
    eps_after = eps_decisions
    if settings.distill_steps > 0 and not distillation_done:
        if train_pairs < settings.batch_size:
            raise ValueError(f"distillation needs at least one batch of {settings.batch_size} training pairs, "
                             f"this client has {train_pairs}")
        q = settings.batch_size / train_pairs
        try:
            sigma = calibrate_noise(after_decisions, sample_rate=q, steps=settings.distill_steps, delta=budget.delta,
                                    target_epsilon=target, kind=accountant)
        except PrivacyBudgetExceeded as exc:
            raise PrivacyBudgetExceeded(
                f"distillation ({settings.distill_steps} steps) does not fit what is left of the budget: {exc}; "
                f"the personalisation reserve is {budget.personalisation_reserve:.0%} of ε={budget.epsilon:g}") from exc
        distillation = (sigma, q, settings.distill_steps)
        eps_after = epsilon([*after_decisions, distillation], delta=budget.delta, kind=accountant)
        if eps_after > target:  # calibration's own tolerance, never trusted blindly
            raise PrivacyBudgetExceeded(f"distillation would bring ε to {eps_after:.3f} > budget {budget.epsilon:g}")
    return PersonalisationPlan(decisions=decisions, distillation=distillation,
                               epsilon_after_decisions=eps_decisions, epsilon_after=eps_after)
