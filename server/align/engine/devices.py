"""Where the engine runs: CUDA with bf16 autocast when there is a GPU, CPU otherwise
(overridable), and one process per GPU under ``torchrun`` with DDP."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    """The device, the autocast dtype (None = full precision) and this process's rank in
    a ``torchrun`` job (rank 0 of 1 when run alone)."""

    device: torch.device
    autocast: torch.dtype | None
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether gradients are averaged across processes (DDP)."""
        return self.world_size > 1


def select_placement(preference: str = "auto", *, bf16: bool = True) -> Placement:
    """``auto``: CUDA (bf16 autocast) if available, else CPU; ``cpu``/``cuda`` force one.
    Under ``torchrun`` (WORLD_SIZE > 1) the process group is started here (NCCL on GPU,
    gloo on CPU) and each rank takes its local GPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda asked for, but no CUDA device is available")
    use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        # a bounded wait: a rank that died or diverged fails the others within minutes
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo",
                                             timeout=datetime.timedelta(minutes=10))
    return Placement(device=device, autocast=torch.bfloat16 if use_cuda and bf16 else None,
                     rank=rank, world_size=world)
