"""Scoring with a reward model: one reward per (image, question, completion) triple.

Used by the client for every score request (a SCORE task, or a step of the ALIGN stage)
and by in-process harnesses that call the very same models (benchmarks, experiments).
Scoring is post-processing of the DP-trained model: it costs no privacy budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsecure.data.images import decode_png
from fedsecure.models.encoding import encode_items
from fedsecure.models.modes import evaluation_mode
from fedsecure.models.reward import RewardModel
from fedsecure.progress import progress
from fedsecure.types import ScoreItem

SCORE_BATCH = 256


def score_triples(model: RewardModel, tokenizer: object, *, images: Sequence[np.ndarray] | None,
                  questions: Sequence[str], completions: Sequence[str]) -> list[float]:
    """Rewards of each (image, question, completion); ``images`` is None for a text-only
    model. The model is left in the mode it was in."""
    if len(questions) != len(completions) or (images is not None and len(images) != len(questions)):
        raise ValueError("images, questions and completions must have one entry per item")
    if (model.image is not None) != (images is not None):
        raise ValueError("images must be given exactly when the model has an image stack")
    values: list[float] = []
    # A bar only for work of several batches (a SCORE task), not for each ALIGN step's few items.
    with evaluation_mode(model), progress(total=len(questions), desc="scoring", unit="item",
                                          show=len(questions) > SCORE_BATCH) as bar:
        for start in range(0, len(questions), SCORE_BATCH):
            end = start + SCORE_BATCH
            batch = encode_items(list(images[start:end]) if images is not None else [], questions[start:end],
                                 completions[start:end], tokenizer, answers=model.config.answers)
            values.extend(float(v) for v in model.score(batch))
            bar.update(min(end, len(questions)) - start)
    return values


def score_items(model: RewardModel, tokenizer: object, items: Sequence[ScoreItem]) -> list[float]:
    """:func:`score_triples` on wire items (images as PNG). A PNG that does not decode
    raises ValueError naming the item."""
    images = None
    if model.image is not None:
        images = []
        for item in items:
            try:
                images.append(decode_png(item.image_png))
            except ValueError as exc:
                raise ValueError(f"item {item.item_id}: {exc}") from exc
    return score_triples(model, tokenizer, images=images, questions=[i.question for i in items],
                         completions=[i.completion for i in items])
