"""The ALIGN phase planner: each participant is handed an ALIGN task and opens a score
session for it; a driver waits (bounded) for the sessions, runs one round of the ALIGN
stage — router refresh, then GRPO steps on the fused reward of the clients that answer
each step — on a worker thread, writes the round's record to ``metrics.jsonl``, and ends
the sessions; each client then closes its task with a report (docs/design.md §4). The
stage's work leaves the event loop only through :func:`server.align.threads.off_loop`.

The stage (policy, router, pool, checkpoints) is built once by ``build_stage`` with the
roster of every enrolled client, so the router's client axis stays fixed across rounds; a
client absent from a round simply answers nothing. The roster is kept in ``roster_file``:
after a server restart mid-stage, the driver starts again when the first client reopens
its session, the stage is rebuilt for the same roster and resumes from its last
checkpointed step. A stage that stopped (reward hacking, too many skipped steps) stays
stopped: its later ALIGN phases only end the sessions with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fedsecure.models.groups import ATTENTION_FAMILY, GroupKey
from fedsecure.types import AlignSpec, Modality, TaskSpec
from server.align.reward import ScoringClient
from server.align.sessions import ScoreSessions, Session
from server.align.stage import AlignRoundResult, AlignStage
from server.align.threads import off_loop
from server.planners.metrics import MetricsLog
from server.rounds.phases import PhaseContext, published_groups
from server.rounds.store import SubmissionRow

log = logging.getLogger(__name__)

StageBuilder = Callable[[Sequence[ScoringClient]], AlignStage]
"""Builds the ALIGN stage for a roster of scoring clients (called once, off the event loop)."""


class AlignPlanner:
    """See the module docstring."""

    def __init__(self, *, sessions: ScoreSessions, build_stage: StageBuilder, metrics: MetricsLog,
                 steps_per_round: int, step_deadline_s: float = 30.0, connect_timeout_s: float = 60.0,
                 roster_file: Path | None = None, first_round: int = 1) -> None:
        if steps_per_round < 1 or not step_deadline_s > 0 or not connect_timeout_s > 0 or first_round < 1:
            raise ValueError("steps_per_round >= 1, first_round >= 1 and positive deadlines are needed")
        # The run round the stage's round 0 falls in: earlier rounds only train the reward
        # models (GRPO on the fused rewards of barely trained models taught the demo's
        # policy wrong colours before the models had learnt them).
        self.first_round = first_round
        self.sessions, self.build_stage, self.metrics = sessions, build_stage, metrics
        self.steps_per_round, self.step_deadline_s, self.connect_timeout_s = (steps_per_round, step_deadline_s,
                                                                              connect_timeout_s)
        self.stage: AlignStage | None = None
        self.results: list[AlignRoundResult] = []
        self._drivers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._roster: list[ScoringClient] = []
        self.roster_file = roster_file  # the router's client axis, kept for a restarted server
        self.stopped: str | None = None  # why the stage ended early (its later rounds only end the sessions)
        sessions.on_attach = self._on_attach

    def min_deadline_s(self) -> float:
        """The longest the round's planned work may take: the sessions' connect window, every
        step to its deadline (plus the round's first, which carries the router's items), and
        a margin for the policy's own compute and evaluation (the phase stays open at least
        this long, whatever its configured deadline)."""
        return self.connect_timeout_s + (self.steps_per_round + 1) * self.step_deadline_s * 1.5 + 120.0

    def applies(self, ctx: PhaseContext) -> bool:
        """The stage runs from run round ``first_round`` on."""
        return ctx.round >= self.first_round

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        """An ALIGN task per participant (with the attention means to apply first); the
        stage's round starts as soon as their sessions are open."""
        if not self._roster:
            saved = self._saved_roster()
            declared = saved if saved is not None else {c.name: tuple(int(m) for m in c.capabilities.modalities)
                                                        for c in ctx.store.client_infos()}
            self._set_roster(declared)
        groups = tuple(g for g in published_groups(ctx, ctx.round)
                       if GroupKey.parse(g).family == ATTENTION_FAMILY)
        self.sessions.expected = set(participants)
        self._start(ctx.run_id, ctx.round, participants)
        spec = AlignSpec(steps=self.steps_per_round, step_deadline_ms=int(self.step_deadline_s * 1000),
                         download_groups=groups)
        return {p: spec for p in participants}

    def _set_roster(self, declared: Mapping[str, Sequence[int]]) -> None:
        self._roster = [ScoringClient(name, tuple(Modality(m) for m in mods), self.sessions.scorer(name))
                        for name, mods in sorted(declared.items()) if mods]
        if self.roster_file is not None and not self.roster_file.exists():
            self.roster_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.roster_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({c.name: [int(m) for m in c.modalities] for c in self._roster}))
            os.replace(tmp, self.roster_file)

    def _saved_roster(self) -> dict[str, list[int]] | None:
        if self.roster_file is None or not self.roster_file.exists():
            return None
        return {str(k): [int(m) for m in v] for k, v in json.loads(self.roster_file.read_text()).items()}

    def _on_attach(self, session: Session) -> None:
        # After a restart nothing drives the open phase: the first session to reopen restarts it.
        key = (session.task.run_id, session.task.round)
        if key not in self._drivers:
            log.info("score session of %s reopened round %d of the ALIGN stage", session.client, key[1])
            self._start(*key, participants=None)

    def _start(self, run_id: str, round_: int, participants: Sequence[str] | None) -> None:
        key = (run_id, round_)
        if key in self._drivers and not self._drivers[key].done():
            return
        self._drivers[key] = asyncio.get_running_loop().create_task(self._drive(run_id, round_, participants))

    async def _drive(self, run_id: str, round_: int, participants: Sequence[str] | None) -> None:
        try:
            if participants is not None:
                connected = await self.sessions.wait_for(participants, self.connect_timeout_s)
            else:  # resumed: whoever reconnects within the window
                await asyncio.sleep(min(self.connect_timeout_s, 5.0))
                connected = self.sessions.connected()
                self.sessions.expected = set(connected)
            log.info("ALIGN round %d: score sessions open for %s", round_, connected)
            if self.stopped is not None:
                self.sessions.end(None, self.stopped)
                return
            if not self._roster and (saved := self._saved_roster()) is not None:
                self._set_roster(saved)  # a restarted server: the roster the router was built for
            if self.stage is None:
                if not self._roster:
                    raise RuntimeError("no roster of scoring clients: the phase was not planned in this process "
                                       "and no roster file was kept")
                stage = await off_loop(self.build_stage, self._roster)
                if stage.config.steps_per_round != self.steps_per_round:
                    raise ValueError(f"the stage runs {stage.config.steps_per_round} steps per round, the ALIGN "
                                     f"tasks announce {self.steps_per_round}")
                await off_loop(stage.resume)
                self.stage = stage
            # the stage's rounds count from 0 at run round first_round
            result = await off_loop(self.stage.run_round, round_ - self.first_round)
            self.results.append(result)
            self.metrics.write({**dataclasses.asdict(result), "stage_round": result.round, "run_id": run_id,
                                "round": round_, "phase": "align", "connected": connected})
            if result.stopped:
                self.stopped = f"the ALIGN stage stopped in round {round_}: {result.stopped}"
            reason = self.stopped or f"round {round_} of the ALIGN stage is done"
        except Exception as exc:  # noqa: BLE001 - the phase must still end; the reason is logged and sent
            log.exception("ALIGN round %d failed", round_)
            self.metrics.write({"run_id": run_id, "round": round_, "phase": "align",
                                "error": f"{type(exc).__name__}: {exc}"})
            reason = f"the ALIGN stage failed: {type(exc).__name__}"
        self.sessions.end(None, reason)

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        """Wait for the round's driver (already done when every client finished)."""
        driver = self._drivers.get((ctx.run_id, ctx.round))
        if driver is not None:
            await driver
