"""easy-VQA as a task: 64x64 images of one shape, questions about its colour and shape
and yes/no questions, 13 answers (a closed answer set)."""

from __future__ import annotations

from tasks.easyvqa.task import TASK, EasyVQA

__all__ = ["TASK", "EasyVQA"]
