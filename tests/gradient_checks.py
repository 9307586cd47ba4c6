"""One check shared by the per-unit gradient tests: Opacus's per-sample gradients, folded
from rows to privacy units, equal a brute-force loop that back-propagates each unit alone —
and so do the per-record gradients that the clients' engine computes directly
(:class:`client_sdk.record_grad_sample.RecordGradSampleModule`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from opacus.grad_sample import GradSampleModule

from client_sdk.dp_training import fold_rows
from client_sdk.record_grad_sample import RecordGradSampleModule


def assert_per_unit_gradients_match(model: torch.nn.Module, loss_of: Callable[[torch.nn.Module, torch.Tensor],
                                                                           torch.Tensor],
                                    *, units: int, rows: int, checked: Sequence[tuple[str, torch.nn.Parameter]],
                                    atol: float = 1e-6) -> list[dict[str, torch.Tensor]]:
    """``loss_of(module, idx)`` is the mean loss of the units at ``idx`` through ``module``;
    every unit is ``rows`` rows of the text layers. Checks the ``checked`` parameters and
    returns the brute-force gradients (callers assert they are not all zero where it matters)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    expected = []
    for i in range(units):
        model.zero_grad(set_to_none=True)
        loss_of(model, torch.tensor([i])).backward()
        expected.append({n: p.grad.detach().clone() for n, p in checked})  # type: ignore[union-attr]
    for engine in (GradSampleModule, RecordGradSampleModule):
        gsm = engine(model, batch_first=True, loss_reduction="mean")
        try:
            if isinstance(gsm, RecordGradSampleModule):
                gsm.expect(units=units, rows=rows)
            loss_of(gsm, torch.arange(units)).backward()
            fold_rows(params, units, rows)
            for n, p in checked:
                for i in range(units):
                    torch.testing.assert_close(p.grad_sample[i], expected[i][n], rtol=1e-4, atol=atol,
                                               msg=lambda m: f"{engine.__name__}, {n}, unit {i}: {m}")
        finally:
            gsm._close()
            for _, p in params:
                p.grad_sample = None
                p.grad = None
    return expected
