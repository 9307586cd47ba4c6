"""easy-VQA, loaded from the ``easy-vqa`` wheel (64x64 images, 13 answers), offline.

Questions become :class:`fedsecure.task.Example` records whose image is the wheel's PNG
file and whose group is the answer's type (colour, shape, yes/no).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

from fedsecure.task import Example

Split = Literal["train", "test"]

SHAPES = ("circle", "rectangle", "triangle")
YES_NO = ("yes", "no")
_WORD = re.compile(r"[a-z]+")


@functools.cache
def answers() -> tuple[str, ...]:
    """The 13 answers of easy-VQA, in the package's order (the answer vocabulary)."""
    import easy_vqa

    return tuple(easy_vqa.get_answers())


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """Every lowercase word of easy-VQA's questions (both splits) and its answers, sorted:
    the words the built-in tokenizers know."""
    words = {w for split in ("train", "test") for r in load_records(split) for w in _WORD.findall(r.question.lower())}
    words.update(answers())
    return tuple(sorted(words))


def answer_type(answer: str) -> str:
    """'yesno', 'shape' or 'color'; raises ValueError for an answer outside easy-VQA."""
    if answer not in answers():
        raise ValueError(f"unknown answer {answer!r}")
    if answer in YES_NO:
        return "yesno"
    return "shape" if answer in SHAPES else "color"


@functools.cache
def load_records(split: Split) -> tuple[Example, ...]:
    """Every question of a split, with stable ids ``<split>-<index>``; raises
    FileNotFoundError if the wheel lacks a question's image."""
    import easy_vqa

    if split == "train":
        texts, ans, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        texts, ans, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    out = []
    for i, (q, a, img) in enumerate(zip(texts, ans, image_ids, strict=True)):
        path = paths.get(int(img))
        if path is None:
            raise FileNotFoundError(f"easy-VQA {split} image {img} is missing")
        out.append(Example(record_id=f"{split}-{i}", question=q, answer=a, group=answer_type(a), image=path))
    return tuple(out)


def image_id(example: Example) -> int:
    """The easy-VQA image number of an example (its file is ``<number>.png``): the
    partition orders and splits images by it."""
    return _image_number(example.image)


@functools.lru_cache(maxsize=None)
def _image_number(path: str) -> int:
    # cached: the partition asks for every record's number several times per split
    return int(Path(path).stem)
