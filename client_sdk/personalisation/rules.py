"""TAP's two rules as pure functions (arXiv 2509.26524; lee3296/TAP).

1. **Replacement**: a personal component is replaced by the federation's version when
   that lowers the local validation loss by more than a margin,
   ``L_global + margin < L_personal`` (TAP's code: margin 0.01, strict inequality, so a
   tie at the margin keeps the personal component).
2. **Distillation**: ``L = L_task + λ · τ² · KL(p_T ‖ p_S)``, here over the *pairwise
   preference* probabilities of a reward model, ``p = σ(margin / τ)`` with
   ``margin = r(chosen) − r(rejected)`` (a Bernoulli per pair; TAP distils class
   softmaxes, a reward model's output is this one probability).

The replacement decision reads private validation pairs, so the client makes it with
the Gaussian mechanism (:func:`replacement_statistic`): per pair the loss difference is
clipped to ``[−C, C]``, the sum gets N(0, (σC)²) noise. Adding or removing one pair
moves the sum by at most C, so each decision is a Gaussian mechanism of noise
multiplier σ, which the client's accountant composes with everything else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def should_replace(*, global_loss: float, personal_loss: float, margin: float) -> bool:
    """TAP's rule: replace when ``global_loss + margin < personal_loss`` (strict)."""
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    return global_loss + margin < personal_loss


def pair_losses(margins: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss per pair, ``−log σ(margin)``; shape (n,) -> (n,)."""
    return -F.logsigmoid(margins)


def replacement_statistic(personal_losses: torch.Tensor, global_losses: torch.Tensor, *, clip: float,
                          noise: float) -> float:
    """Mean over pairs of ``clip(L_personal − L_global, −C, C)`` plus ``noise / n``.

    ``noise`` is one draw of N(0, (σC)²) supplied by the caller (from the CSPRNG in
    production); dividing the noisy sum by n keeps the statistic on the loss scale, so
    ``should_replace(global_loss=0, personal_loss=statistic, margin)`` is the noisy
    version of TAP's rule. Shapes: (n,), (n,)."""
    if personal_losses.shape != global_losses.shape or personal_losses.ndim != 1 or len(personal_losses) == 0:
        raise ValueError("need two equal, non-empty vectors of per-pair losses")
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    diff = (personal_losses - global_losses).clamp(-clip, clip).double()
    return float((diff.sum() + noise) / len(diff))


def preference_kl(teacher_margins: torch.Tensor, student_margins: torch.Tensor, *,
                  temperature: float) -> torch.Tensor:
    """Per pair ``KL(Bern(σ(m_T/τ)) ‖ Bern(σ(m_S/τ)))``; shapes (n,), (n,) -> (n,).

    Written with log-sigmoids, so it stays finite for large margins."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    t, s = teacher_margins / temperature, student_margins / temperature
    log_pt, log_1mpt = F.logsigmoid(t), F.logsigmoid(-t)
    log_ps, log_1mps = F.logsigmoid(s), F.logsigmoid(-s)
    return log_pt.exp() * (log_pt - log_ps) + log_1mpt.exp() * (log_1mpt - log_1mps)


def distillation_loss(student_margins: torch.Tensor, teacher_margins: torch.Tensor, *, weight: float,
                      temperature: float) -> torch.Tensor:
    """TAP's stage-2 loss, mean over pairs: ``BT(m_S) + λ τ² KL(p_T ‖ p_S)``.

    The teacher's margins carry no gradient. A mean of per-pair terms, so DP-SGD's
    per-pair clipping still bounds each pair's influence. Shapes (n,), (n,) -> ()."""
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"distillation weight must be finite and >= 0, got {weight}")
    kl = preference_kl(teacher_margins.detach(), student_margins, temperature=temperature)
    return (pair_losses(student_margins) + weight * temperature ** 2 * kl).mean()
