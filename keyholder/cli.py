"""``fedsecure keyholder``: run the key holder until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from fedsecure.kit import load_kit
from fedsecure.types import Role

from keyholder.keys import generate_keys
from keyholder.service import KeyHolderPolicy, start_keyholder
from fedsecure.transport.serving import add_serving_arguments, until_terminated, write_port_file

log = logging.getLogger("fedsecure.keyholder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure keyholder``."""
    add_serving_arguments(p, party="key holder", address_setting="keyholder_address",
                          state="its decryption log and revocation lists")
    p.add_argument("--keys", required=True, type=Path,
                   help="the key holder's own key folder, made by `fedsecure keyholder-keygen` (holds the CKKS secret)")
    p.add_argument("--quorum", type=int, default=2, help="fewest distinct contributors it decrypts a sum of")
    p.add_argument("--sample-fraction", type=float, default=1.0,
                   help="share of chunks re-added before decrypting (1.0 = all, at least one chunk)")


def main(args: argparse.Namespace) -> int:
    """Serve until a termination signal."""
    kit = load_kit(args.kit, expected_role=Role.KEYHOLDER)
    policy = KeyHolderPolicy(quorum=args.quorum, sample_fraction=args.sample_fraction)
    asyncio.run(_serve(kit, args.keys, args.address or kit.keyholder_address, args.state or kit.path / "state",
                       policy, args.port_file))
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
