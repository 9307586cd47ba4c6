"""``fedsecure keyholder``: run the key holder until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from fedsecure.kit import load_kit
from fedsecure.types import Role

from fedsecure.settings import add_options, config_schema, from_namespace
from fedsecure.transport.serving import until_terminated, write_port_file
from keyholder.keys import generate_keys
from keyholder.service import start_keyholder
from keyholder.settings import KeyholderSettings

log = logging.getLogger("fedsecure.keyholder")


# `fedsecure keyholder --config keyholder.toml`: section -> key -> option (docs/configuration.md).
CONFIG_SCHEMA = config_schema(KeyholderSettings)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure keyholder`` (:class:`KeyholderSettings`)."""
    p.add_argument("--config", type=Path, help="a TOML key-holder configuration (docs/configuration.md); "
                                                "flags override it")
    add_options(p, KeyholderSettings, titles={"policy": "what it decrypts"})


def main(args: argparse.Namespace) -> int:
    """Serve until a termination signal."""
    settings = from_namespace(KeyholderSettings, args)
    kit = load_kit(settings.kit, expected_role=Role.KEYHOLDER)
    asyncio.run(_serve(kit, settings.keys, settings.address or kit.keyholder_address, settings.state_dir(kit.path),
                       settings.policy(), settings.port_file))
    return 0


def add_keygen_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure keyholder-keygen``."""
    p.add_argument("--keys", required=True, type=Path,
                   help="folder for the key pair (created 0700; the secret stays here, the public context is "
                        "handed to `fedsecure provision --keyholder-context`)")


def keygen_main(args: argparse.Namespace) -> int:
    """Make the key holder's CKKS key pair; print where the public part is."""
    public = generate_keys(keys_dir=args.keys)
    print(f"CKKS key pair created in {args.keys} (the secret key never leaves this folder)")
    print(f"hand {public} to provisioning: fedsecure provision --keyholder-context {public} ...")
    return 0


async def _serve(kit, keys_dir, address, state_dir, policy, port_file) -> None:  # type: ignore[no-untyped-def]
    running = await start_keyholder(kit=kit, keys_dir=keys_dir, address=address, state_dir=state_dir, policy=policy)
    write_port_file(port_file, running.port)
    await until_terminated()
    log.info("key holder shutting down")
    await running.stop(grace=2.0)
