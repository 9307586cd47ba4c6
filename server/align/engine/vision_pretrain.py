"""Public pretraining of the policy's vision tower, so that the policy can see.

A policy whose vision tower is a random network cannot represent colour or shape: no
reward, fused or not, can then teach it to answer "what colour is the shape?" (measured:
the built-in policy answered every colour and shape question wrong before this step).
Like the federation's backbone (:mod:`server.backbone.pretrain`), the tower is trained on
the server's own public labelled parts only (never ``reward_eval``) — each attribute the
task labels (e.g. colour and shape, from the public questions about the image, with
flips and quarter turns where the task allows them; or the count and what sits in each third) — never on client
data.
The features trained are the ones the language model reads: the mean of the patch tokens
of the tower's last layer (LLaVA's "default" selection drops the CLS token).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedsecure.task import Example, Task
from server.backbone.pretrain import ImageSet, augment, image_set, label_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionPretrainConfig:
    """Steps, batch size, AdamW learning rate and seed of the vision-tower pretraining."""

    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or not self.learning_rate > 0:
            raise ValueError("need steps >= 1, batch_size >= 2 and learning_rate > 0")


@dataclass(frozen=True)
class VisionPretrainResult:
    """Accuracy of the pretraining heads on held-out public images by attribute (e.g.
    colour, chance 1/8, and shape, chance 1/3), before and after, and the time taken."""

    before: dict[str, float]
    after: dict[str, float]
    images: int
    seconds: float


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision tower of a LLaVA-style model (``model.model.vision_tower`` in current
    transformers, ``model.vision_tower`` in older ones)."""
    for owner in (getattr(model, "model", None), model):
        tower = getattr(owner, "vision_tower", None)
        if isinstance(tower, nn.Module):
            return tower
    raise ValueError(f"{type(model).__name__} has no vision tower to pretrain")


def _pixels(images: torch.Tensor) -> torch.Tensor:
    # the built-in processor's normalisation: mean 0.5, std 0.5 on [0, 1] values
    return images.float().div(127.5).sub(1.0)


def _features(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return tower(pixel_values=_pixels(images)).last_hidden_state[:, 1:].mean(1)


def _accuracy(tower: nn.Module, heads: nn.ModuleDict, data: ImageSet) -> dict[str, float]:
    with torch.no_grad():
        feats = torch.cat([_features(tower, data.images[i:i + 256]) for i in range(0, len(data.images), 256)])
    out = {}
    for name, labels in data.labels.items():
        keep = labels >= 0
        out[name] = round(float((heads[name](feats[keep]).argmax(-1) == labels[keep]).float().mean()), 4)
    return out


def pretrain_vision_tower(model: nn.Module, *, task: Task, train: Sequence[Example], held_out: Sequence[Example],
                          config: VisionPretrainConfig = VisionPretrainConfig()) -> VisionPretrainResult:
    """Train ``model``'s vision tower in place on the public ``train`` records' images,
    labelled by ``task``; measure on ``held_out`` (public images too, disjoint from ``train``)."""
    started = time.perf_counter()
    tower = vision_tower(model)
    train_set = image_set(train, task)
    test_set = image_set(held_out, task, classes=train_set.classes)
    hidden = int(tower.config.hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        heads = nn.ModuleDict({a: nn.Linear(hidden, len(v)) for a, v in train_set.classes.items()})
    tower.eval()
    before = _accuracy(tower, heads, test_set)
    optimiser = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=config.learning_rate)
    gen = torch.Generator().manual_seed(config.seed + 2)
    tower.train()
    for step in range(config.steps):
        i = torch.randint(len(train_set.images), (config.batch_size,), generator=gen)
        feats = _features(tower, augment(train_set.images[i], gen, turns=train_set.turns))
        loss = label_loss(heads, feats, train_set, i)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if (step + 1) % 100 == 0:
            log.info("policy vision pretraining: step %d/%d, loss %.3f", step + 1, config.steps, loss.item())
    tower.eval()
    after = _accuracy(tower, heads, test_set)
    return VisionPretrainResult(before=before, after=after, images=len(train_set.images),
                                seconds=time.perf_counter() - started)
