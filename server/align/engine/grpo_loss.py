"""The GRPO objective (DeepSeekMath, Shao et al. 2024), as pure tensor functions so it can
be checked by hand: group-relative advantages, the clipped ratio objective and a per-token
KL penalty to the reference with the k3 estimator.

Shapes: ``B = prompts × G`` completions, ``T`` completion tokens; ``mask`` marks real
tokens (1) versus padding after EOS (0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Averaging = Literal["token", "sequence"]


@dataclass(frozen=True)
class GRPOLossConfig:
    """Clip range (ε, optional ε_high for DAPO-style asymmetric clipping), KL weight β,
    advantage std epsilon, whether advantages are divided by the group's reward std
(``scale_rewards``; off is Dr. GRPO's choice, Liu et al. 2025, "Understanding R1-Zero-Like
Training": dividing by the std turns a judge's tiny, biased margins on a group into full-size
updates), and how token losses are averaged:

    - ``"token"``: sum over every real token of the batch / number of real tokens (long
      completions weigh more; the DAPO / TRL-"dapo" choice);
    - ``"sequence"``: mean over each completion's tokens, then mean over completions (the
      original GRPO paper's choice; every completion weighs the same).

    ``best_nll`` weighs a second term: the negative log-likelihood of the best completion of
    every group whose rewards differ (:func:`best_of_groups`), per group — reward-ranked
    fine-tuning on the policy's own samples (RAFT, Dong et al. 2023; expert iteration).
    Why: GRPO's gradient on an answer vanishes as its probability does (it is mode-seeking),
    so on a question type whose start cannot yet tell its answers apart it collapses onto
    the commonest one and stops sampling the others (issue 24: on a question type of two
    answers, 96% of samples became the commoner one); the likelihood of the best sample
    keeps a full-size gradient toward a rare right answer. It reads only the rewards, so it
    serves a fused reward as it serves an exact-match one. 0: plain GRPO.
    """

    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.04
    std_eps: float = 1e-4
    scale_rewards: bool = True
    averaging: Averaging = "sequence"
    best_nll: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.epsilon < 1 or (self.epsilon_high is not None and not 0 < self.epsilon_high < 10):
            raise ValueError("clip ranges must be positive (epsilon < 1)")
        if self.beta < 0 or self.std_eps <= 0 or self.best_nll < 0:
            raise ValueError("beta and best_nll must be >= 0 and std_eps > 0")
        if self.averaging not in ("token", "sequence"):
            raise ValueError("averaging is 'token' or 'sequence'")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) rewards viewed as (B / G, G), refused unless they are finite whole groups."""
    if rewards.ndim != 1 or rewards.numel() % group_size or group_size < 2:
        raise ValueError(f"expected a flat reward vector of whole groups of {group_size} (>= 2)")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, std_eps: float = 1e-4, *,
                     scale: bool = True) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps) per completion, or r - mean_group when not
    ``scale`` (Dr. GRPO). A group whose rewards are all equal gets advantage 0 for every
    member: it carries no preference, hence no gradient."""
    grouped = _grouped(rewards, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)  # unbiased, as in the paper's implementations
    adv = (grouped - mean) / (std + std_eps) if scale else grouped - mean
    adv = torch.where(std > 0, adv, torch.zeros_like(adv))
    return adv.reshape(-1)


def rank_unfinished_last(rewards: torch.Tensor, finished: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rewards (B,) with every completion that ran out of tokens before its end token put
    below every finished completion of its group (by the finished ones' range, or 1 when
    they are equal); a group with no finished completion is left as it is.

    Why: a reward model judges answers, and text that never ends is not one; measured on
    the free-text task (issue 25), the clients' fused reward preferred "there are two two
    two …" to the right sentence, and 40 GRPO steps took the policy's count accuracy from
    0.77 to 0.04. Like DAPO's overlong filtering (Yu et al. 2025, §3.4), but a penalty
    rather than a mask, so such a completion is made less likely, not just ignored."""
    if rewards.shape != finished.shape or rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError("rewards and finished must be flat vectors of whole groups")
    grouped, done = rewards.view(-1, group_size).clone(), finished.view(-1, group_size).bool()
    for g in range(grouped.shape[0]):
        ok = grouped[g][done[g]]
        if 0 < ok.numel() < group_size:
            spread = float(ok.max() - ok.min())
            grouped[g][~done[g]] = ok.min() - (spread if spread > 0 else 1.0)
    return grouped.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π || π_ref): exp(r) - r - 1 with r = ref - logp (>= 0,
    unbiased, exactly 0 where the policy equals the reference)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def best_of_groups(rewards: torch.Tensor, group_size: int, *, judged: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool: the first completion with the highest reward of each group whose rewards
    differ (a group of equal rewards has no best: it says nothing of which answer is right).
    Give it the rewards after :func:`rank_unfinished_last`, so an unfinished completion is
    never chosen over a finished one, and the judge's own rewards as ``judged`` (before
    that ranking): only a group whose *judged* rewards differ has a best.

    Why ``judged``: the ranking separates answers from non-answers, never a right answer
    from a wrong one. A group the judge scored flat (a question type whose reward is not
    trusted, or an exact-match group with no right sample) would otherwise get as "best"
    whichever answer came first, and its likelihood term would train the policy on an
    arbitrary — for exact match, a wrong — answer of its own (issue 24: in the demo, shape
    left to a flat reward fell 0.57 -> 0.37 on the test in 80 steps)."""
    grouped = _grouped(rewards, group_size)
    said = grouped if judged is None else _grouped(judged, group_size)
    if said.shape != grouped.shape:
        raise ValueError("judged must be (B,) like rewards")
    differ = said.max(dim=1).values > said.min(dim=1).values
    best = torch.zeros_like(grouped, dtype=torch.bool)
    best[torch.arange(grouped.shape[0]), grouped.argmax(dim=1)] = differ
    return best.view(-1)


def best_nll_term(logp: torch.Tensor, mask: torch.Tensor, best: torch.Tensor, group_size: int,
                  lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token negative log-likelihood of each ``best`` completion, summed and divided by
    the number of groups in the batch (a group without a best adds 0), so the term of a
    batch split into whole-group chunks is the chunks' completion-weighted sum. ``lengths``
    (B,), each completion's token count clamped to >= 1, saves recounting the mask."""
    if best.shape != logp.shape[:1] or logp.shape[0] % group_size:
        raise ValueError("best must be (B,) over whole groups")
    if lengths is None:
        lengths = mask.sum(dim=1).clamp(min=1.0)
    per_completion = -(logp * mask).sum(dim=1) / lengths
    return (per_completion * best.to(logp.dtype)).sum() / (logp.shape[0] // group_size)


def grpo_loss(*, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, config: GRPOLossConfig,
              best: torch.Tensor | None = None, group_size: int | None = None,
              kl_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise and diagnostics (mean KL, clipped fraction, the best
    completions' NLL). ``best`` and ``group_size`` are needed when ``config.best_nll`` > 0
    (:func:`best_of_groups`). ``kl_weight`` (B,), when given, is each completion's KL
    weight in place of ``config.beta``: a caller can hold some prompts near the reference
    (an anchor) while the others learn freely."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape or advantages.shape != logp.shape[:1]:
        raise ValueError("logp, old_logp and mask must be (B, T) and advantages (B,)")
    if kl_weight is not None and (kl_weight.shape != advantages.shape or bool((kl_weight < 0).any())):
        raise ValueError("kl_weight must be (B,) and >= 0")
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    high = config.epsilon_high if config.epsilon_high is not None else config.epsilon
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - config.epsilon, 1.0 + high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(logp)
    weight = config.beta if kl_weight is None else kl_weight.to(logp.dtype).unsqueeze(1)
    if (config.beta > 0) if kl_weight is None else bool((kl_weight > 0).any()):
        if ref_logp is None:
            raise ValueError("a KL weight > 0 needs the reference log-probabilities")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + weight * kl
    lengths = mask.sum(dim=1).clamp(min=1.0)
    if config.averaging == "token":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        loss = ((per_token * mask).sum(dim=1) / lengths).mean()
    nll = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if config.best_nll > 0:
        if best is None or group_size is None:
            raise ValueError("best_nll > 0 needs each group's best completion and the group size")
        nll = best_nll_term(logp, mask, best, group_size, lengths)
        loss = loss + config.best_nll * nll
    with torch.no_grad():
        stats = {"kl": float(((kl * mask).sum(dim=1) / lengths).mean()), "best_nll": float(nll),
                 "clipped_fraction": float((((unclipped - clipped).abs() > 0).to(mask.dtype) * mask).sum()
                                           / mask.sum().clamp(min=1.0))}
    return loss, stats
