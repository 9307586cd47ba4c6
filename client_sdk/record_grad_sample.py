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
norm); any other layer keeps per-row gradients and is folded afterwards as before.

Privacy (docs/design.md §2): the record stays the unit that is clipped; this changes how
its gradient is computed, not what it is.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModule

# Opacus's rules for these layers contract every dimension but the first (the sample) and
# the last (features): rows of one record placed in a middle dimension are summed with it.
_SUMS_OVER_MIDDLE = (torch.nn.Linear, torch.nn.LayerNorm)


class RecordGradSampleModule(GradSampleModule):
    """Opacus's hooks engine (:class:`opacus.grad_sample.GradSampleModule`) that gives one
    gradient per record for layers that see ``rows`` rows per record. Set :meth:`expect`
    before each forward pass."""

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
        activations, backprops = super().rearrange_grad_samples(
            module=module, backprops=backprops, loss_reduction=loss_reduction, batch_first=batch_first)
        r, u = self.rows, self.units
        if r == 1 or backprops.shape[0] != r * u or not isinstance(module, _SUMS_OVER_MIDDLE):
            return activations, backprops
        # Opacus scaled the backprops by its batch size r·u ("mean" reduction); the fold's
        # per-record gradient is the rows' sum divided by r: the same division here.
        module.max_batch_len = u  # the buffer Opacus fills: one row per record
        return [_by_record(a, r, u) for a in activations], _by_record(backprops, r, u) / r


def _by_record(t: torch.Tensor, rows: int, units: int) -> torch.Tensor:
    """(rows·units, *rest), candidate-major → (units, rows·rest[0], *rest[1:]) (or
    (units, rows, feature) for a 2-D tensor): a record's rows side by side."""
    t = t.reshape(rows, units, *t.shape[1:]).transpose(0, 1)
    return t.reshape(units, -1, *t.shape[3:]) if t.dim() > 3 else t
