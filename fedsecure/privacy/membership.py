"""Loss-threshold membership inference (Yeom et al. 2018) against a reward model: the
attacker guesses "member" when a pair's Bradley–Terry loss is low. The AUC over
members (training pairs) and non-members (held-out pairs) measures leakage; 0.5 is
none."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedsecure.models.encoding import EncodedPairs
from fedsecure.models.reward import RewardModel


@torch.no_grad()
def pair_losses(model: RewardModel, data: EncodedPairs, *, limit: int | None = None, batch_size: int = 256) -> np.ndarray:
    """Per-pair Bradley–Terry losses (first ``limit`` pairs)."""
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    out = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        out.append(-F.logsigmoid(model(data.batch(idx))))
    model.train()
    return torch.cat(out).numpy()


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counted half."""
    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if m.size == 0 or n.size == 0:
        raise ValueError("need members and non-members")
    allv = np.concatenate([m, n])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty_like(order, dtype=float)
    sorted_v = allv[order]
    i = 0
    while i < len(sorted_v):  # average ranks over ties
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: m.size].sum() - m.size * (m.size + 1) / 2) / (m.size * n.size))


def membership_auc(model: RewardModel, members: EncodedPairs, nonmembers: EncodedPairs, *, limit: int = 2000) -> float:
    """AUC of the loss-threshold attack (score = -loss)."""
    n = min(limit, len(members), len(nonmembers))
    return auc(-pair_losses(model, members, limit=n), -pair_losses(model, nonmembers, limit=n))
