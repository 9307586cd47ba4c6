"""Preference pairs: chosen = the correct answer, rejected = a wrong one, mixing random
negatives (any other answer) and hard negatives (another answer of the same type).
The pair is the privacy unit of DP training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsecure.data.easyvqa import VQARecord, answer_type, answers, load_image


@dataclass(frozen=True)
class PreferencePair:
    """(image, question, chosen, rejected), traced back to its record."""

    record_id: str
    split: str
    image_id: int
    question: str
    chosen: str
    rejected: str
    hard: bool = False
    image_path: str = ""  # a local PNG (own data); empty = easy-VQA image (split, image_id)


def build_pairs(records: Sequence[VQARecord], *, seed: int, hard_fraction: float = 0.5,
                check_images: bool = True) -> list[PreferencePair]:
    """One pair per record; raises ValueError naming the first bad record."""
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
        if check_images:
            try:
                load_image(r.split, r.image_id)
            except FileNotFoundError as exc:
                raise ValueError(f"record {r.record_id}: {exc}") from exc
        hard = bool(rng.random() < hard_fraction)
        pool = [a for a in (by_type[answer_type(r.answer)] if hard else vocab) if a != r.answer]
        pairs.append(PreferencePair(r.record_id, r.split, r.image_id, r.question, r.answer,
                                    str(pool[rng.integers(len(pool))]), hard))
    return pairs


def holdout(pairs: Sequence[PreferencePair], *, fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out), split by image so no held-out image was trained on (pairs
    without an image are split by record)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")

    def group(p: PreferencePair) -> str:
        if p.image_path:
            return p.image_path
        return f"{p.split}:{p.image_id}" if p.image_id >= 0 else p.record_id

    groups = sorted({group(p) for p in pairs})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(groups)[: max(1, int(len(groups) * fraction))].tolist())
    return [p for p in pairs if group(p) not in held], [p for p in pairs if group(p) in held]
