"""``fedsecure backbone pretrain --out DIR``: pretrain the federation's backbone on the
server's public data and print its manifest (with the SHA-256 to seal in the kits)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedsecure.models.backbone import BackboneShape

from server.backbone.pretrain import PretrainSettings, pretrain_backbone

if TYPE_CHECKING:
    from fedsecure.task import Task


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fedsecure backbone``."""
    p.add_argument("action", choices=["pretrain"], help="pretrain: build the backbone folder from public data")
    p.add_argument("--out", required=True, type=Path, help="the backbone folder to write (must be new or empty)")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps")
    p.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the task's split (the server's public parts)")
    default = BackboneShape()
    p.add_argument("--layers", type=int, default=default.layers, help="blocks per stack (architecture)")
    p.add_argument("--hidden", type=int, default=default.hidden, help="width of every block")
    p.add_argument("--heads", type=int, default=default.heads, help="attention heads")
    p.add_argument("--intermediate", type=int, default=default.intermediate, help="MLP width")
    p.add_argument("--threads", type=int, default=PretrainSettings.threads, help="torch CPU threads")


def main(args: argparse.Namespace, *, task: Task) -> int:
    """Pretrain on ``task``'s public data and print the manifest as JSON."""
    logging.getLogger("fedsecure.server.backbone").setLevel(logging.INFO)
    shape = dataclasses.replace(BackboneShape(), layers=args.layers, hidden=args.hidden, heads=args.heads,
                                intermediate=args.intermediate)
    manifest = pretrain_backbone(PretrainSettings(out=args.out, shape=shape, steps=args.steps, seed=args.seed,
                                                  data_seed=args.data_seed, threads=args.threads), task=task)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"seal it: fedsecure provision ... --backbone {args.out}", file=sys.stderr)
    return 0
