"""``fedsecure server``: run the aggregation server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from fedsecure.kit import Kit, load_kit
from fedsecure.settings import add_options, config_schema, from_namespace
from fedsecure.task import SealedTask, Task
from fedsecure.transport.serving import until_terminated, write_port_file
from fedsecure.types import Role
from server.app import serve_settings
from server.settings import TITLES, ServerSettings

log = logging.getLogger("fedsecure.server")

# `fedsecure server --config run.toml`: section -> key -> option (docs/configuration.md).
CONFIG_SCHEMA = config_schema(ServerSettings)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure server`` (:class:`ServerSettings`)."""
    p.add_argument("--config", type=Path, help="a TOML run configuration (docs/configuration.md); "
                                                "flags override it")
    add_options(p, ServerSettings, titles=TITLES)


def main(args: argparse.Namespace, *, task: Task) -> int:
    """Serve ``task`` until a termination signal; state survives in the state folder."""
    settings = from_namespace(ServerSettings, args)
    kit = load_kit(settings.kit, expected_role=Role.SERVER)
    # A server on another task than its kit's would score and align on answers the
    # clients' models were never built for: refused at start (issue 25, bad input).
    SealedTask.from_settings(kit.settings).require(task)
    asyncio.run(_serve(settings, kit, task))
    return 0


async def _serve(settings: ServerSettings, kit: Kit, task: Task) -> None:
    running = await serve_settings(settings=settings, kit=kit, task=task)
    write_port_file(settings.port_file, running.port)
    await until_terminated()
    log.info("shutting down")
    await running.stop(grace=2.0)
