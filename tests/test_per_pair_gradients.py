"""Per-pair gradients under Opacus match a brute-force loop over pairs (the privacy
unit is the pair, even though text layers see its two answers as two rows)."""

from __future__ import annotations

import pytest
import torch
from opacus.grad_sample import GradSampleModule

from client_sdk.dp_training import bt_loss, fold_rows
from fedsecure.data.shares import client_pairs
from fedsecure.models.encoding import encode_pairs
from fedsecure.models.reward import KINDS, RewardModelConfig, build_reward_model


@pytest.mark.parametrize("kind", KINDS)
def test_opacus_per_pair_gradients_match_brute_force(kind: str) -> None:
    torch.manual_seed(0)
    # No dropout, so the stacked pass and the per-pair loop compute the same function
    # (Opacus only records activations in training mode).
    model, tok = build_reward_model(RewardModelConfig(kind=kind, dropout=0.0))
    with torch.no_grad():  # off the zero-initialised head so every layer gets gradient
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    data = encode_pairs(client_pairs(name="a", clients=["a", "b"], kind=kind, limit=5), tok)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    expected = []
    for i in range(len(data)):
        model.zero_grad(set_to_none=True)
        bt_loss(model(data.batch(torch.tensor([i])))).backward()
        expected.append({n: p.grad.detach().clone() for n, p in params})
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    try:
        bt_loss(gsm(data.batch(torch.arange(len(data))))).backward()
        fold_rows(params, len(data), 2)
        for n, p in params:
            for i in range(len(data)):
                torch.testing.assert_close(p.grad_sample[i], expected[i][n], rtol=1e-4, atol=1e-6)
    finally:
        gsm._close()


@pytest.mark.parametrize("kind", KINDS)
def test_opacus_per_record_gradients_match_brute_force(kind: str) -> None:
    """A record's 13 candidates are 13 rows of the text layers; after folding, each
    per-sample gradient is exactly the record's own gradient (the record is the unit)."""
    from client_sdk.dp_training import listwise_loss
    from fedsecure.data.easyvqa import answers
    from fedsecure.data.preferences import records_from_pairs
    from fedsecure.models.encoding import encode_records

    torch.manual_seed(0)
    model, tok = build_reward_model(RewardModelConfig(kind=kind, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    records = records_from_pairs(client_pairs(name="a", clients=["a", "b"], kind=kind, limit=4), answer_set=answers())
    data = encode_records(records, tok)
    assert data.candidates == len(answers())
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        batch = data.batch(idx)
        return listwise_loss(model(batch), batch["candidate_mask"])

    expected = []
    for i in range(len(data)):
        model.zero_grad(set_to_none=True)
        loss_of(torch.tensor([i])).backward()
        expected.append({n: p.grad.detach().clone() for n, p in params})
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    try:
        batch = data.batch(torch.arange(len(data)))
        listwise_loss(gsm(batch), batch["candidate_mask"]).backward()
        fold_rows(params, len(data), data.candidates)
        for n, p in params:
            for i in range(len(data)):
                torch.testing.assert_close(p.grad_sample[i], expected[i][n], rtol=1e-4, atol=1e-6)
    finally:
        gsm._close()
