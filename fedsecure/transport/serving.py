"""What the server and key holder processes share: their common command-line options,
announcing the bound port, serving until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path


def add_serving_arguments(p: argparse.ArgumentParser, *, party: str, address_setting: str, state: str) -> None:
    """``--kit``, ``--address``, ``--state`` and ``--port-file``, worded for ``party``."""
    p.add_argument("--kit", required=True, type=Path, help=f"the {party} kit folder")
    p.add_argument("--address", help=f"host:port to bind (default: the kit's {address_setting}; port 0 = any)")
    p.add_argument("--state", type=Path, help=f"state folder: {state} (default: KIT/state)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")


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
