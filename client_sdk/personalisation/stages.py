"""The two stages on reward models: replacement of shared components by margin, then
DP distillation of the federation's model into the personal one.

A *component* is one aggregation group the client holds and the federation published
(attention adapters per stack; the MLP adapters of the client's kind per stack, where
they were aggregated): exactly what has a federation version. Heads, the fusion layer and
gates have none and stay personal.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedsecure.models.encoding import EncodedPairs
from fedsecure.models.groups import ATTENTION_FAMILY, mlp_family
from fedsecure.models.reward import RewardModel
from fedsecure.privacy.noise import secure_standard_normal

from client_sdk.adapter_exchange import apply_aggregate, family_parameters, group_of
from client_sdk.dp_training import DPSettings, DPStepper, check_changed, margins, trainable_parameters
from client_sdk.outcomes import Aggregate
from client_sdk.personalisation.plan import PersonalisationSettings
from client_sdk.personalisation.rules import distillation_loss, pair_losses, replacement_statistic, should_replace

Noise = Callable[[float], float]
"""One draw of N(0, std²) for a decision, given std."""


def secure_noise(std: float) -> float:
    """N(0, std²) from the OS CSPRNG (fedsecure.privacy.noise), the production default."""
    return float(secure_standard_normal(1)[0]) * std


def components(model: RewardModel, published: Sequence[str]) -> dict[str, list[str]]:
    """Component (group name) -> its parameter names, for the groups of ``model`` that
    the federation published; in name order, the order decisions are made in."""
    out: dict[str, list[str]] = {}
    for family in (ATTENTION_FAMILY, mlp_family(model.config.kind)):
        for name in family_parameters(model, family):
            group = group_of(model, family, name)
            if group in published:
                out.setdefault(group, []).append(name)
    return dict(sorted(out.items()))


def federation_model(personal: RewardModel, aggregates: Mapping[str, Aggregate]) -> RewardModel:
    """The personal model with every shared component at its federation version (the
    published mean, taken whole) — TAP's teacher. Heads and gates stay personal."""
    teacher = copy.deepcopy(personal)
    for group, aggregate in aggregates.items():
        family = ATTENTION_FAMILY if group.startswith(f"{ATTENTION_FAMILY}.") else mlp_family(personal.config.kind)
        apply_aggregate(teacher, aggregate, family=family, coefficient=1.0)
    return teacher


@dataclass(frozen=True)
class Decision:
    """One component's replacement decision: the noisy mean loss difference it was made
    on (personal − global; DP) and the outcome. Exact losses are never kept."""

    component: str
    statistic: float
    margin: float
    replaced: bool


def _copy_component(target: RewardModel, source: RewardModel, names: Sequence[str]) -> None:
    src = dict(source.named_parameters())
    dst = dict(target.named_parameters())
    with torch.no_grad():
        for n in names:
            dst[n].copy_(src[n])


def replace_components(*, personal: RewardModel, teacher: RewardModel, parts: Mapping[str, list[str]],
                       validation: EncodedPairs, settings: PersonalisationSettings,
                       noise: Noise = secure_noise) -> tuple[RewardModel, list[Decision]]:
    """Stage 1, greedy in component order: swap one component to its federation version
    and keep the swap when the noisy validation statistic clears the margin (TAP's rule,
    :func:`~.rules.should_replace`). Returns a new model; ``personal`` is not changed."""
    if len(validation) < settings.min_validation_pairs:
        raise ValueError(f"validation split has {len(validation)} pairs, fewer than the "
                         f"{settings.min_validation_pairs} needed to decide")
    model = copy.deepcopy(personal)
    current = pair_losses(margins(model, validation))
    decisions = []
    for component, names in parts.items():
        candidate = copy.deepcopy(model)
        _copy_component(candidate, teacher, names)
        losses = pair_losses(margins(candidate, validation))
        stat = replacement_statistic(current, losses, clip=settings.loss_clip,
                                     noise=noise(settings.decision_noise * settings.loss_clip))
        replaced = should_replace(global_loss=0.0, personal_loss=stat, margin=settings.margin)
        if replaced:
            model, current = candidate, losses
        decisions.append(Decision(component=component, statistic=stat, margin=settings.margin, replaced=replaced))
    return model, decisions


def ranked_right(margins: torch.Tensor) -> torch.Tensor:
    """Per pair 1 if the chosen answer ranks first, 0.5 on a tie, 0 otherwise; (n,) -> (n,)."""
    return (margins > 0).double() + 0.5 * (margins == 0).double()


def keep_distilled(*, replaced: RewardModel, distilled: RewardModel, validation: EncodedPairs,
                   settings: PersonalisationSettings, noise: Noise = secure_noise) -> Decision:
    """After stage 2, one more DP decision: keep the distilled model only when its pairwise
    accuracy on the validation split beats the stage-1 model's by the margin.

    Accuracy, not loss (TAP's stage-1 rule): measured, distillation lowered the clipped
    validation loss of over-confident models while costing held-out accuracy (one client
    0.771 -> 0.678), and accuracy is what a reward model is judged on. Each pair's
    difference lies in [−1, 1], so the same Gaussian mechanism (clip C) covers it."""
    stat = replacement_statistic(ranked_right(margins(distilled, validation)),
                                 ranked_right(margins(replaced, validation)), clip=settings.loss_clip,
                                 noise=noise(settings.decision_noise * settings.loss_clip))
    return Decision(component="distillation", statistic=stat, margin=settings.margin,
                    replaced=should_replace(global_loss=0.0, personal_loss=stat, margin=settings.margin))


@dataclass(frozen=True)
class DistillResult:
    """What stage 2 did."""

    steps: int
    loss_first: float
    loss_last: float
    parameters_changed: int


def distil(*, student: RewardModel, teacher: RewardModel, data: EncodedPairs, settings: PersonalisationSettings,
           dp: DPSettings, noise_multiplier: float, sample_rate: float) -> DistillResult:
    """Stage 2: DP-SGD on ``data`` with TAP's loss (task + λτ²·KL to the teacher's
    preference probabilities); changes ``student`` in place. The teacher's margins are
    computed once, without gradients; the caller has already written the ledger entry."""
    teacher_margins = margins(teacher, data)
    before = {n: p.detach().clone() for n, p in trainable_parameters(student)}

    def loss_fn(margins: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return distillation_loss(margins, teacher_margins[idx], weight=settings.distill_weight,
                                 temperature=settings.temperature)

    losses: list[float] = []
    student.train()
    dp = dataclasses.replace(dp, batch_size=settings.batch_size)
    with DPStepper(model=student, settings=dp, noise_multiplier=noise_multiplier,
                   learning_rate=settings.learning_rate, sample_rate=sample_rate) as stepper:
        for _ in range(settings.distill_steps):
            loss = stepper.step(data, loss_fn)
            if loss is not None:
                losses.append(loss)
    changed = check_changed(student, before) if settings.distill_steps else 0
    nan = float("nan")
    return DistillResult(steps=settings.distill_steps, loss_first=losses[0] if losses else nan,
                         loss_last=losses[-1] if losses else nan, parameters_changed=changed)
