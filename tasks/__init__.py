"""The built-in tasks a federation can align on (see :mod:`fedsecure.task`), by name.

The framework never imports a task; the application layer picks one by name."""

from __future__ import annotations

from fedsecure.task import Task

#: Names ``--task`` accepts, with the module that holds each task.
KNOWN: dict[str, str] = {"easyvqa": "tasks.easyvqa", "scenes": "tasks.scenes"}


def get_task(name: str) -> Task:
    """The task called ``name``; raises ValueError naming the known tasks."""
    import importlib

    module = KNOWN.get(name)
    if module is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(KNOWN))}")
    task = importlib.import_module(module).TASK
    if not isinstance(task, Task):
        raise TypeError(f"{module}.TASK does not implement fedsecure.task.Task")
    return task
