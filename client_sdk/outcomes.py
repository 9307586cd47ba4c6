"""What a task handler returns, and what it is given. Later capabilities plug in by
registering a handler per task kind; the client loop never changes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedsecure.types import Decline, LedgerHead, Score, ScoreBatch, Task, TaskReport


@dataclass(frozen=True)
class Scores:
    """Scores for a SCORE task, one per item, in the task's order."""

    scores: tuple[Score, ...]


@dataclass(frozen=True)
class Update:
    """An update to stream (e.g. CKKS ciphertext chunks), with its group and weight."""

    group: str
    weight: float
    encoding: str
    chunks: tuple[bytes, ...]


Outcome = Scores | Update | TaskReport | LedgerHead | Decline


@dataclass(frozen=True)
class Aggregate:
    """A published aggregate as downloaded: its encoding, contributor count and bytes."""

    group: str
    round: int
    encoding: str
    contributors: int
    data: bytes


StepScorer = Callable[[ScoreBatch], Sequence[Score]]
"""Scores one ALIGN step's batch (one score per item, any order)."""


def _no_session(task: Task, scorer: StepScorer) -> TaskReport:
    raise RuntimeError("this context opens no score sessions")


@dataclass(frozen=True)
class TaskContext:
    """What a handler may use besides the task: fetching published aggregates, and (for
    an ALIGN task) serving the task's score session with a scorer until the server ends it."""

    client_name: str
    download_aggregate: Callable[[str, str, int], Aggregate]  # (run_id, group, round)
    score_session: Callable[[Task, StepScorer], TaskReport] = _no_session


Handler = Callable[[Task, TaskContext], Outcome]
