"""The router: per prompt, how much each client's (normalised) reward counts.

A small network over prompt features (the frozen reference policy's representation of the
prompt, :mod:`server.mixture.features`) gives one logit per client; clients that cannot
judge the prompt, or did not answer, are masked out before the softmax, so the weights are
finite, non-negative and sum to 1 over the clients available for that prompt (docs/design.md
§5). It never sees the question type: it must learn from the prompt what matters.

It is fit on a small public preference set the server keeps apart from its prompt pool
(prompt, preferred answer, rejected answer), scored by the clients' current reward models,
to make the fused score put the preferred answer first (Bradley–Terry on the fused margin).
The last layer starts at zero: an unfitted router is the uniform mean. No client's weight
exceeds ``max_weight`` where others can judge the prompt (:func:`cap_weights`): no single
client may own the fusion, however well it did on the preference set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from server.mixture.fusion import cap_weights, normalise_scores

MAX_CLIENT_WEIGHT = 0.5


class Router(nn.Module):
    """Prompt features (P, D) → client logits (P, C)."""

    def __init__(self, *, feature_dim: int, clients: int, hidden: int = 32,
                 max_weight: float = MAX_CLIENT_WEIGHT) -> None:
        super().__init__()
        if feature_dim < 1 or clients < 1 or hidden < 1:
            raise ValueError("feature_dim, clients and hidden must be >= 1")
        if not 0.0 < max_weight <= 1.0:
            raise ValueError(f"max_weight must be in (0, 1], got {max_weight}")
        self.feature_dim, self.clients, self.max_weight = feature_dim, clients, max_weight
        self.net = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, clients))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Client logits per prompt."""
        return self.net(features)

    def weights(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """(P, C) softmax over the available clients of each prompt, capped at
        ``max_weight``; a prompt with none available gets an all-zero row (its completions
        are then not rewarded)."""
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (P, {self.feature_dim}), got {tuple(features.shape)}")
        if available.shape != (features.shape[0], self.clients):
            raise ValueError(f"available must be (P, C) = {(features.shape[0], self.clients)}")
        return cap_weights(masked_softmax(self(features), available), available, self.max_weight)


def masked_softmax(logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Softmax of each row over its available entries; rows with none are all 0."""
    available = available.bool()
    masked = logits.masked_fill(~available, float("-inf"))
    any_ = available.any(-1, keepdim=True)
    safe = torch.where(any_, masked, torch.zeros_like(masked))
    return torch.where(available, torch.softmax(safe, dim=-1), 0.0)


@dataclass(frozen=True)
class PreferenceScores:
    """Client scores on the public preference set: ``chosen``/``rejected`` (C, M) raw
    scores of the preferred and the rejected answer of each of M pairs, ``answered`` (C, M)
    where client c scored both answers of pair m, ``features`` (M, D) of each pair's prompt,
    ``capable`` (M, C) whether client c can judge that prompt at all."""

    features: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    answered: torch.Tensor
    capable: torch.Tensor

    def __post_init__(self) -> None:
        c, m = self.chosen.shape
        if self.rejected.shape != (c, m) or self.answered.shape != (c, m):
            raise ValueError("chosen, rejected and answered must all be (C, M)")
        if self.features.dim() != 2 or self.features.shape[0] != m or self.capable.shape != (m, c):
            raise ValueError("features must be (M, D) and capable (M, C)")

    def normalised_margins(self) -> tuple[torch.Tensor, torch.Tensor]:
        """((M, C) z(chosen) − z(rejected), (M, C) available): each client normalised over
        every score it gave on the set, as in a GRPO step."""
        both = torch.cat([self.chosen, self.rejected], 1)
        ans = torch.cat([self.answered, self.answered], 1)
        z = normalise_scores(both, ans)
        m = self.chosen.shape[1]
        margins = (z[:, :m] - z[:, m:]).T
        return margins, (self.answered.T.bool() & self.capable.bool())


@dataclass(frozen=True)
class RouterFit:
    """Loss and pairwise accuracy of the fused score on the preference set, before and
    after fitting, and the steps taken."""

    loss_before: float
    loss_after: float
    accuracy_before: float
    accuracy_after: float
    steps: int


def fused_margin(router: Router, data: PreferenceScores) -> torch.Tensor:
    """(M,) fused z(chosen) − z(rejected) under the router's weights."""
    margins, available = data.normalised_margins()
    w = router.weights(data.features, available)
    return (w * margins).sum(-1)


def _accuracy(margin: torch.Tensor) -> float:
    """Share of pairs ranked right (a tie counts half)."""
    return float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean())


def fit_router(router: Router, data: PreferenceScores, *, steps: int = 300, learning_rate: float = 1e-2,
               weight_decay: float = 1e-2, margin_scale: float = 2.0, seed: int = 0) -> RouterFit:
    """Fit ``router`` (in place, continuing from its current weights: refreshed each round)
    by Bradley–Terry on the fused margin: minimise ``−log σ(s · Σ_c w_c(x) Δz_c)``. A pair
    no client answered carries no signal and is left out."""
    if steps < 0 or learning_rate <= 0 or margin_scale <= 0:
        raise ValueError("need steps >= 0, learning_rate > 0 and margin_scale > 0")
    margins, available = data.normalised_margins()
    covered = available.any(-1)
    if not bool(covered.any()):
        raise ValueError("no preference pair was scored by any client able to judge it")
    feats, margins, available = data.features[covered], margins[covered], available[covered]

    def loss_and_margin() -> tuple[torch.Tensor, torch.Tensor]:
        fused = (router.weights(feats, available) * margins).sum(-1)
        return nn.functional.softplus(-margin_scale * fused).mean(), fused

    with torch.no_grad():
        loss0, m0 = loss_and_margin()
    optimiser = torch.optim.AdamW(router.parameters(), lr=learning_rate, weight_decay=weight_decay)
    router.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss, _ = loss_and_margin()
            loss.backward()
            optimiser.step()
    router.eval()
    with torch.no_grad():
        loss1, m1 = loss_and_margin()
    return RouterFit(loss_before=float(loss0), loss_after=float(loss1), accuracy_before=_accuracy(m0),
                     accuracy_after=_accuracy(m1), steps=steps)


def weights_by_group(weights: torch.Tensor, groups: Sequence[str], clients: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean router weight of each client per group of prompts (e.g. per question type, for
    the round's log; the router itself never sees the type)."""
    if weights.shape != (len(groups), len(clients)):
        raise ValueError("weights must be (P, C) for the given groups and clients")
    out: dict[str, dict[str, float]] = {}
    for g in sorted(set(groups)):
        rows = torch.tensor([x == g for x in groups])
        mean = weights[rows].mean(0)
        out[g] = {c: round(float(v), 4) for c, v in zip(clients, mean, strict=True)}
    return out


def router_state(router: Router) -> Mapping[str, torch.Tensor]:
    """The router's tensors, for a safetensors checkpoint."""
    return {k: v.detach().clone() for k, v in router.state_dict().items()}
