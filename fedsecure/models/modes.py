"""Evaluation mode for a measurement, with every module's own mode restored after it.

A reward model can be in a mixed mode: DP training keeps only the modules that own a
trainable parameter in training mode (dropout off in the frozen stacks, issue 24), so
``model.train(was_training)`` afterwards would switch dropout on where it was off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode inside the block; each module's own mode restored after it, even on
    error (a measurement taken mid-run leaves a stepper's mixed mode as it was)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode
