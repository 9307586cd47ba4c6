"""easy-VQA preference pairs: the correct answer is chosen, a wrong one rejected —
a random answer, or a hard one of the same type."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsecure.data.preferences import PreferencePair
from fedsecure.task import Example
from tasks.easyvqa.data import answer_type, answers


def build_pairs(records: Sequence[Example], *, seed: int, hard_fraction: float = 0.5,
                check_images: bool = True) -> list[PreferencePair]:
    """One pair per record (a share ``hard_fraction`` with a rejected answer of the
    record's own type); raises ValueError naming the first bad record."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError("hard_fraction must be in [0, 1]")
    vocab = answers()
    by_type: dict[str, list[str]] = {}
    for a in vocab:
        by_type.setdefault(answer_type(a), []).append(a)
    rng = np.random.default_rng(seed)
    pairs = []
    for r in records:
        if r.answer not in vocab:
            raise ValueError(f"record {r.record_id}: unknown answer {r.answer!r}")
        if not r.question.strip():
            raise ValueError(f"record {r.record_id}: empty question")
        if check_images and not (r.image and Path(r.image).is_file()):
            raise ValueError(f"record {r.record_id}: image {r.image or '(none)'} is missing")
        hard = bool(rng.random() < hard_fraction)
        pool = [a for a in (by_type[answer_type(r.answer)] if hard else vocab) if a != r.answer]
        pairs.append(PreferencePair(record_id=r.record_id, question=r.question, chosen=r.answer,
                                    rejected=str(pool[rng.integers(len(pool))]), image=r.image, hard=hard))
    return pairs
