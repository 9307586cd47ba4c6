"""What the server and key holder processes share: announcing the bound port, serving
until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path


def write_port_file(path: Path | None, port: int) -> None:
    """Write the bound port atomically (readers never see a half-written number)."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, path)


def wait_for_port_file(path: Path, proc: subprocess.Popen[bytes], *, what: str, timeout_s: float,
                       log: Path | None = None) -> int:
    """The port a process launched with ``--port-file path`` wrote once serving; raises
    (with the tail of its ``log``) if it exits first or does not serve within ``timeout_s``."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        if proc.poll() is not None:
            tail = f"; see {log}:\n{log.read_text(errors='replace')[-2000:]}" if log is not None else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before serving{tail}")
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not start within {timeout_s:.0f} s")


async def until_terminated() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
