"""Synthetic scenes with free-text answers: the built-in task without a closed answer set
(one to three coloured shapes; questions about counts, colours and places, and a
description; answers are sentences judged by the facts they state)."""

from __future__ import annotations

from tasks.scenes.task import TASK, Scenes

__all__ = ["TASK", "Scenes"]
