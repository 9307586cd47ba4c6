"""``fedsecure client``: run one federation participant until the run ends."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedsecure.kit import load_kit
from fedsecure.types import Capabilities, Modality, Role

from client_sdk.client import FederatedClient


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure client``."""
    p.add_argument("--kit", required=True, type=Path, help="this client's kit folder")
    p.add_argument("--address", help="server host:port (default: the kit's server_address)")
    p.add_argument("--modalities", default="image_text", help="comma-separated: image, text, image_text")
    p.add_argument("--samples", type=int, default=0, help="number of local preference pairs to declare")
    p.add_argument("--summary", type=Path, help="write a JSON summary of the run here")
    p.add_argument("--max-idle", type=float, default=None, help="give up after this many idle seconds")


def main(args: argparse.Namespace) -> int:
    """Enrol, serve tasks until the run finishes, print a summary."""
    kit = load_kit(args.kit, expected_role=Role.CLIENT)
    try:
        modalities = tuple(Modality[m.strip().upper()] for m in args.modalities.split(",") if m.strip())
    except KeyError as exc:
        raise ValueError(f"unknown modality {exc}; choose from image, text, image_text") from exc
    caps = Capabilities(modalities=modalities, sample_counts=(("pairs", args.samples),))
    with FederatedClient(kit=kit, address=args.address, capabilities=caps) as client:
        summary = client.run(max_idle_s=args.max_idle)
    doc = {"client": kit.name, "completed": dict(summary.completed), "declined": dict(summary.declined),
           "refused": summary.refused, "retries": summary.retries, "run_state": summary.run_state}
    if args.summary is not None:
        args.summary.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))
    return 0
