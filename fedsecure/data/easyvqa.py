"""easy-VQA, loaded from the ``easy-vqa`` wheel (64x64 images, 13 answers), offline.

Records are small frozen dataclasses; images are decoded lazily and cached per image,
returned as uint8 arrays (H, W, 3).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Split = Literal["train", "test"]
IMAGE_SIZE = 64

SHAPES = ("circle", "rectangle", "triangle")
YES_NO = ("yes", "no")


@dataclass(frozen=True)
class VQARecord:
    """One question about one image, with its single correct answer."""

    record_id: str
    split: str
    image_id: int
    question: str
    answer: str


@functools.cache
def answers() -> tuple[str, ...]:
    """The 13 answers of easy-VQA, in the package's order (the answer vocabulary)."""
    import easy_vqa

    return tuple(easy_vqa.get_answers())


def balanced_by_type(records: Sequence[VQARecord], per_type: int) -> list[VQARecord]:
    """The first ``per_type`` records of each answer type, in their order: three-quarters
    of easy-VQA's questions are yes/no, which a policy answers without looking at the image
    and which hide colour and shape in any overall figure (issue 24)."""
    if per_type < 1:
        raise ValueError("per_type must be >= 1")
    taken: dict[str, int] = {}
    out = []
    for r in records:
        t = answer_type(r.answer)
        if taken.get(t, 0) < per_type:
            taken[t] = taken.get(t, 0) + 1
            out.append(r)
    return out


def balanced_by_answer(records: Sequence[VQARecord], per_type: int) -> list[VQARecord]:
    """``per_type`` records of each answer type, spread evenly over the type's answers
    (taken in turn, in the records' order, while each lasts). A policy that gives one
    answer to every question of a type scores that type's chance level here, never that
    answer's share of the questions — the promotion gate is measured on such a set, so a
    collapse cannot pass for a gain (issue 24: collapsed to one shape, the policy read
    0.39 → 0.50 on shape on the unbalanced held-out questions and 0.48 → 0.28 on the test)."""
    if per_type < 1:
        raise ValueError("per_type must be >= 1")
    by_answer: dict[str, list[VQARecord]] = {}
    for r in records:
        by_answer.setdefault(r.answer, []).append(r)
    out: list[VQARecord] = []
    for t in sorted({answer_type(a) for a in by_answer}):
        queues = [by_answer[a] for a in sorted(by_answer) if answer_type(a) == t]
        taken, depth = 0, 0
        while taken < per_type and any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q) and taken < per_type:
                    out.append(q[depth])
                    taken += 1
            depth += 1
    return out


def answer_type(answer: str) -> str:
    """'yesno', 'shape' or 'color'; raises ValueError for an answer outside easy-VQA."""
    if answer not in answers():
        raise ValueError(f"unknown answer {answer!r}")
    if answer in YES_NO:
        return "yesno"
    return "shape" if answer in SHAPES else "color"


@functools.cache
def load_records(split: Split) -> tuple[VQARecord, ...]:
    """Every question of a split, with stable ids ``<split>-<index>``."""
    import easy_vqa

    if split == "train":
        texts, ans, image_ids = easy_vqa.get_train_questions()
    elif split == "test":
        texts, ans, image_ids = easy_vqa.get_test_questions()
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return tuple(VQARecord(f"{split}-{i}", split, int(img), q, a)
                 for i, (q, a, img) in enumerate(zip(texts, ans, image_ids, strict=True)))


@functools.cache
def _image_paths(split: str) -> dict[int, str]:
    import easy_vqa

    return easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()


@functools.lru_cache(maxsize=8192)
def load_image(split: str, image_id: int) -> np.ndarray:
    """The RGB image (64, 64, 3) uint8; raises FileNotFoundError naming the image."""
    path = _image_paths(split).get(image_id)
    if path is None:
        raise FileNotFoundError(f"easy-VQA {split} image {image_id} is missing")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def image_png(split: str, image_id: int) -> bytes:
    """The image as PNG bytes (what travels in a ScoreItem)."""
    return encode_png(load_image(split, image_id))


def encode_png(image: np.ndarray) -> bytes:
    """An RGB uint8 (H, W, 3) array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, *, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode untrusted PNG bytes into an RGB (size, size, 3) array; raises ValueError."""
    if not data:
        raise ValueError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise ValueError(f"expected a PNG image, got {im.format}")
            if im.width * im.height > 4096 * 4096:  # decompression-bomb guard
                raise ValueError("image too large")
            rgb = im.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size))
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt image: {exc}") from exc
