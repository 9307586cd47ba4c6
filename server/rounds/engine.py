"""The round engine: run -> rounds -> phases -> tasks, driven by submissions and time.

Rules (docs/design.md §4):
- a round samples participants at rate r from active, recently seen clients;
- a phase closes when every participant answered, or at its deadline if at least
  ``quorum`` completed; otherwise the round is retried with a fresh sample, never
  closed with fewer (after ``max_attempts`` the run fails, it never degrades);
- every transition is one SQLite transaction; deadlines are absolute, so a restarted
  server resumes the run where it stood.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import Mapping, Sequence

from fedsecure.errors import RunStateError
from fedsecure.types import RunConfig, RunStatus, Task, TaskKind

from server.rounds.phases import PhaseContext, PhasePlanner, default_planners, phase_applies, phase_deadline_s
from server.rounds.store import RunRow, Store, now_ms

log = logging.getLogger("fedsecure.server.engine")

# A client counts as present if it polled within this window.
LIVENESS_MS = 60_000
# Clients send Heartbeat this often (told at Hello) while they serve tasks; a participant
# unheard for SILENT_HEARTBEATS intervals is silent: a phase whose only missing answers
# are from silent participants closes early (still never below quorum).
HEARTBEAT_INTERVAL_MS = 10_000
SILENT_HEARTBEATS = 3
TICK_S = 0.25
# Closing a phase (e.g. secure aggregation through the key holder) is retried this many
# times, CLOSE_RETRY_S apart; then the attempt fails and the round is retried with a
# fresh sample, as for a missed quorum. Never an endless loop on the same failure.
MAX_CLOSE_ATTEMPTS = 5
CLOSE_RETRY_S = 2.0
_sampler = random.SystemRandom()  # participant choice must not be predictable


class RoundEngine:
    """Owns the run's state machine; all methods run on the server's event loop."""

    def __init__(self, store: Store, planners: Mapping[TaskKind, PhasePlanner] | None = None,
                 *, liveness_ms: int = LIVENESS_MS, max_close_attempts: int = MAX_CLOSE_ATTEMPTS, close_retry_s: float = CLOSE_RETRY_S,
                 heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS) -> None:
        if max_close_attempts < 1 or close_retry_s < 0:
            raise ValueError("max_close_attempts must be >= 1 and close_retry_s >= 0")
        if heartbeat_interval_ms < 1:
            raise ValueError("heartbeat_interval_ms must be >= 1")
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.store = store
        self.planners: dict[TaskKind, PhasePlanner] = {**default_planners(), **(planners or {})}
        self.liveness_ms = liveness_ms
        self._wake = asyncio.Event()
        self._task_events: dict[str, asyncio.Event] = {}
        self.max_close_attempts, self.close_retry_s = max_close_attempts, close_retry_s
        self._closing_retry_at = 0.0
        self._close_failures: dict[tuple[str, int, int, int], int] = {}

    # --- control ------------------------------------------------------------------

    def start_run(self, config: RunConfig) -> RunStatus:
        """Create a run; refuses while another is active or a phase has no planner."""
        if self.store.runs.active() is not None:
            raise RunStateError("a run is already active; stop it first")
        missing = [p.kind.name for p in config.phases if p.kind not in self.planners]
        if missing:
            raise RunStateError(f"this server has no planner for phase kinds {missing}")
        run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.store.runs.insert(run_id, config)
        log.info("run %s started: %s", run_id, config)
        self.poke()
        return self.status()

    def stop_run(self, run_id: str) -> RunStatus:
        """Stop the active run; open tasks expire and nothing more is accepted."""
        run = self.store.runs.active()
        if run is None or (run_id and run.run_id != run_id):
            raise RunStateError(f"run {run_id or '(any)'} is not active")
        with self.store.tx() as tx:
            self.store.runs.update(tx, run.run_id, state="stopped", detail="stopped by admin")
            self.store.runs.expire_open_tasks(tx, run.run_id)
        self.poke()
        return self.status()

    def status(self) -> RunStatus:
        """A snapshot of the newest run."""
        run = self.store.runs.latest()
        if run is None:
            return RunStatus(state="none")
        rnd = self.store.runs.open_round(run.run_id, run.round, run.attempt)
        phase = run.config.phases[rnd.phase_index].kind if rnd else None
        return RunStatus(run_id=run.run_id, state=run.state, round=run.round, attempt=run.attempt, phase=phase,
                         config=run.config, tasks_open=self.store.runs.count_tasks(run.run_id, "open"),
                         tasks_done=self.store.runs.count_tasks(run.run_id, "done"),
                         rounds_closed=run.rounds_closed, detail=run.detail)

    # --- notifications ------------------------------------------------------------

    def poke(self) -> None:
        """Ask the loop to re-evaluate now (a submission arrived, a client left)."""
        self._wake.set()

    def task_event(self, client: str) -> asyncio.Event:
        """Set whenever new tasks exist for ``client`` (long polls wait on it)."""
        return self._task_events.setdefault(client, asyncio.Event())

    def _notify(self, clients: Sequence[str]) -> None:
        for c in clients:
            self.task_event(c).set()

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Advance the state machine until ``stop`` is set (ticks plus wake-ups)."""
        while not stop.is_set():
            try:
                await self.advance()
            except Exception:  # keep serving; the failing step is retried next tick
                log.exception("round engine step failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass

    # --- the state machine ----------------------------------------------------------

    async def advance(self) -> None:
        """Take every transition that is due now (bounded: one round's worth)."""
        for _ in range(16):
            run = self.store.runs.active()
            if run is None or not await self._step(run):
                return

    async def _step(self, run: RunRow) -> bool:
        """One transition; True if something changed and another step may be due."""
        cfg = run.config
        rnd = self.store.runs.open_round(run.run_id, run.round, run.attempt)
        if rnd is None:
            return self._try_open_round(run)
        phase = cfg.phases[rnd.phase_index]
        ctx = PhaseContext(run.run_id, run.round, run.attempt, rnd.phase_index, phase.kind, cfg, self.store)
        if rnd.phase_state == "planning":
            if not phase_applies(self.planners[phase.kind], ctx):
                self._pass_over_phase(ctx, run)
                return True
            participants = list(rnd.participants)
            # Later phases go to those who completed the last phase that handed out tasks.
            for index in range(rnd.phase_index - 1, -1, -1):
                previous = self.store.runs.phase_tasks(run.run_id, run.round, run.attempt, index)
                if previous:
                    participants = [t.client for t in previous if t.state == "done"]
                    break
            self._plan_phase(ctx, participants)
            return True
        if rnd.phase_state == "closing":
            return await self._finish_phase(ctx, run)
        tasks = self.store.runs.phase_tasks(run.run_id, run.round, run.attempt, rnd.phase_index)
        done = [t for t in tasks if t.state == "done"]
        waiting = [t for t in tasks if t.state == "open"]
        past_deadline = now_ms() >= rnd.phase_deadline_ms
        if waiting and not past_deadline and not self._only_silent_missing(run, done, waiting):
            return False
        if len(done) >= cfg.quorum:
            with self.store.tx() as tx:
                self.store.runs.expire_open_tasks(tx, run.run_id, round_=run.round, attempt=run.attempt,
                                                  phase_index=rnd.phase_index)
                self.store.runs.update_round(tx, run.run_id, run.round, run.attempt, phase_state="closing")
            log.info("%s round %d: phase %s closing with %d/%d", run.run_id, run.round, phase.kind.name,
                     len(done), len(tasks))
            return True
        reason = (f"round {run.round} attempt {run.attempt}: phase {phase.kind.name} ended with "
                  f"{len(done)} of {len(tasks)} done, quorum {cfg.quorum}")
        self._retry_round(run, reason)
        return True

    def _only_silent_missing(self, run: RunRow, done: Sequence[object], waiting: Sequence[object]) -> bool:
        """True when quorum answered and every participant still missing is silent (no
        heartbeat, poll or submission for SILENT_HEARTBEATS intervals): waiting for them
        to the deadline would only delay the round."""
        if len(done) < run.config.quorum:
            return False
        missing = [t.client for t in waiting]  # type: ignore[attr-defined]
        silent = self.store.clients.silent(missing, seen_before_ms=now_ms() - SILENT_HEARTBEATS
                                           * self.heartbeat_interval_ms)
        if silent != sorted(missing):
            return False
        log.warning("%s round %d: closing early, only silent participants are missing: %s", run.run_id, run.round,
                    silent)
        return True

    def _try_open_round(self, run: RunRow) -> bool:
        cfg = run.config
        eligible = self.store.clients.eligible(seen_since_ms=now_ms() - self.liveness_ms)
        if len(eligible) < max(cfg.min_clients, cfg.quorum):
            waited = now_ms() - (run.waiting_since_ms or now_ms())
            if waited >= cfg.enroll_timeout_s * 1000:
                self._retry_round(run, f"only {len(eligible)} eligible clients after {cfg.enroll_timeout_s} s "
                                       f"(need {max(cfg.min_clients, cfg.quorum)})")
                return True
            return False
        k = min(len(eligible), max(cfg.quorum, math.ceil(cfg.sample_rate * len(eligible))))
        participants = sorted(_sampler.sample(eligible, k))
        with self.store.tx() as tx:
            self.store.runs.insert_round(tx, run.run_id, run.round, run.attempt, participants)
            self.store.runs.update(tx, run.run_id, state="running", waiting_since_ms=None)
        log.info("%s round %d attempt %d opened with %s", run.run_id, run.round, run.attempt, participants)
        return True

    def _plan_phase(self, ctx: PhaseContext, participants: Sequence[str]) -> None:
        planner = self.planners[ctx.kind]
        specs = planner.plan(ctx, participants)
        deadline = now_ms() + int(phase_deadline_s(planner, ctx.config.phases[ctx.phase_index].deadline_s) * 1000)
        with self.store.tx() as tx:
            for client, spec in sorted(specs.items()):
                task = Task(run_id=ctx.run_id, round=ctx.round, task_id=f"t-{secrets.token_hex(8)}",
                            kind=ctx.kind, deadline_unix_ms=deadline, attempt=ctx.attempt, spec=spec)
                self.store.runs.insert_task(tx, task, client, ctx.phase_index)
            self.store.runs.update_round(tx, ctx.run_id, ctx.round, ctx.attempt, phase_state="open",
                               phase_deadline_ms=deadline)
        self._notify(list(specs))

    def _pass_over_phase(self, ctx: PhaseContext, run: RunRow) -> None:
        """A phase that does not apply this round: no tasks; on to the next phase (or the
        round's end, as a closed phase would)."""
        log.info("%s round %d: phase %s does not apply this round", ctx.run_id, ctx.round, ctx.kind.name)
        self._advance_after_phase(ctx, run)

    def _advance_after_phase(self, ctx: PhaseContext, run: RunRow) -> None:
        cfg = run.config
        with self.store.tx() as tx:
            if ctx.phase_index + 1 < len(cfg.phases):
                self.store.runs.update_round(tx, ctx.run_id, ctx.round, ctx.attempt, phase_index=ctx.phase_index + 1,
                                   phase_state="planning")
            else:
                self.store.runs.update_round(tx, ctx.run_id, ctx.round, ctx.attempt, state="closed", phase_state="closed",
                                   closed_ms=now_ms())
                finished = ctx.round >= cfg.rounds
                self.store.runs.update(tx, ctx.run_id, rounds_closed=run.rounds_closed + 1,
                                 round=ctx.round if finished else ctx.round + 1,
                                 attempt=ctx.attempt if finished else 1,
                                 state="finished" if finished else "running",
                                 waiting_since_ms=None if finished else now_ms())
                log.info("%s round %d closed%s", ctx.run_id, ctx.round, "; run finished" if finished else "")

    async def _finish_phase(self, ctx: PhaseContext, run: RunRow) -> bool:
        if time.monotonic() < self._closing_retry_at:
            return False
        tasks = self.store.runs.phase_tasks(ctx.run_id, ctx.round, ctx.attempt, ctx.phase_index)
        accepted = [s for t in tasks if t.state == "done"
                    for s in [self.store.submissions.for_task(t.task.task_id)] if s is not None]
        key = (ctx.run_id, ctx.round, ctx.attempt, ctx.phase_index)
        try:
            await self.planners[ctx.kind].close(ctx, accepted)
        except Exception as exc:
            # Never fall back to anything weaker: retry the close a bounded number of times,
            # then fail this attempt and retry the round with a fresh sample.
            failures = self._close_failures[key] = self._close_failures.get(key, 0) + 1
            if failures >= self.max_close_attempts:
                del self._close_failures[key]
                log.error("closing phase %s of %s round %d failed %d times", ctx.kind.name, ctx.run_id, ctx.round,
                          failures, exc_info=True)
                self._retry_round(run, f"closing phase {ctx.kind.name} failed {failures} times; last: "
                                       f"{_reason(exc)}")
                return True
            log.exception("closing phase %s of %s round %d failed (%d of %d); retrying", ctx.kind.name, ctx.run_id,
                          ctx.round, failures, self.max_close_attempts)
            self._closing_retry_at = time.monotonic() + self.close_retry_s
            return False
        self._close_failures.pop(key, None)
        self._advance_after_phase(ctx, run)
        return True

    def _retry_round(self, run: RunRow, reason: str) -> None:
        """Fail this attempt; retry the round with a fresh sample, or fail the run after
        ``max_attempts`` (never close a round with less than was promised)."""
        with self.store.tx() as tx:
            self.store.runs.expire_open_tasks(tx, run.run_id, round_=run.round, attempt=run.attempt)
            self.store.runs.update_round(tx, run.run_id, run.round, run.attempt, state="retried", closed_ms=now_ms())
            if run.attempt >= run.config.max_attempts:
                self.store.runs.update(tx, run.run_id, state="failed",
                                 detail=f"gave up after {run.attempt} attempts; last: {reason}")
                log.error("%s failed: %s", run.run_id, reason)
            else:
                self.store.runs.update(tx, run.run_id, attempt=run.attempt + 1, waiting_since_ms=now_ms(),
                                 detail=f"retrying: {reason}")
                log.warning("%s retrying round %d: %s", run.run_id, run.round, reason)



def _reason(exc: Exception) -> str:
    """A one-line reason for the run's detail: a gRPC refusal's own message, else the error's."""
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return (text or type(exc).__name__).splitlines()[0][:300]
