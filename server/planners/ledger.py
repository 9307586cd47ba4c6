"""The REPORT_LEDGER phase planner, recording each reported ledger head in the
metrics log."""

from __future__ import annotations

from collections.abc import Sequence

from fedsecure import serde
from fedsecure.types import (
    PayloadKind,
)
from server.planners.metrics import MetricsLog
from server.rounds.phases import PhaseContext, ReportLedgerPlanner
from server.rounds.store import SubmissionRow


class LedgerReportPlanner(ReportLedgerPlanner):
    """REPORT_LEDGER, also writing each reported head to the metrics log, so the run
    report can show every client's ε over the rounds (what the server was told; the
    auditor checks the ledgers themselves)."""

    def __init__(self, *, metrics: MetricsLog) -> None:
        self.metrics = metrics

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Record the heads accepted in this phase."""
        for sub in accepted:
            if sub.payload_kind == int(PayloadKind.LEDGER_HEAD):
                head = serde.stored_ledger_head(sub.payload)
                self.metrics.write({"run_id": ctx.run_id, "round": ctx.round, "phase": "ledger", "client": sub.client,
                                    "seq": head.seq, "epsilon": head.epsilon, "epsilon_budget": head.epsilon_budget})
