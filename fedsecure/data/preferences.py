"""Preference data: pairs (chosen = the preferred answer, rejected = a worse one) and *records* (one question with its
chosen answer and every rejected answer it carries), the privacy unit of DP training.

A record uses all of its evidence at once (issue 24): with a closed answer set every other
answer of the set is a negative; with free text, every rejected response the record's
pairs carry. Held-out evaluation keeps the pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PreferencePair:
    """(image, question, chosen, rejected), traced back to its record."""

    record_id: str
    question: str
    chosen: str
    rejected: str
    image: str = ""  # path of a PNG file; empty for a text-only pair
    hard: bool = False  # the rejected answer is of the chosen one's own type


@dataclass(frozen=True)
class PreferenceRecord:
    """One question with its chosen answer and the rejected ones (no duplicates, never the
    chosen one): the unit that DP training clips and the accountant counts."""

    record_id: str
    question: str
    chosen: str
    rejected: tuple[str, ...]
    image: str = ""

    def __post_init__(self) -> None:
        if not self.rejected:
            raise ValueError(f"record {self.record_id}: no rejected answer")
        if self.chosen in self.rejected or len(set(self.rejected)) != len(self.rejected):
            raise ValueError(f"record {self.record_id}: rejected answers must be distinct and differ from the chosen")

    @property
    def candidates(self) -> tuple[str, ...]:
        """The chosen answer first, then the rejected ones."""
        return (self.chosen, *self.rejected)


def records_from_pairs(pairs: Sequence[PreferencePair], *,
                       answer_set: Sequence[str] | None = None) -> list[PreferenceRecord]:
    """Group pairs into records by ``record_id`` (in first-seen order). With a closed
    ``answer_set`` every other answer of the set is a rejected answer (the whole set is the
    evidence); without one, the rejected answers the record's pairs carry. Raises
    ValueError if one record id has two questions, images or chosen answers."""
    grouped: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        grouped.setdefault(p.record_id, []).append(p)
    out = []
    for rid, group in grouped.items():
        first = group[0]
        if any((p.question, p.chosen, p.image) != (first.question, first.chosen, first.image) for p in group):
            raise ValueError(f"record {rid}: its pairs disagree on question, image or chosen answer")
        if answer_set is not None:
            if first.chosen not in answer_set:
                raise ValueError(f"record {rid}: chosen answer {first.chosen!r} is not in the answer set")
            rejected = tuple(a for a in answer_set if a != first.chosen)
        else:
            rejected = tuple(dict.fromkeys(p.rejected for p in group if p.rejected != first.chosen))
        out.append(PreferenceRecord(rid, first.question, first.chosen, rejected, first.image))
    return out


def holdout(pairs: Sequence[PreferencePair], *, fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out), split by image so no held-out image was trained on (pairs
    without an image are split by record)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")

    def group(p: PreferencePair) -> str:
        return p.image or p.record_id

    groups = sorted({group(p) for p in pairs})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(groups)[: max(1, int(len(groups) * fraction))].tolist())
    return [p for p in pairs if group(p) not in held], [p for p in pairs if group(p) in held]
