"""A measurement leaves a model's mixed mode (training only where parameters train) as it
found it, even when the measurement fails."""

from __future__ import annotations

import pytest
import torch

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.dp_training import training_mode
from fedsecure.models.modes import evaluation_mode
from fedsecure.models.reward import build_reward_model
from fedsecure.models.scoring import score_triples


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_evaluation_mode_restores_a_mixed_mode_even_on_error() -> None:
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    training_mode(model)
    mixed = _modes(model)
    assert any(mixed) and not all(mixed)  # frozen stacks in eval mode, trained modules in training mode
    with pytest.raises(RuntimeError), evaluation_mode(model):
        assert not any(_modes(model))
        raise RuntimeError("a measurement that fails")
    assert _modes(model) == mixed


def test_scoring_keeps_the_models_mode() -> None:
    model, tok = build_reward_model(easyvqa_reward_config(kind="text"))
    training_mode(model)
    mixed = _modes(model)
    values = score_triples(model, tok, images=None, questions=["what color is the shape?"] * 2,
                           completions=["red", "circle"])
    assert len(values) == 2 and _modes(model) == mixed
