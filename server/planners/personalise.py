"""The PERSONALISE phase (TAP, docs/design.md §4 last step): after a run's last round,
each participant compares the federation's published versions of its shared components
with its personal ones, replaces by margin and distils under DP
(client_sdk.personalisation). The server only hands out TAP's knobs and the source
aggregates, and records the metrics each client reports (held-out accuracies, ε) —
never a model.

Two ways in: a phase of a run (``--phases train,...,personalise,report_ledger``), which
runs in the run's last round only; or a run of its own started by the admin for a
finished run (``fedsecure admin personalise``), which takes the newest finished run's
last published aggregates."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from fedsecure import serde
from fedsecure.types import Decline, PersonaliseSpec, TaskReport, TaskSpec
from server.planners.metrics import MetricsLog, client_metrics
from server.rounds.phases import PhaseContext, published_groups
from server.rounds.store import SubmissionRow


class PersonalisePlanner:
    """Hands every participant the same TAP parameters and the source aggregates."""

    def __init__(self, *, metrics: MetricsLog, margin: float = 0.01, distill_steps: int = 30,
                 distill_weight: float = 1.0, temperature: float = 1.0) -> None:
        # Refused here, so a bad setting fails at start, not on every client.
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"replacement margin must be finite and >= 0, got {margin}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        if not (math.isfinite(distill_weight) and distill_weight >= 0):
            raise ValueError(f"distillation weight must be finite and >= 0, got {distill_weight}")
        if distill_steps < 0:
            raise ValueError(f"distill_steps must be >= 0, got {distill_steps}")
        self.metrics, self.margin, self.distill_steps = metrics, margin, distill_steps
        self.distill_weight, self.temperature = distill_weight, temperature

    def applies(self, ctx: PhaseContext) -> bool:
        """Only in the run's last round: personalisation ends a federation."""
        return ctx.round >= ctx.config.rounds

    @staticmethod
    def source(ctx: PhaseContext) -> tuple[str, int, tuple[str, ...]]:
        """(run, round, groups) of the federation versions: this round's, else the newest
        finished run's last published round (an on-demand personalisation)."""
        groups = published_groups(ctx, ctx.round)
        if groups:
            return ctx.run_id, ctx.round, groups
        found = ctx.store.submissions.latest_published(exclude_run=ctx.run_id)
        if found is None:
            return ctx.run_id, ctx.round, ()
        run_id, round_ = found
        return run_id, round_, tuple(ctx.store.submissions.aggregate_groups(run_id, round_))

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        """Everyone gets every published group; a client takes those it holds."""
        run_id, round_, groups = self.source(ctx)
        spec = PersonaliseSpec(replace_margin=self.margin, distill_steps=self.distill_steps,
                               distill_weight=self.distill_weight, temperature=self.temperature,
                               download_groups=groups, source_run_id=run_id, source_round=round_)
        self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "personalise_plan",
                            "source_run_id": run_id, "source_round": round_, "groups": list(groups)})
        return {p: spec for p in participants}

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Record each client's report (metrics only) or its typed refusal."""
        for sub in accepted:
            outcome = serde.stored_outcome(sub.payload)
            record: dict[str, object] = {"run_id": ctx.run_id, "round": ctx.round, "phase": "personalise",
                                         "client": sub.client}
            if isinstance(outcome, TaskReport):
                record.update(client_metrics(outcome.metrics))
            elif isinstance(outcome, Decline):
                record.update(declined=outcome.reason.name, detail=outcome.detail)
            self.metrics.write(record)
