"""Child processes a parent must never leave running: started with their own log and
thread count, stopped together (terminate, a grace, kill, reap) however the parent ends.

Why: the demo starts a key holder, a server and clients; the experiment starts one process
per seed; both pretrain backbones in children. SIGTERM (``kill``, a job's time limit) ends
Python without running ``finally`` blocks, which would leave every child running, holding
ports, cores and files (seen: the terminated-demo test once found a client left). While a
:class:`ChildProcesses` is active on the main thread, SIGTERM is turned into an exception,
so the ``with`` block unwinds and stops the children; a SIGTERM that lands while a child is
being started is held back until that child is recorded, or the child would escape the
shutdown. Later SIGTERMs are ignored so that the (bounded) shutdown is not cut short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

GRACE_S = 10.0  # a stopped child's time to exit on SIGTERM before it is killed


class Terminated(RuntimeError):
    """The parent received SIGTERM; its children were (or are being) stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


class _Starting:
    """Signals are process-wide, so the "a child is being started" state is too: whichever
    guard's handler is installed must hold the signal back while any guard starts a child."""

    depth: int = 0
    pending: tuple[int, Callable[[int], BaseException]] | None = None


_STARTING = _Starting()


class ChildProcesses:
    """The children one parent started; a context manager that stops them all on exit.

    ``on_sigterm`` makes the exception a SIGTERM becomes (the caller's own sentence);
    ``handle_sigterm=False`` leaves the signal to an enclosing guard (or the default), and
    the exit still stops every child. Only the main thread may set a handler; elsewhere the
    guard only stops its children on exit."""

    def __init__(self, *, on_sigterm: Callable[[int], BaseException] = Terminated, handle_sigterm: bool = True,
                 grace_s: float = GRACE_S) -> None:
        if grace_s < 0:
            raise ValueError("grace_s must be >= 0")
        self._on_sigterm = on_sigterm
        self._handle = handle_sigterm
        self._grace_s = grace_s
        self._procs: list[subprocess.Popen[bytes]] = []
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> ChildProcesses:
        if self._handle and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        noted: list[int] = []
        if self._installed:  # a SIGTERM now must not cut the shutdown short: noted, raised after it
            signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))
        try:
            self.stop_all()
        finally:
            if self._installed:
                signal.signal(signal.SIGTERM, self._previous)
                self._installed = False
        if noted and exc[0] is None:
            raise self._on_sigterm(noted[0])

    def start(self, argv: Sequence[str], *, log: Path, stdout: Path | None = None,
              threads: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output in ``log`` (or its standard output in ``stdout``
        and its errors in ``log``), ``threads`` cores for its math libraries (children
        sharing the machine must not oversubscribe it), and record it before a SIGTERM
        can interrupt."""
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        log.parent.mkdir(parents=True, exist_ok=True)
        _STARTING.depth += 1
        try:
            # the child holds its own copies of the descriptors; ours close with the block
            with open(log, "wb") as err:
                if stdout is None:
                    proc = subprocess.Popen(list(argv), stdout=err, stderr=subprocess.STDOUT, env=env)
                else:
                    with open(stdout, "wb") as out:
                        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env)
            self._procs.append(proc)
        finally:
            _STARTING.depth -= 1
        if _STARTING.depth == 0 and _STARTING.pending is not None:
            (signum, make), _STARTING.pending = _STARTING.pending, None
            raise make(signum)
        return proc

    def stop_all(self) -> None:
        """Terminate every child still running, kill those that outlive the grace, reap
        all (an unreaped child that is still dying outlives the parent). Idempotent."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + self._grace_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _sigterm(self, signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the shutdown that follows is bounded: let it finish
        if _STARTING.depth:  # raised once the child being started is recorded (start)
            _STARTING.pending = (signum, self._on_sigterm)
            return
        raise self._on_sigterm(signum)
