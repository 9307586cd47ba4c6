"""How a step's normalised client scores become one reward per completion: the routed
mixture and the competitors it is compared with in the same harness (docs/design.md §5):
uniform mean, min, max (the aggregations of the federated-RLHF literature), a single
client, competence-based expert selection (FedGRPO-style) and a per-question-type lookup
table. Every combiner sees the same inputs:

- ``z`` (C, N) normalised scores, ``answered`` (C, N) (:func:`server.align.fusion.normalise_scores`);
- ``prompt_of`` (N,) the prompt index of each item; ``features`` (P, D) prompt features;
- ``groups`` the per-prompt label a lookup table keys on (only the table reads it).

and returns (rewards (N,), covered (N,)) — an item no available client answered is not
covered (reward 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from server.align.fusion import fuse
from server.align.router import PreferenceScores, Router


@dataclass(frozen=True)
class StepScores:
    """One step's scores, ready to combine."""

    z: torch.Tensor
    answered: torch.Tensor
    prompt_of: torch.Tensor
    features: torch.Tensor
    groups: tuple[str, ...] = ()


class Combiner(Protocol):
    """Fuses a step's scores; ``name`` labels it in results."""

    name: str

    def __call__(self, s: StepScores) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards (N,), covered (N,))."""
        ...


def _weighted(s: StepScores, per_prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fuse(s.z, per_prompt[s.prompt_of], s.answered)


@dataclass
class Uniform:
    """The plain mean of the clients that answered."""

    name: str = "uniform"

    def __call__(self, s: StepScores) -> tuple[torch.Tensor, torch.Tensor]:
        return fuse(s.z, torch.ones(s.z.shape[1], s.z.shape[0]), s.answered)


@dataclass
class Extreme:
    """The minimum (pessimistic: every client must agree) or maximum over the clients
    that answered."""

    which: str = "min"

    def __post_init__(self) -> None:
        if self.which not in ("min", "max"):
            raise ValueError("which is 'min' or 'max'")
        self.name = self.which

    def __call__(self, s: StepScores) -> tuple[torch.Tensor, torch.Tensor]:
        fill = float("inf") if self.which == "min" else float("-inf")
        x = torch.where(s.answered, s.z, fill)
        out = x.min(0).values if self.which == "min" else x.max(0).values
        covered = s.answered.any(0)
        return torch.where(covered, out, 0.0), covered


@dataclass
class Single:
    """One client alone (index ``client``)."""

    client: int
    name: str = "single"

    def __call__(self, s: StepScores) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.zeros(s.z.shape[1], s.z.shape[0])
        w[:, self.client] = 1.0
        return fuse(s.z, w, s.answered)


@dataclass
class Routed:
    """The router's per-prompt weights (masked and renormalised over who answered, then
    capped: no client above the router's ``max_weight``)."""

    router: Router
    name: str = "routed"

    def __call__(self, s: StepScores) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = self.router(s.features)
        return fuse(s.z, torch.softmax(logits, dim=-1)[s.prompt_of], s.answered, max_weight=self.router.max_weight)


@dataclass
class ExpertSelection:
    """Competence-based expert selection (FedGRPO-style): per prompt, the client that
    ranked best the ``k`` public preference lists whose prompts are nearest in feature
    space (cosine); ties split evenly. Only clients that answered compete."""

    competence_features: torch.Tensor  # (M, D)
    correct: torch.Tensor              # (M, C) 1 where the client put list m's preferred answer first, nan if unscored
    k: int = 16
    name: str = "expert"

    @classmethod
    def fit(cls, data: PreferenceScores, *, k: int = 16) -> ExpertSelection:
        """Competence of every client on every public preference list (its preferred
        answer first)."""
        first, available = data.client_first()
        correct = torch.where(available, first, torch.nan)
        return cls(competence_features=data.features, correct=correct, k=k)

    def __call__(self, s: StepScores) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.nn.functional.normalize(s.features.float(), dim=-1)
        b = torch.nn.functional.normalize(self.competence_features.float(), dim=-1)
        nearest = (a @ b.T).topk(min(self.k, b.shape[0]), dim=-1).indices       # (P, k)
        competence = self.correct[nearest].nanmean(1).nan_to_num(0.0)            # (P, C)
        answered_prompt = torch.zeros_like(competence, dtype=torch.bool)
        answered_prompt[s.prompt_of] |= s.answered.T
        competence = competence.masked_fill(~answered_prompt, -1.0)
        best = competence == competence.max(-1, keepdim=True).values
        return _weighted(s, best.float())


@dataclass
class LookupTable:
    """Per question type, fixed client weights fit on the public preference set (each
    client's share of lists it put right there, sharpened by a softmax); a type the set never held
    gets uniform weights. Unlike the router it is handed the type."""

    table: Mapping[str, torch.Tensor]
    clients: int
    name: str = "table"

    @classmethod
    def fit(cls, data: PreferenceScores, groups: Sequence[str], *, sharpness: float = 10.0) -> LookupTable:
        """One weight vector per group label of the preference lists."""
        first, available = data.client_first()
        correct = torch.where(available, first, torch.nan)
        table = {}
        for g in sorted(set(groups)):
            rows = torch.tensor([x == g for x in groups])
            accuracy = correct[rows].nanmean(0).nan_to_num(0.0)
            table[g] = torch.softmax(sharpness * accuracy, dim=-1)
        return cls(table=table, clients=first.shape[1])

    def __call__(self, s: StepScores) -> tuple[torch.Tensor, torch.Tensor]:
        if len(s.groups) != s.features.shape[0]:
            raise ValueError("a lookup table needs one group label per prompt")
        uniform = torch.full((self.clients,), 1.0 / self.clients)
        per_prompt = torch.stack([self.table.get(g, uniform) for g in s.groups])
        return _weighted(s, per_prompt)
