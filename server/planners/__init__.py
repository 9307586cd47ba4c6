"""The phase planners the round engine drives (:class:`server.rounds.phases.PhasePlanner`):
TRAIN (DP reward training with FedCola's secure aggregation), SCORE (public questions,
scored and judged), REPORT_LEDGER, PERSONALISE (TAP); the ALIGN phase's planner lives
with the rest of the ALIGN stage (:mod:`server.align.planner`). Each writes its results
to the server's metrics log (:mod:`server.planners.metrics`)."""
