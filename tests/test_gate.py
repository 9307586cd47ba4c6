"""FedCola's gate: shared A by slot across stacks, a gate that starts at exactly 0 and
trains under DP-SGD (per-pair gradients exact), the merge B + g·B_aux that keeps the
function and the upload size, and refusals for bad aux adapters and diverged gates."""

from __future__ import annotations

import pytest
import torch

from tasks.easyvqa.data import answers
from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.dp_training import DPSettings, DPStepper, bt_loss
from fedsecure.errors import TrainingDiverged
from fedsecure.models.encoding import encode_pairs
from fedsecure.models.gate import (
    attach_gates,
    gate_values,
    gated_layers,
    merge_gates,
    remove_gates,
)
from fedsecure.models.reward import (
    SHARED_ADAPTER,
    build_reward_model,
)
from fedsecure.models.slots import Slot, slot_of
from tasks.easyvqa.shares import client_pairs
from tests.gradient_checks import assert_per_unit_gradients_match


def _aux_for(model: torch.nn.Module, scale: float = 0.2, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {slot_of(n).position: torch.randn(p.shape, generator=gen) * scale  # type: ignore[union-attr]
            for n, p in model.named_parameters() if f"lora_B.{SHARED_ADAPTER}" in n}


def _model_with_data(kind: str, n: int = 6):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_reward_config(kind=kind, dropout=0.0))
    with torch.no_grad():  # off the zero-initialised head and B, so every path carries gradient
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    data = encode_pairs(client_pairs(name="a", clients=["a", "b"], kind=kind, limit=n), tok, answers=answers())
    return model, data


def test_attention_a_is_drawn_by_slot_and_shared_across_stacks() -> None:
    model, _ = build_reward_model(easyvqa_reward_config(kind="image_text", federation_seed=5))
    by_slot: dict[Slot, torch.Tensor] = {}
    for name, module in model.named_modules():
        if name.endswith(f"lora_A.{SHARED_ADAPTER}"):
            by_slot[slot_of(name)] = module.weight.detach()  # type: ignore[index]
    assert len(by_slot) == 16  # 2 stacks x 2 blocks x (q, k, v, o)
    for slot, a in by_slot.items():
        twin = by_slot[Slot("image" if slot.stack == "text" else "text", slot.block, slot.role)]
        assert torch.equal(a, twin)  # BERT's "query" and ViT's "q_proj" of a block: one A
    assert not torch.equal(by_slot[Slot("text", 0, "q")], by_slot[Slot("text", 0, "k")])
    assert not torch.equal(by_slot[Slot("text", 0, "q")], by_slot[Slot("text", 1, "q")])


@pytest.mark.parametrize("kind,stack", [("text", "text"), ("image", "image")])
def test_gate_starts_at_zero_and_keeps_the_function(kind: str, stack: str) -> None:
    model, data = _model_with_data(kind)
    model.eval()
    batch = data.batch(torch.arange(len(data)))
    before = model(batch)
    gates = attach_gates(model, stack=stack, adapter=SHARED_ADAPTER, aux=_aux_for(model))
    assert len(gates) == 8 and set(gate_values(model).values()) == {0.0}
    assert all(g.gate.requires_grad for g in gates.values())
    assert any(".fedcola_aux.gate" in n for n in model.trainable_names())
    torch.testing.assert_close(model(batch), before, rtol=0, atol=0)  # g = 0: exactly the same margins


@pytest.mark.parametrize("kind,stack", [("text", "text"), ("image", "image")])
def test_gate_per_pair_gradients_match_brute_force(kind: str, stack: str) -> None:
    model, data = _model_with_data(kind, n=4)
    attach_gates(model, stack=stack, adapter=SHARED_ADAPTER, aux=_aux_for(model))
    gates = [(n, p) for n, p in model.named_parameters() if n.endswith("fedcola_aux.gate")]
    expected = assert_per_unit_gradients_match(model, lambda m, idx: bt_loss(m(data.batch(idx))), units=len(data),
                                               rows=2, checked=gates, atol=1e-7)
    assert any(float(e[n].abs()) > 0 for e in expected for n, _ in gates)


def test_gate_moves_under_dp_sgd_and_the_merge_is_b_plus_g_b_aux() -> None:
    model, data = _model_with_data("text", n=64)
    aux = _aux_for(model, scale=0.5)
    attach_gates(model, stack="text", adapter=SHARED_ADAPTER, aux=aux)
    settings = DPSettings(batch_size=32, max_grad_norm=1.0)
    with DPStepper(model=model, settings=settings, noise_multiplier=0.5, learning_rate=0.05,
                   sample_rate=0.5) as stepper:
        for _ in range(5):
            stepper.step(data)
    g = gate_values(model)
    assert len(g) == 8 and all(v != 0.0 for v in g.values())  # every gate moved off exactly 0
    params = dict(model.named_parameters())
    b_before = {n: params[f"{n}.lora_B.{SHARED_ADAPTER}.weight"].detach().clone() for n in g}
    # The function check runs in float64, where B·x + g·(B_aux·x) and (B + g·B_aux)·x agree far
    # below the tolerance; in float32 their rounding differs by ~1e-6 (a CI run saw 1.2e-6).
    model.eval().double()
    batch = data.batch(torch.arange(16))
    gated = model(batch)
    merged = merge_gates(model)
    assert merged == g and not gated_layers(model)
    assert not any("fedcola" in n for n in model.state_dict())  # nothing of the gate is saved or shared
    for n, value in g.items():
        expected = b_before[n] + torch.tensor(value) * aux[slot_of(n).position]  # type: ignore[union-attr]
        torch.testing.assert_close(params[f"{n}.lora_B.{SHARED_ADAPTER}.weight"].detach(), expected.double())
        assert params[f"{n}.lora_B.{SHARED_ADAPTER}.weight"].shape == b_before[n].shape  # no larger upload
    torch.testing.assert_close(model(batch), gated, rtol=1e-5, atol=1e-6)  # same function after the merge


def test_bad_aux_adapters_are_refused_before_anything_is_attached() -> None:
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    aux = _aux_for(model)
    wrong_shape = {**aux, "0:q": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"0:q is \(3, 3\)"):
        attach_gates(model, stack="text", adapter=SHARED_ADAPTER, aux=wrong_shape)
    missing = {k: v for k, v in aux.items() if k != "1:o"}
    with pytest.raises(ValueError, match="1:o is missing"):
        attach_gates(model, stack="text", adapter=SHARED_ADAPTER, aux=missing)
    extra = {**aux, "7:q": aux["0:q"]}
    with pytest.raises(ValueError, match="9 aux adapters for 8"):
        attach_gates(model, stack="text", adapter=SHARED_ADAPTER, aux=extra)
    nan = {**aux, "0:v": torch.full_like(aux["0:v"], float("nan"))}
    with pytest.raises(ValueError, match="non-finite"):
        attach_gates(model, stack="text", adapter=SHARED_ADAPTER, aux=nan)
    assert not gated_layers(model)


def test_a_diverged_gate_is_never_merged() -> None:
    model, _ = build_reward_model(easyvqa_reward_config(kind="image"))
    attach_gates(model, stack="image", adapter=SHARED_ADAPTER, aux=_aux_for(model))
    b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    first = next(iter(gated_layers(model).values()))
    with torch.no_grad():
        first.fedcola_aux.gate.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="training diverged"):
        merge_gates(model)
    assert all(torch.equal(b[n], p) for n, p in model.named_parameters() if n in b)
    remove_gates(model)
    assert not gated_layers(model)
