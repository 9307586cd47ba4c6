"""What the server and key holder processes share: announce the bound port, then serve
until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path


def write_port_file(path: Path | None, port: int) -> None:
    """Write the bound port atomically (readers never see a half-written number)."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, path)


async def until_terminated() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
