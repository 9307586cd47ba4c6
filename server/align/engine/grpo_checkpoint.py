"""GRPO training checkpoints: trainable weights and optimiser state in safetensors, the
step, configuration and policy fingerprint in JSON. Never pickle (nothing on disk is
trusted to execute code when loaded).

Layout: ``<dir>/step-000012/{trainable,optimizer}.safetensors, state.json`` and
``<dir>/latest.json`` naming the newest complete one. A checkpoint is written to a
temporary directory and renamed into place, then ``latest.json`` is replaced atomically,
so an interruption at any point leaves the previous checkpoint usable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedsecure.errors import CheckpointError

FORMAT = "fedsecure-grpo/v1"
LATEST = "latest.json"


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint restores."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    meta: dict[str, Any]
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    extra_meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, slots in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, *, step: int, trainable: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], meta: dict[str, Any], extra: dict[str, torch.Tensor] | None = None,
                    extra_meta: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` under ``root`` and point ``latest.json`` at it. ``extra``
    and ``extra_meta`` hold what a caller trains alongside the policy (e.g. the router and
    the ALIGN stage's counters), saved in the same atomic step."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=root))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        if extra:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()}, str(tmp / "extra.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"format": FORMAT, "step": step, "optimizer": opt_meta,
                                                    "meta": meta, "extra_meta": extra_meta or {}},
                                                   indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(json.dumps({"checkpoint": final.name, "step": step}))
    os.replace(pointer, root / LATEST)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None when there is none yet."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer} is corrupt: {exc}") from exc
    if not isinstance(name, str) or "/" in name or not name.startswith("step-"):
        raise CheckpointError(f"{pointer} names {name!r}, not a checkpoint directory")
    return root / name


def load_checkpoint(path: Path) -> TrainingState:
    """Read one checkpoint directory; raises CheckpointError if any part is missing or bad."""
    files = [path / "state.json", path / "trainable.safetensors", path / "optimizer.safetensors"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}")
    try:
        state = json.loads(files[0].read_text())
        if state.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}, expected {FORMAT}")
        trainable = load_file(str(files[1]))
        optimizer = _optimizer_state(load_file(str(files[2])), state["optimizer"])
        extra = load_file(str(path / "extra.safetensors")) if (path / "extra.safetensors").is_file() else {}
        return TrainingState(step=int(state["step"]), trainable=trainable, optimizer=optimizer, meta=state["meta"],
                             extra=extra, extra_meta=dict(state.get("extra_meta") or {}))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
