"""The promotion gate of the ALIGN stage (issue 24 item 5): never ship a worse policy.

The stage measures the policy on the server's public held-out questions before its first
step (the start) and after every round. A round's policy is *promoted* — becomes the one
the stage exports — only when its type-averaged accuracy beats the best so far (the start
included) by ``margin`` and no question type fell below the best's by more than
``max_type_drop``; otherwise the export stays what it was, the start if alignment never
helped. Type-averaged, because overall exact match is three-quarters yes/no questions
that the policy answers without looking at the image (measured in issue 24) and hides
what alignment does to colour and shape; no type may fall, because a gain on colour must
not buy a loss on shape (measured in the demo: colour 0.83 → 0.98 and shape 0.48 → 0.28
on the test questions, type mean 0.702 → 0.698, promoted by the mean alone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass


def type_mean(by_type: Mapping[str, float]) -> float:
    """The mean of the per-type accuracies (NaN when there are none)."""
    values = [v for v in by_type.values() if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


@dataclass(frozen=True)
class Measured:
    """One measured policy: after ``round`` (-1: the start, before any step), at ``step``."""

    round: int
    step: int
    accuracy: float
    by_type: dict[str, float]

    @property
    def type_mean(self) -> float:
        """Type-averaged accuracy."""
        return type_mean(self.by_type)


@dataclass(frozen=True)
class Verdict:
    """What the gate decided about one round: promoted or not, and the question types
    that fell too far (by how much) — a round with any is never promoted."""

    promoted: bool
    fallen: dict[str, float]


@dataclass
class PromotionGate:
    """The start, the promoted (best) policy so far, and the rule that moves it."""

    margin: float = 0.01
    max_type_drop: float = 0.05
    start: Measured | None = None
    best: Measured | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0 or not 0.0 <= self.max_type_drop < 1.0:
            raise ValueError("margin and max_type_drop must be in [0, 1)")

    def measure_start(self, measured: Measured) -> None:
        """Record the start; it is the promoted policy until a round beats it."""
        if measured.round != -1 or not math.isfinite(measured.type_mean):
            raise ValueError("the start is measured before the first round, on at least one question type")
        self.start = self.best = measured

    def consider(self, measured: Measured) -> Verdict:
        """Promote ``measured`` if it beats the best by ``margin`` (type-averaged) and no
        type fell by more than ``max_type_drop`` (see :meth:`fallen`); the verdict says
        whether it was promoted and which types fell. Refuses a round measured before the
        start."""
        if self.best is None:
            raise ValueError("measure the start before any round")
        fallen = self.fallen(measured)
        promoted = measured.type_mean >= self.best.type_mean + self.margin and not fallen
        if promoted:
            self.best = measured
        return Verdict(promoted=promoted, fallen=fallen)

    def fallen(self, measured: Measured) -> dict[str, float]:
        """The question types on which ``measured`` is below the best by more than
        ``max_type_drop``, with their drop (a type the best was not measured on, or
        ``measured`` was not, is not compared)."""
        if self.best is None:
            raise ValueError("measure the start before any round")
        return {t: round(self.best.by_type[t] - v, 4) for t, v in measured.by_type.items()
                if t in self.best.by_type and math.isfinite(v) and self.best.by_type[t] - v > self.max_type_drop}

    @property
    def helped(self) -> bool:
        """Whether the promoted policy is an aligned one rather than the start."""
        return self.best is not None and self.best.round >= 0

    def to_json(self) -> dict[str, object]:
        """JSON-ready state (checkpointed with every step)."""
        return {"margin": self.margin, "max_type_drop": self.max_type_drop,
                "start": asdict(self.start) if self.start else None,
                "best": asdict(self.best) if self.best else None}

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> PromotionGate:
        """The state :meth:`to_json` wrote."""
        def measured(d: object) -> Measured | None:
            if d is None:
                return None
            if not isinstance(d, Mapping):
                raise ValueError("a measured policy is an object")
            return Measured(round=int(d["round"]), step=int(d["step"]), accuracy=float(d["accuracy"]),
                            by_type={str(k): float(v) for k, v in dict(d["by_type"]).items()})
        return cls(margin=float(doc.get("margin", 0.01)),  # type: ignore[arg-type]
                   max_type_drop=float(doc.get("max_type_drop", 0.05)),  # type: ignore[arg-type]
                   start=measured(doc.get("start")), best=measured(doc.get("best")))
