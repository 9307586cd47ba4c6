"""Phase planners: what the server hands out in each phase of a round, and what it does
when the phase closes. Later capabilities (secure aggregation, scoring, GRPO) plug in
here as planners; the round engine itself never changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedsecure.types import ReportLedgerSpec, RunConfig, TaskKind, TaskSpec

from server.rounds.store import Store, SubmissionRow


@dataclass(frozen=True)
class PhaseContext:
    """Where a phase sits: run, round, attempt, its index and kind, and the store."""

    run_id: str
    round: int
    attempt: int
    phase_index: int
    kind: TaskKind
    config: RunConfig
    store: Store


def published_groups(ctx: PhaseContext, round_: int) -> tuple[str, ...]:
    """Groups with a published aggregate in ``round_`` of this run (what a task may tell
    its client to download)."""
    return tuple(ctx.store.submissions.aggregate_groups(ctx.run_id, round_))


class PhasePlanner(Protocol):
    """Plans the tasks of one phase kind and finishes the phase when it closes."""

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        """One task spec per participant (a participant left out gets no task)."""
        ...

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Consume the accepted submissions. Must be idempotent: after a crash it runs
        again on the same submissions. Raising keeps the phase closing and retries later."""
        ...


def phase_applies(planner: object, ctx: PhaseContext) -> bool:
    """Whether a phase runs in this round. A planner may define ``applies(ctx)`` (e.g.
    personalisation runs in a run's last round only); a phase that does not apply is
    passed over with no task, and the next phase goes to the participants of the last
    phase that ran."""
    applies = getattr(planner, "applies", None)
    return True if applies is None else bool(applies(ctx))


def phase_deadline_s(planner: object, configured_s: float) -> float:
    """How long a phase stays open: the configured deadline, or longer when the planner
    says its planned work needs more (``min_deadline_s()``, e.g. the ALIGN stage's steps
    times their deadline). A phase shorter than its own work was closed under a running
    stage, the round retried and its TRAIN handed out again (issue 23 item 8)."""
    floor = getattr(planner, "min_deadline_s", None)
    return max(float(configured_s), float(floor()) if floor is not None else 0.0)


class ReportLedgerPlanner:
    """Each participant reports its privacy-ledger head; the server stores the heads
    as they arrive (docs/design.md §4, last step of a round)."""

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        """Everyone reports."""
        return {p: ReportLedgerSpec() for p in participants}

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Nothing left to do: heads were recorded when each report was accepted."""


def default_planners() -> dict[TaskKind, PhasePlanner]:
    """Planners the server ships with."""
    return {TaskKind.REPORT_LEDGER: ReportLedgerPlanner()}
