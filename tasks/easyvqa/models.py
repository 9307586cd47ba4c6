"""Reward-model configurations for easy-VQA (its answers and words), for benchmarks,
tests and the demo — what a client gets from a kit sealed for this task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsecure.models.reward import RewardModelConfig, config_on_backbone
from tasks.easyvqa.data import answers, vocabulary


def reward_config(**overrides: Any) -> RewardModelConfig:
    """A reward model without a pretrained backbone, for easy-VQA."""
    return RewardModelConfig(**{"answers": answers(), "vocabulary": vocabulary(), **overrides})


def reward_config_on_backbone(kind: str, folder: Path, **overrides: Any) -> RewardModelConfig:
    """A reward model of ``kind`` on the backbone in ``folder``, for easy-VQA."""
    return config_on_backbone(kind, folder, **{"answers": answers(), "vocabulary": vocabulary(), **overrides})
