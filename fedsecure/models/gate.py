"""FedCola's gate (arXiv 2404.12467; docs/design.md §1): a uni-modal client borrows the
other modality's aggregated attention adapters.

Every attention projection of the client's stack computes ``W x + B A x + g·B_aux A x``,
where ``B_aux`` is the other stack's published mean for the same slot (block, role), A is
the slot's shared frozen FFA-LoRA matrix (:mod:`fedsecure.models.slots`) and ``g`` a
learnable scalar that starts at exactly 0 every round and trains under DP-SGD like any
other parameter. After training the gate is merged — ``B ← B + g·B_aux`` — and removed: the
model computes the same function, the upload has the size it would have without the gate
(compression by linearity), and g itself never leaves the client.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.nn import functional as F

from fedsecure.errors import TrainingDiverged
from fedsecure.models.slots import slot_of

GATE_ATTR = "fedcola_aux"


class AuxGate(nn.Module):
    """``g · scaling · B_aux (A x)`` for one projection; input is ``A x`` (..., r)."""

    def __init__(self, b_aux: torch.Tensor, scaling: float) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(1))
        # A plain attribute, not a buffer: Opacus refuses trainable layers with buffers, and
        # the aux B is transient (merged away before the model is saved or uploaded).
        self.b_aux = b_aux.detach().clone()
        self.scaling = float(scaling)

    def aux(self, ax: torch.Tensor) -> torch.Tensor:
        """The ungated aux path ``scaling · B_aux (A x)``, in the dtype of ``A x`` (the plain
        attribute does not follow ``model.to(dtype)``)."""
        return F.linear(ax, self.b_aux.to(ax.dtype)) * self.scaling

    def forward(self, ax: torch.Tensor) -> torch.Tensor:
        return self.gate * self.aux(ax)


@register_grad_sampler(AuxGate)
def _gate_grad_sample(layer: AuxGate, activations: list[torch.Tensor],
                      backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    # d(loss_n)/dg = sum over positions of <backprop, aux path> for sample n (Opacus hooks).
    aux = layer.aux(activations[0].to(backprops.dtype))
    return {layer.gate: torch.einsum("n...o,n...o->n", backprops, aux).unsqueeze(1)}


def _aux_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    gate: AuxGate = getattr(module, GATE_ATTR)
    return output + gate(module.lora_A[module.fedcola_adapter](args[0]))


def gated_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> projection currently carrying a gate."""
    return {n: m for n, m in model.named_modules() if hasattr(m, GATE_ATTR)}


def attach_gates(model: nn.Module, *, stack: str, adapter: str,
                 aux: Mapping[str, torch.Tensor]) -> dict[str, AuxGate]:
    """Put a zero gate on every attention projection of ``stack``, with the aux B of the
    same slot position (``"0:q"`` → tensor). Every projection must find an aux tensor of
    its own B's shape; raises ValueError before anything is attached otherwise."""
    targets: list[tuple[str, nn.Module, torch.Tensor]] = []
    for name, module in model.named_modules():
        if not (name.startswith(f"{stack}.") and hasattr(module, "lora_B") and adapter in module.lora_B):
            continue
        slot = slot_of(name)
        if slot is None or not slot.is_attention:
            continue
        if hasattr(module, GATE_ATTR):
            raise ValueError(f"{name} already carries a gate")
        b = module.lora_B[adapter].weight
        b_aux = aux.get(slot.position)
        if b_aux is None or tuple(b_aux.shape) != tuple(b.shape):
            raise ValueError(f"aux adapter for {slot.position} is "
                             f"{'missing' if b_aux is None else tuple(b_aux.shape)}, expected {tuple(b.shape)}")
        if not torch.isfinite(b_aux).all():
            raise ValueError(f"aux adapter for {slot.position} holds non-finite values")
        targets.append((name, module, b_aux))
    if not targets or len(targets) != len(aux):
        raise ValueError(f"{len(aux)} aux adapters for {len(targets)} attention projections of the {stack} stack")
    gates = {}
    for name, module, b_aux in targets:
        gate = AuxGate(b_aux.to(module.lora_B[adapter].weight.dtype), module.scaling[adapter])
        setattr(module, GATE_ATTR, gate)
        module.fedcola_adapter = adapter
        module.fedcola_handle = module.register_forward_hook(_aux_hook)
        gates[name] = gate
    return gates


def gate_values(model: nn.Module) -> dict[str, float]:
    """The current value of every gate (for logs and checks)."""
    return {n: float(getattr(m, GATE_ATTR).gate.detach()) for n, m in gated_layers(model).items()}


def merge_gates(model: nn.Module) -> dict[str, float]:
    """``B ← B + g·B_aux`` on every gated projection, then remove the gates; returns the
    gate values merged. Raises TrainingDiverged (nothing merged, gates left in place) if
    any gate is not finite: a diverged gate must not reach the upload."""
    layers = gated_layers(model)
    values = gate_values(model)
    bad = [n for n, v in values.items() if not torch.isfinite(torch.tensor(v))]
    if bad:
        raise TrainingDiverged(f"gate of {bad[0]} is {values[bad[0]]}: training diverged")
    with torch.no_grad():
        for module in layers.values():
            gate: AuxGate = getattr(module, GATE_ATTR)
            module.lora_B[module.fedcola_adapter].weight.add_(gate.gate * gate.b_aux)
    remove_gates(model)
    return values


def remove_gates(model: nn.Module) -> None:
    """Drop every gate without merging (the model is as it was before attaching)."""
    for module in gated_layers(model).values():
        module.fedcola_handle.remove()
        delattr(module, GATE_ATTR)
        del module.fedcola_adapter, module.fedcola_handle
