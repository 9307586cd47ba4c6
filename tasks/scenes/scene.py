"""Synthetic scenes: one to three coloured shapes on a plain background, each in its own
third of the image (left, middle, right), drawn on this machine from a seed — public data
that no party owns, with every fact of the image known exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fedsecure.data.images import DEFAULT_IMAGE_SIZE

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
    "purple": (140, 60, 170), "orange": (245, 130, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "middle", "right")
MAX_OBJECTS = 3


@dataclass(frozen=True)
class Thing:
    """One shape of a scene: its colour, its kind and the third of the image it sits in."""

    colour: str
    shape: str
    position: str


@dataclass(frozen=True)
class Scene:
    """The shapes of one image, left to right."""

    things: tuple[Thing, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.things) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} shapes")
        positions = [t.position for t in self.things]
        if positions != sorted(set(positions), key=POSITIONS.index):
            raise ValueError("a scene's shapes sit in distinct thirds, left to right")


def random_scene(rng: np.random.Generator) -> Scene:
    """A scene of 1-3 shapes (equally likely), each of a random colour and kind, in
    random distinct thirds."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    slots = sorted(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
    colours, shapes = list(COLOURS), list(SHAPES)
    return Scene(tuple(Thing(colours[int(rng.integers(len(colours)))], shapes[int(rng.integers(len(shapes)))],
                             POSITIONS[s]) for s in slots))


def render(scene: Scene, rng: np.random.Generator, *, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The scene as an RGB uint8 (size, size, 3) array: a light background of random
    tint, each shape of random size and vertical place within its third."""
    tint = tuple(int(v) for v in rng.integers(225, 256, size=3))
    image = Image.new("RGB", (size, size), tint)
    draw = ImageDraw.Draw(image)
    third = size / len(POSITIONS)
    for t in scene.things:
        r = float(rng.uniform(0.28, 0.42)) * third  # half the shape's width
        cx = (POSITIONS.index(t.position) + 0.5) * third + float(rng.uniform(-0.08, 0.08)) * third
        cy = float(rng.uniform(r + 2, size - r - 2))
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[t.colour]
        if t.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif t.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return np.asarray(image, dtype=np.uint8)
