"""FSDP for policies that do not fit one GPU (``fedsecure align --parallel fsdp`` under
``torchrun``): each transformer block and then the whole model are sharded with PyTorch's
FSDP2 (``fully_shard``), so a rank holds 1/world of the parameters, gradients and
optimiser state, and gathers a block only while it computes with it.

Checkpoints keep their format: trainable weights and optimiser state are gathered into
full tensors on every rank (a collective), keyed as without FSDP, and rank 0 writes them.
The engine records the mode in the checkpoint and resumes it only in the same mode (the
one combination tested).

With full fine-tuning the frozen reference is a full copy on every rank (taken before
sharding); with LoRA the reference is the sharded base itself (adapters off), so LoRA is
the setting for the largest policies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor, distribute_tensor

PARALLEL_MODES = ("ddp", "fsdp")


def shard(model: nn.Module) -> int:
    """Shard each of ``model``'s transformer blocks (the classes Hugging Face lists in
    ``_no_split_modules``), then the root; returns how many blocks were sharded."""
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(model, "_no_split_modules", None) or ())
    if hasattr(model, "get_base_model"):  # a peft wrapper: the blocks are the base model's
        names |= set(getattr(model.get_base_model(), "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no transformer blocks (_no_split_modules): "
                         "FSDP needs them to shard by block")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return len(blocks)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every rank when sharded: call on every rank)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def load_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, keeping only this rank's shard when sharded."""
    full = full.to(param.dtype)
    if isinstance(param, DTensor):
        param.copy_(distribute_tensor(full.to(param.device), param.device_mesh, param.placements))
    else:
        param.copy_(full.to(param.device))


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of a sharded model as full CPU tensors on rank 0 (empty on the others);
    a collective: call on every rank (exporting the trained policy)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """The optimiser's state as full tensors, keyed like ``optimizer.state_dict()`` (by the
    position of each parameter in ``names``, the order the optimiser was built in), so the
    checkpoint format does not change. A collective under FSDP: call on every rank."""
    if not _sharded(model):
        return optimizer.state_dict()
    full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))
    if not full:
        return {}  # gathered to rank 0 only (cpu_offload): the other ranks write nothing
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[fqn]: slots for fqn, slots in full["state"].items()},
            "param_groups": [{**g, "params": [index[fqn] for fqn in g["params"]]} for g in full["param_groups"]]}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         names: list[str]) -> None:
    """Restore :func:`optimizer_state`'s output (each rank keeps its shard)."""
    if not _sharded(model):
        optimizer.load_state_dict(state)
        return
    by_name = {"state": {names[int(i)]: slots for i, slots in state["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name,
                             options=StateDictOptions(full_state_dict=True))
