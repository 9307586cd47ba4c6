"""Run an experiment's seeds side by side, one process per seed, and collect each result.

Why: the seeds of an experiment are independent and most of each seed's work (a client's
DP steps, GRPO on a small policy) keeps about one core busy, so on a 2-core machine three
one-thread processes finish far sooner than one process running the seeds in turn (issue
24: the 26-method comparison took 89 minutes that way). Each child writes its own result
file under its own folder, so a seed that finished is kept whatever happens to the others.
A child that fails stops the rest and the error names its log; the parent's SIGTERM does
too, so no child is left running (``fedsecure.child_processes``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsecure.child_processes import ChildProcesses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedProcess:
    """One seed's child: the command it runs, its thread count and the folder it writes
    (``result`` and ``log`` inside it)."""

    seed: int
    command: tuple[str, ...]
    folder: Path
    threads: int
    result: str = "mor.json"

    @property
    def log_path(self) -> Path:
        """Where the child's standard output and error go."""
        return self.folder / "run.log"


class SeedProcessFailed(RuntimeError):
    """A seed's process exited without its result (or was stopped); the others were stopped."""


def run_side_by_side(runs: Sequence[SeedProcess], *, jobs: int, poll_s: float = 2.0, progress_s: float = 120.0,
                     on_done: Callable[[SeedProcess, float], None] | None = None) -> list[Path]:
    """Run ``runs`` with at most ``jobs`` alive at once, in the given order, and return
    their result files in that order. Every ``progress_s`` the newest log record of each
    running child is logged, so an hour-long run shows where each seed is. Raises
    :class:`SeedProcessFailed` if one fails."""
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    if len({r.seed for r in runs}) != len(runs) or len({r.folder for r in runs}) != len(runs):
        raise ValueError("every seed runs once, in a folder of its own")
    waiting: list[SeedProcess] = list(runs)
    alive: dict[int, tuple[SeedProcess, subprocess.Popen[bytes], float]] = {}
    shown: dict[int, str] = {}
    next_progress = time.monotonic() + progress_s
    # leaving the block for any reason (a failed seed, SIGTERM, an error here) stops every child
    with ChildProcesses(on_sigterm=_terminated) as children:
        while waiting or alive:
            while waiting and len(alive) < jobs:
                run = waiting.pop(0)
                run.folder.mkdir(parents=True, exist_ok=True)
                # a result left by an earlier run in this folder must not pass for this run's
                (run.folder / run.result).unlink(missing_ok=True)
                alive[run.seed] = (run, children.start(run.command, log=run.log_path, threads=run.threads),
                                   time.monotonic())
                log.info("seed %d: started (log %s)", run.seed, run.log_path)
            for seed, (run, proc, started) in list(alive.items()):
                code = proc.poll()
                if code is None:
                    continue
                del alive[seed]
                if code != 0 or not (run.folder / run.result).exists():
                    raise SeedProcessFailed(f"seed {seed} exited with {code} and no {run.result}; "
                                            f"its log: {run.log_path}")
                log.info("seed %d: done in %.0f s", seed, time.monotonic() - started)
                if on_done is not None:
                    on_done(run, time.monotonic() - started)
            if alive and time.monotonic() >= next_progress:
                next_progress = time.monotonic() + progress_s
                for seed, (run, _, _) in alive.items():
                    record = last_record(run.log_path)
                    if record and record != shown.get(seed):
                        shown[seed] = record
                        log.info("seed %d: %s", seed, record)
            if alive:
                time.sleep(poll_s)
    return [r.folder / r.result for r in runs]


# a logging record (not a progress bar): its date, its time, the rest
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d)(?:[,.]\d+)?\s+(.*)$")


def last_record(log_path: Path, *, tail_bytes: int = 16384) -> str | None:
    """The newest logging record (a line that starts with its date and time) in the last
    ``tail_bytes`` of ``log_path``, as "HH:MM:SS message"; None if there is none yet."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - tail_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(re.split(r"[\r\n]+", text)):
        record = _RECORD.match(line)
        if record:
            return f"{record.group(1)} {record.group(2).strip()}"[:300]
    return None


def _terminated(signum: int) -> SeedProcessFailed:
    """What a SIGTERM to the parent becomes (the children are stopped as it unwinds)."""
    return SeedProcessFailed(f"terminated by signal {signum}; every seed's process was stopped")
