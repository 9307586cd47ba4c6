"""The built-in policy learns to see on public images: its vision tower's colour and
shape features rise above chance, the tower's weights change, nothing else does."""

from __future__ import annotations

import pytest
import torch

from tasks.easyvqa.data import vocabulary

from fedsecure.models.policy_vlm import build_tiny_vlm
from server.align.engine.vision_pretrain import (
    VisionPretrainConfig,
    pretrain_vision_tower,
    vision_tower,
)
from tasks.easyvqa import TASK
from tasks.easyvqa.shares import server_part


def test_pretraining_teaches_the_tower_colour() -> None:
    model, _ = build_tiny_vlm(words=vocabulary(), seed=0)
    tower = vision_tower(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    held_out = server_part("reward_eval")[:600]
    result = pretrain_vision_tower(model, task=TASK, train=server_part("pretrain")[:1500], held_out=held_out,
                                   config=VisionPretrainConfig(steps=150, batch_size=32))
    tower_names = {f"model.vision_tower.{n}" for n, _ in tower.named_parameters()}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= tower_names  # the tower trained, the language model did not
    assert result.after["color"] > max(0.5, result.before["color"] + 0.25)  # chance: 1/8


def test_a_model_without_a_vision_tower_is_refused() -> None:
    with pytest.raises(ValueError, match="no vision tower"):
        vision_tower(torch.nn.Linear(2, 2))
