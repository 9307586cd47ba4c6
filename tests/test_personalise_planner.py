"""The server's PERSONALISE planner: TAP's knobs are checked at start, and the phase
applies in a run's last round only (the engine passes over it before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsecure.types import PhaseConfig, RunConfig, TaskKind
from server.planners.personalise import PersonalisePlanner
from server.planners.metrics import MetricsLog
from server.rounds.phases import PhaseContext, phase_applies


@pytest.mark.parametrize("bad", [dict(margin=-0.01), dict(temperature=0.0), dict(distill_weight=-1.0),
                                 dict(distill_steps=-1), dict(margin=float("inf"))])
def test_bad_knobs_are_refused_at_start(tmp_path: Path, bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PersonalisePlanner(metrics=MetricsLog(tmp_path / "m.jsonl"), **bad)  # type: ignore[arg-type]


def test_the_phase_applies_in_the_last_round_only(tmp_path: Path) -> None:
    planner = PersonalisePlanner(metrics=MetricsLog(tmp_path / "m.jsonl"))
    config = RunConfig(rounds=3, phases=(PhaseConfig(TaskKind.TRAIN, 60), PhaseConfig(TaskKind.PERSONALISE, 60)))

    def ctx(round_: int) -> PhaseContext:
        return PhaseContext("run", round_, 1, 1, TaskKind.PERSONALISE, config, None)  # type: ignore[arg-type]
    assert [phase_applies(planner, ctx(r)) for r in (1, 2, 3)] == [False, False, True]
    assert phase_applies(object(), ctx(1))  # a planner without the rule always applies
