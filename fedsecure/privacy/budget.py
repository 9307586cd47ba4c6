"""A client's privacy budget, and the share of it held back for personalisation."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PrivacyBudget:
    """(epsilon, delta) a client may spend over all rounds of all runs.

    ``personalisation_reserve`` is the share of ε that federated training leaves
    untouched so that TAP's personalisation after the federation (which trains on
    private pairs, docs/design.md §4) is never refused because the rounds spent it all:
    training calibrates its noise to ``federation_epsilon``; personalisation may use
    the budget up to ``epsilon``. 0 keeps nothing back."""

    epsilon: float
    delta: float
    personalisation_reserve: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon budget must be finite and positive, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.personalisation_reserve) and 0.0 <= self.personalisation_reserve < 1.0):
            raise ValueError(f"personalisation reserve must be a share in [0, 1), got {self.personalisation_reserve}")

    @property
    def federation_epsilon(self) -> float:
        """What federated training may spend: the budget less the personalisation reserve."""
        return self.epsilon * (1.0 - self.personalisation_reserve)
