"""Per-pair gradients under Opacus match a brute-force loop over pairs (the privacy
unit is the pair, even though text layers see its two answers as two rows)."""

from __future__ import annotations

import pytest
import torch

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.dp_training import bt_loss
from fedsecure.models.encoding import encode_pairs
from fedsecure.models.reward import KINDS, build_reward_model
from tasks.easyvqa.data import answers
from tasks.easyvqa.shares import client_pairs
from tests.gradient_checks import assert_per_unit_gradients_match


@pytest.mark.parametrize("kind", KINDS)
def test_opacus_per_pair_gradients_match_brute_force(kind: str) -> None:
    torch.manual_seed(0)
    # No dropout, so the stacked pass and the per-pair loop compute the same function
    # (Opacus only records activations in training mode).
    model, tok = build_reward_model(easyvqa_reward_config(kind=kind, dropout=0.0))
    with torch.no_grad():  # off the zero-initialised head so every layer gets gradient
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    data = encode_pairs(client_pairs(name="a", clients=["a", "b"], kind=kind, limit=5), tok, answers=answers())
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert_per_unit_gradients_match(model, lambda m, idx: bt_loss(m(data.batch(idx))), units=len(data), rows=2,
                                    checked=params)


@pytest.mark.parametrize("kind", KINDS)
def test_opacus_per_record_gradients_match_brute_force(kind: str) -> None:
    """A record's 13 candidates are 13 rows of the text layers; after folding, each
    per-sample gradient is exactly the record's own gradient (the record is the unit)."""
    from client_sdk.dp_training import listwise_loss
    from fedsecure.data.preferences import records_from_pairs
    from fedsecure.models.encoding import encode_records
    from tasks.easyvqa.data import answers

    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_reward_config(kind=kind, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    records = records_from_pairs(client_pairs(name="a", clients=["a", "b"], kind=kind, limit=4), answer_set=answers())
    data = encode_records(records, tok, answers=answers())
    assert data.candidates == len(answers())
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def loss_of(module: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
        batch = data.batch(idx)
        return listwise_loss(module(batch), batch["candidate_mask"])
    assert_per_unit_gradients_match(model, loss_of, units=len(data), rows=data.candidates, checked=params)


@pytest.mark.parametrize("shape", [(5, 3), (5, 7, 3), (5, 4, 7, 3), (5, 4, 2, 7, 3)])
@pytest.mark.parametrize("features", [(8, 64), (64, 8)])
def test_record_linear_rule_equals_opacus_rule(shape: tuple[int, ...], features: tuple[int, int]) -> None:
    """The clients' linear rule (batched products, narrow side transposed) computes what
    Opacus's einsum rule computes, for every input rank and both orientations."""
    from opacus.grad_sample import GradSampleModule

    from client_sdk.record_grad_sample import RecordGradSampleModule

    torch.manual_seed(0)
    layer = torch.nn.Linear(*features)
    x = torch.randn(*shape[:-1], features[0])
    g = torch.randn(*shape[:-1], features[1])
    ours = RecordGradSampleModule.GRAD_SAMPLERS[torch.nn.Linear](layer, [x], g)
    theirs = GradSampleModule.GRAD_SAMPLERS[torch.nn.Linear](layer, [x], g)
    assert set(ours) == {layer.weight, layer.bias}
    for p in (layer.weight, layer.bias):
        assert ours[p].shape == (shape[0], *p.shape)
        torch.testing.assert_close(ours[p], theirs[p], rtol=1e-4, atol=1e-5)
