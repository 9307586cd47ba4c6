"""The router: per prompt, how much each client's (normalised) reward counts.

A small network over prompt features (the frozen reference policy's representation of the
prompt, :mod:`server.align.features`) gives one logit per client; clients that cannot
judge the prompt, or did not answer, are masked out before the softmax, so the weights are
finite, non-negative and sum to 1 over the clients available for that prompt (docs/design.md
§5). It never sees the question type: it must learn from the prompt what matters.

It is fit on a small public preference set the server keeps apart from its prompt pool
(prompt, preferred answer, rejected answers), scored by the clients' current reward models,
to make the fused score put the preferred answer first among the candidates (a listwise
softmax loss on the fused scores).
The last layer starts at zero: an unfitted router is the uniform mean. No client's weight
exceeds ``max_weight`` where others can judge the prompt (:func:`cap_weights`): no single
client may own the fusion, however well it did on the preference set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from server.align.fusion import cap_weights, normalise_scores

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
    """Client scores on the public preference set, one candidate list per prompt: a
    preferred answer (column 0) and the rejected answers it must beat (columns 1…).
    ``scores`` (C, M, K) raw scores of client c for candidate k of prompt m; ``answered``
    (C, M, K) where client c scored it; ``present`` (M, K) which candidates exist (lists
    are padded to K; column 0 always exists); ``features`` (M, D) of each prompt;
    ``capable`` (M, C) whether client c can judge that prompt at all. With K = 2 this is
    the classic preference pair."""

    features: torch.Tensor
    scores: torch.Tensor
    answered: torch.Tensor
    present: torch.Tensor
    capable: torch.Tensor

    def __post_init__(self) -> None:
        if self.scores.dim() != 3:
            raise ValueError(f"scores must be (C, M, K), got {tuple(self.scores.shape)}")
        c, m, k = self.scores.shape
        if k < 2:
            raise ValueError("a candidate list needs the preferred answer and at least one rejected one")
        if self.answered.shape != (c, m, k) or self.present.shape != (m, k):
            raise ValueError("answered must be (C, M, K) and present (M, K)")
        if self.features.dim() != 2 or self.features.shape[0] != m or self.capable.shape != (m, c):
            raise ValueError("features must be (M, D) and capable (M, C)")
        if m and not bool(self.present[:, 0].all()):
            raise ValueError("every list must hold its preferred answer in column 0")

    def normalised(self) -> tuple[torch.Tensor, torch.Tensor]:
        """((C, M, K) z-scores, (M, C) available): each client standardised over every
        score it gave on the set, as in a GRPO step; client c is available for prompt m
        when it can judge it and scored every candidate of its list."""
        c, m, k = self.scores.shape
        answered = self.answered.bool() & self.present.bool()
        z = normalise_scores(self.scores.reshape(c, m * k), answered.reshape(c, m * k)).reshape(c, m, k)
        complete = (answered | ~self.present.bool()).all(-1).T  # (M, C)
        return z, complete & self.capable.bool()

    def client_first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """((M, C) 1 where client c puts the preferred answer strictly first in list m, ½ on
        a tie for first, 0 otherwise; (M, C) available) — each client's competence, for the
        combiners fit on the set."""
        z, available = self.normalised()
        rejected = z[:, :, 1:].masked_fill(~self.present[:, 1:].bool(), float("-inf")).amax(-1)  # (C, M)
        margin = (z[:, :, 0] - rejected).T
        return (margin > 0).float() + 0.5 * (margin == 0).float(), available

    def subset(self, rows: torch.Tensor) -> PreferenceScores:
        """The lists ``rows`` (indices or a boolean mask over M) alone."""
        return PreferenceScores(features=self.features[rows], scores=self.scores[:, rows], answered=self.answered[:, rows],
                                present=self.present[rows], capable=self.capable[rows])


@dataclass(frozen=True)
class RouterFit:
    """Listwise loss of the fused score on the preference set and how often it puts the
    preferred answer first, before and after fitting, and the steps taken."""

    loss_before: float
    loss_after: float
    accuracy_before: float
    accuracy_after: float
    steps: int


def fused_scores(router: Router, data: PreferenceScores) -> tuple[torch.Tensor, torch.Tensor]:
    """((M, K) fused z-scores under the router's weights, −inf where no candidate; (M,)
    whether any client was available for the prompt)."""
    z, available = data.normalised()
    return _fuse(router, data.features, z, available, ~data.present.bool()), available.any(-1)


def _fuse(router: Router, features: torch.Tensor, z: torch.Tensor, available: torch.Tensor,
          absent: torch.Tensor) -> torch.Tensor:
    """(M, K) Σ_c w_c(x_m) z_c[m, k] with the router's weights, −inf where ``absent``."""
    return torch.einsum("mc,cmk->mk", router.weights(features, available), z).masked_fill(absent, float("-inf"))


