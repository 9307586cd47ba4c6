"""Per-record gradients computed directly for layers that see a record as several rows.

A reward model runs a record's K candidate answers through its text layers as K rows of
one stacked batch (candidate-major: row j·B + i is candidate j of record i). Opacus's
hooks engine computes one gradient per *row* there — K·B gradients the size of each
parameter, written into a fresh K·B buffer — and :func:`client_sdk.dp_training.fold_rows`
then sums each record's K back into one. That is most of the DP step's cost over a plain
step (``fedsecure bench dp``).

:class:`RecordGradSampleModule` regroups a layer's activations and backprops by record
before Opacus's per-sample rule runs, so the rule's own sum over positions also sums over
the record's rows: one gradient per record comes out, with the same value the fold gives
(the test checks they agree), in a B-sized buffer. It applies only to layer types whose
rule is a sum over every dimension between the first and the last (linear and layer
norm); any other layer keeps per-row gradients and is folded afterwards as before. For a
linear layer the sum runs as one batched product per candidate row over the regrouped view,
whose slices are contiguous: nothing is copied.

Privacy (docs/design.md §2): the record stays the unit that is clipped; this changes how
its gradient is computed, not what it is.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from opacus.grad_sample import GradSampleModule

# Opacus's rules for these layers contract every dimension but the first (the sample) and
# the last (features): rows of one record placed in a middle dimension are summed with it.
_SUMS_OVER_MIDDLE = (torch.nn.Linear, torch.nn.LayerNorm)


def _record_linear(layer: torch.nn.Linear, activations: list[torch.Tensor],
                   backprops: torch.Tensor) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Opacus's per-sample rule for a linear layer — per sample, the sum over every middle
    dimension of backprop ⊗ activation — computed as batched products that copy nothing:

    - ``(samples, positions, features)``: one batched product;
    - ``(units, rows, positions, features)`` (a record's rows regrouped by
      :class:`RecordGradSampleModule`): one batched product per row, accumulated; each
      ``[:, k]`` slice of the regrouped view is contiguous.

    The narrower of the two operands is the transposed one: on the adapters' skinny shapes
    (rank 4-8 against 64-128 features) that halves the time of the per-sample step
    (a micro-benchmark of the text layers' shapes: 28 → 14 ms per DP step against Opacus's
    einsum). Lower ranks: Opacus's rule.
    """
    a = activations[0].to(backprops.dtype)
    if a.dim() < 3:
        return _OPACUS_LINEAR(layer, activations, backprops)
    out: dict[torch.nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        if a.dim() == 3:
            a, b = a.unsqueeze(1), backprops.unsqueeze(1)
        else:
            a, b = a.flatten(2, -2), backprops.flatten(2, -2)  # (units, rows, positions, features)
        # (units, out, in) = Σ_k b[:, k]ᵀ a[:, k], or its transpose from the narrower side
        narrow_in = a.shape[-1] < b.shape[-1]
        first, second = (a, b) if narrow_in else (b, a)
        gs = torch.bmm(first[:, 0].transpose(1, 2), second[:, 0])
        for k in range(1, a.shape[1]):
            gs.baddbmm_(first[:, k].transpose(1, 2), second[:, k])
        out[layer.weight] = gs.transpose(1, 2) if narrow_in else gs
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=tuple(range(1, backprops.dim() - 1)))
    return out


_OPACUS_LINEAR = GradSampleModule.GRAD_SAMPLERS[torch.nn.Linear]


class RecordGradSampleModule(GradSampleModule):
    """Opacus's hooks engine (:class:`opacus.grad_sample.GradSampleModule`) that gives one
    gradient per record for layers that see ``rows`` rows per record. Set :meth:`expect`
    before each forward pass."""

    # Opacus's registry of per-sample rules, with the clients' linear rule (a copy: Opacus's own stays as is)
    GRAD_SAMPLERS: ClassVar[dict] = {**GradSampleModule.GRAD_SAMPLERS, torch.nn.Linear: _record_linear}  # type: ignore[type-arg]
    rows: int = 1
    units: int = 0

    def expect(self, *, units: int, rows: int) -> None:
        """The next forward pass holds ``units`` records, each ``rows`` rows in the layers
        that see every candidate (``units`` rows in the others)."""
        if units < 1 or rows < 1:
            raise ValueError(f"need at least one record and one row per record, got {units} and {rows}")
        self.units, self.rows = units, rows

    def rearrange_grad_samples(self, *, module: torch.nn.Module, backprops: torch.Tensor, loss_reduction: str,
                               batch_first: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        r, u = self.rows, self.units
        regroup = r > 1 and backprops.shape[0] == r * u and isinstance(module, _SUMS_OVER_MIDDLE)
        if regroup:
            # Opacus scales the backprops by the layer's batch size ("mean" reduction) and
            # sizes the buffer it fills by it: r·u rows would give per-row gradients; the
            # record's gradient is its rows' sum divided by r (as the fold computes it), so
            # the factor is r·u / r = u, and the buffer holds one gradient per record.
            module.max_batch_len = u
        linear = type(module) is torch.nn.Linear and loss_reduction == "mean" and batch_first
        activations, backprops = super().rearrange_grad_samples(
            module=module, backprops=backprops, loss_reduction="sum" if linear else loss_reduction,
            batch_first=batch_first)
        if linear:
            # The "mean" factor scales the per-sample gradient, which is bilinear in the two:
            # scale the narrower (an adapter's rank-wide side), not the wide backprops.
            n = module.max_batch_len
            if activations[0].shape[-1] < backprops.shape[-1]:
                activations = [activations[0] * n]
            else:
                backprops = backprops * n
        if not regroup:
            return activations, backprops
        return [_by_record(a, r, u) for a in activations], _by_record(backprops, r, u)


def _by_record(t: torch.Tensor, rows: int, units: int) -> torch.Tensor:
    """(rows·units, *rest), candidate-major → a view (units, rows, *rest): a record's rows
    side by side (nothing copied when ``t`` is contiguous)."""
    return t.reshape(rows, units, *t.shape[1:]).transpose(0, 1)
