"""A parent's children are stopped however it ends: on leaving the block, on an error, on
SIGTERM (even one that lands while a child is being started); one that ignores SIGTERM is
killed after the grace; every child is reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fedsecure.child_processes as child_processes
from fedsecure.child_processes import ChildProcesses, Terminated

SLEEP = (sys.executable, "-c", "import time; time.sleep(300)")
# a child that ignores SIGTERM and says so once it does (so the test does not race its start)
STUBBORN = (sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                  "print('ready', flush=True); time.sleep(300)")


def _wait_for(path: Path, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.05)


def test_leaving_the_block_stops_and_reaps_every_child_with_its_own_log_and_threads(tmp_path: Path) -> None:
    with ChildProcesses() as children:
        sleeper = children.start(SLEEP, log=tmp_path / "sleeper.log")
        talker = children.start((sys.executable, "-c", "import os, sys; print(os.environ['OMP_NUM_THREADS']); "
                                 "print('oops', file=sys.stderr)"),
                                log=tmp_path / "talker.err", stdout=tmp_path / "talker.out", threads=3)
        talker.wait(30)
    assert sleeper.returncode == -signal.SIGTERM and talker.returncode == 0
    assert (tmp_path / "talker.out").read_text() == "3\n" and "oops" in (tmp_path / "talker.err").read_text()
    with pytest.raises(ValueError, match="threads"):
        ChildProcesses().start(SLEEP, log=tmp_path / "x.log", threads=0)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(KeyError), ChildProcesses(grace_s=0.5) as children:
        stubborn = children.start(STUBBORN, log=tmp_path / "stubborn.log")
        _wait_for(tmp_path / "stubborn.log", "ready")
        raise KeyError("an error in the parent")
    assert stubborn.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 30


def test_sigterm_becomes_the_callers_exception_and_the_handler_is_put_back(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        with pytest.raises(LookupError, match="signal 15"), \
                ChildProcesses(on_sigterm=lambda s: LookupError(f"signal {s}")) as children:
            sleeper = children.start(SLEEP, log=tmp_path / "sleeper.log")
            timer.start()
            sleeper.wait(60)  # interrupted by the handler
    finally:
        timer.cancel()
    assert sleeper.returncode == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_sigterm_while_a_child_starts_is_raised_once_it_is_recorded(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_popen = subprocess.Popen

    def popen_then_sigterm(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        proc = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        os.kill(os.getpid(), signal.SIGTERM)  # lands before start() records the child
        time.sleep(0.2)  # the handler runs here, in the main thread
        return proc

    monkeypatch.setattr(child_processes.subprocess, "Popen", popen_then_sigterm)
    with pytest.raises(Terminated, match="signal 15"), ChildProcesses() as children:
        children.start(SLEEP, log=tmp_path / "sleeper.log")
        pytest.fail("start() returned although a SIGTERM arrived")
    (proc,) = children._procs
    assert proc.returncode == -signal.SIGTERM  # recorded, so stopped and reaped


def test_a_sigterm_during_the_shutdown_does_not_cut_it_short(tmp_path: Path) -> None:
    with pytest.raises(Terminated), ChildProcesses(grace_s=1.0) as children:
        stubborn = children.start(STUBBORN, log=tmp_path / "stubborn.log")
        _wait_for(tmp_path / "stubborn.log", "ready")
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        # the block ends normally; the SIGTERM lands while the stubborn child is given its grace
    assert stubborn.returncode == -signal.SIGKILL  # the shutdown went on to the kill, then raised