def _first_per_list(fused: torch.Tensor) -> torch.Tensor:
    """(M,) 1 where a list's preferred answer (column 0) is strictly first under ``fused``
    (M, K), ½ on a tie for first, 0 otherwise; absent candidates must be −inf."""
    best_rejected = fused[:, 1:].amax(-1)
    return (fused[:, 0] > best_rejected).float() + 0.5 * (fused[:, 0] == best_rejected).float()


def _first(fused: torch.Tensor) -> float:
    """Share of lists whose preferred answer the fused score puts first (a tie counts ½)."""
    return float(_first_per_list(fused).mean())


def lift_by_group(router: Router, data: PreferenceScores, groups: Sequence[str],
                  comparable: torch.Tensor | None = None) -> dict[str, float]:
    """Per group of lists (e.g. question type): how far above chance the fused score puts
    the preferred answer first, ``(first − chance) / (1 − chance)`` — 0 at chance (1 over
    a list's candidates), 1 when always first. ``comparable`` (M, K) keeps only the
    candidates that count (e.g. answers of the list's own type: a wrong *type* is easy to
    reject and would hide a judge that cannot tell one shape from another — measured: 0.93
    on shape lists with every answer in them); a list left with no rejected candidate,
    or that no client could judge, is left out, and a group with none is absent. It says
    where the federation's fused reward can be trusted to teach the policy, and where
    GRPO would only learn its bias."""
    if len(groups) != data.features.shape[0]:
        raise ValueError("one group per preference list is needed")
    fused, covered = fused_scores(router, data)
    present = data.present.bool()
    if comparable is not None:
        if comparable.shape != present.shape:
            raise ValueError("comparable must be (M, K) like the lists")
        present = present & comparable.bool()
        present[:, 0] = True
    with torch.no_grad():
        first = _first_per_list(fused.masked_fill(~present, float("-inf")))
        chance = 1.0 / present.sum(-1).clamp(min=2).float()
        covered = covered & (present.sum(-1) >= 2)
    out: dict[str, float] = {}
    for g in sorted(set(groups)):
        rows = torch.tensor([x == g for x in groups]) & covered
        if bool(rows.any()):
            f, c = float(first[rows].mean()), float(chance[rows].mean())
            out[g] = round((f - c) / (1.0 - c), 4)
    return out


def fit_router(router: Router, data: PreferenceScores, *, steps: int = 300, learning_rate: float = 1e-2,
               weight_decay: float = 1e-2, margin_scale: float = 2.0, seed: int = 0) -> RouterFit:
    """Fit ``router`` (in place, continuing from its current weights: refreshed each round)
    to put each prompt's preferred answer first among its candidates under the fused score:
    minimise the listwise softmax cross-entropy ``−log softmax(s · Σ_c w_c(x) z_c)[preferred]``
    (ListNet top-one, Cao et al. 2007; with one rejected answer it is Bradley–Terry). GRPO's
    reward must rank every answer the policy may sample, not one pair: fit on pairs, the
    router ranked 93 % of its pairs right and put the true answer first on 26 % of held-out
    questions (issue 24). A prompt no client answered carries no signal and is left out."""
    if steps < 0 or learning_rate <= 0 or margin_scale <= 0:
        raise ValueError("need steps >= 0, learning_rate > 0 and margin_scale > 0")
    z, available = data.normalised()
    covered = available.any(-1)
    if not bool(covered.any()):
        raise ValueError("no preference list was scored by any client able to judge it")
    feats, z, available = data.features[covered], z[:, covered], available[covered]
    absent = ~data.present[covered].bool()
    target = torch.zeros(int(covered.sum()), dtype=torch.long)

    def loss_and_fused() -> tuple[torch.Tensor, torch.Tensor]:
        fused = _fuse(router, feats, z, available, absent)
        return nn.functional.cross_entropy(margin_scale * fused, target), fused

    with torch.no_grad():
        loss0, f0 = loss_and_fused()
    optimiser = torch.optim.AdamW(router.parameters(), lr=learning_rate, weight_decay=weight_decay)
    router.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss, _ = loss_and_fused()
            loss.backward()
            optimiser.step()
    router.eval()
    with torch.no_grad():
        loss1, f1 = loss_and_fused()
    return RouterFit(loss_before=float(loss0), loss_after=float(loss1), accuracy_before=_first(f0),
                     accuracy_after=_first(f1), steps=steps)


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
