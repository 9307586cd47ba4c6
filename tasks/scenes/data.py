"""The scenes dataset: drawn once on this machine from fixed seeds (no download), its
images written as PNG files to a cache folder, its questions as :class:`Example` records
with their wrong answers."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from fedsecure.task import Example
from tasks.scenes.scene import POSITIONS, Scene, random_scene, render
from tasks.scenes.text import questions, wrong_answers

Split = Literal["train", "test"]
SIZES: dict[str, int] = {"train": 4000, "test": 1000}  # scenes (images) per split
VERSION = "scenes-v3"  # names the generator: change it whenever the drawing or the text changes
_SPLIT_SEED = {"train": 101, "test": 202}


def cache_folder() -> Path:
    """Where the images are kept: ``$FEDSECURE_CACHE/<version>`` (default
    ``~/.cache/fedsecure``)."""
    root = Path(os.environ.get("FEDSECURE_CACHE") or Path.home() / ".cache" / "fedsecure")
    return root / VERSION


def _scene_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([_SPLIT_SEED[split], index])


def _draw(folder: Path) -> None:
    """Draw both splits into ``folder`` (images and one JSON file of questions per split)."""
    labels: dict[str, dict[str, str]] = {}
    for split, n in SIZES.items():
        (folder / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            rng = _scene_rng(split, i)
            scene = random_scene(rng)
            name = f"{i:05d}.png"
            Image.fromarray(render(scene, rng)).save(folder / split / name, format="PNG")
            labels[f"{split}/{name}"] = scene_labels(scene)
            for j, (group, question, answer) in enumerate(questions(scene)):
                rows.append({"id": f"{split}-{i:05d}-{j}", "image": name, "group": group, "question": question,
                             "answer": answer, "rejected": list(wrong_answers(scene, group, question, rng))})
        (folder / f"{split}.json").write_text(json.dumps(rows))
    (folder / "labels.json").write_text(json.dumps(labels))


def ensure_drawn() -> Path:
    """The cache folder, drawn first if absent (atomically: a half-drawn folder is never
    read; two processes drawing at once both finish and one folder wins)."""
    folder = cache_folder()
    if (folder / "labels.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _draw(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@functools.cache
def load_examples(split: Split) -> tuple[Example, ...]:
    """Every question of ``split``, in scene order."""
    folder = ensure_drawn()
    rows = json.loads((folder / f"{split}.json").read_text())
    return tuple(Example(record_id=f"scenes-{r['id']}", question=r["question"], answer=r["answer"], group=r["group"],
                         image=str(folder / split / r["image"]), rejected=tuple(r["rejected"])) for r in rows)


def scene_labels(scene: Scene) -> dict[str, str]:
    """The facts of a scene's image as labels: ``count`` and, for each third, the shape
    there ("red circle") or "nothing"."""
    at = {t.position: f"{t.colour} {t.shape}" for t in scene.things}
    return {"count": str(len(scene.things)), **{p: at.get(p, "nothing") for p in POSITIONS}}


@functools.cache
def _labels() -> dict[str, dict[str, str]]:
    folder = ensure_drawn()
    return {str(folder / k): v for k, v in json.loads((folder / "labels.json").read_text()).items()}


def image_labels(image: str) -> dict[str, str]:
    """The labels of a scenes image, by its path ({} for any other image)."""
    return dict(_labels().get(image, {}))
