"""DP reward training: parameters change, accuracy rises above chance under DP, the
budget is refused before it is overspent, crashes leave ledger and accountant agreeing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.easyvqa.data import answers
from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.dp_training import (
    DPSettings,
    DPStepper,
    pairwise_accuracy,
    train_private,
)
from fedsecure.data.preferences import holdout
from fedsecure.errors import PrivacyBudgetExceeded
from fedsecure.kit import load_kit
from fedsecure.models.encoding import encode_pairs
from fedsecure.models.reward import build_reward_model
from fedsecure.privacy.accountant import epsilon
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.privacy.ledger import Ledger, verify_ledger
from fedsecure.privacy.noise import poisson_batch, secure_gaussian_like
from fedsecure.provision import Provisioned
from tasks.easyvqa.shares import client_pairs


@pytest.fixture(scope="module")
def text_data() -> tuple:  # type: ignore[type-arg]
    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_reward_config(kind="text"))
    train, held = holdout(client_pairs(name="a", clients=["a", "b"], kind="text", limit=3000), fraction=0.2, seed=0)
    return tok, encode_pairs(train, tok, answers=answers()), encode_pairs(held, tok, answers=answers())


def _ledger(kits: Provisioned, tmp_path: Path, eps: float = 8.0) -> Ledger:
    return Ledger(tmp_path / "ledger.jsonl", kit=load_kit(kits.clients["a"]), budget=PrivacyBudget(eps, 1e-5))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_dp_training_learns_above_chance_and_moves_parameters(kits: Provisioned, tmp_path: Path, text_data) -> None:  # type: ignore[no-untyped-def]
    _, train, held = text_data
    torch.manual_seed(1)
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    ledger = _ledger(kits, tmp_path)
    before, acc_before = _snapshot(model), pairwise_accuracy(model, held)
    result = train_private(model=model, data=train, ledger=ledger, settings=DPSettings(), steps=120,
                           learning_rate=0.03, rounds_left=1, run_id="run-t", round_=1)
    after = _snapshot(model)
    assert result.parameters_changed == len(before)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    acc_after = pairwise_accuracy(model, held)
    assert acc_before == 0.5  # zero-initialised head: every answer ties
    assert acc_after > 0.65, f"held-out pairwise accuracy {acc_after:.3f} did not rise above chance"
    # One release in the ledger, matching what the accountant says of its parameters.
    assert ledger.head().seq == 1 and 0 < result.epsilon_after <= 8.0
    assert epsilon(ledger.history(), delta=1e-5) == pytest.approx(result.epsilon_after)
    assert result.noise_multiplier > 0.3


def test_a_head_only_round_trains_the_head_and_leaves_the_adapters(kits: Provisioned, tmp_path: Path, text_data) -> None:  # type: ignore[no-untyped-def]
    _, train, held = text_data
    torch.manual_seed(1)
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    before, acc_before = _snapshot(model), pairwise_accuracy(model, held)
    result = train_private(model=model, data=train, ledger=_ledger(kits, tmp_path), settings=DPSettings(trainable="head"),
                           steps=60, learning_rate=0.03, rounds_left=1, run_id="run-t", round_=1)
    after = _snapshot(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.startswith(("head.", "fuse.")) for n in moved)
    assert result.parameters_changed == len(moved) == sum(n.startswith(("head.", "fuse.")) for n in before)
    assert set(after) == set(before)  # the adapters train again in a later round that asks for them
    assert pairwise_accuracy(model, held) > acc_before
    with pytest.raises(ValueError, match="trainable"):
        DPSettings(trainable="everything")


def test_budget_is_refused_before_training(kits: Provisioned, tmp_path: Path, text_data) -> None:  # type: ignore[no-untyped-def]
    _, train, _ = text_data
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    ledger = _ledger(kits, tmp_path, eps=0.01)
    bytes_before, params_before = ledger.path.read_bytes(), _snapshot(model)
    with pytest.raises(PrivacyBudgetExceeded):
        train_private(model=model, data=train, ledger=ledger, settings=DPSettings(), steps=500, learning_rate=1e-3,
                      rounds_left=1, run_id="r", round_=1)
    assert ledger.path.read_bytes() == bytes_before
    assert all(torch.equal(params_before[n], p) for n, p in _snapshot(model).items())


def test_budget_spans_rounds_and_is_paced(kits: Provisioned, tmp_path: Path, text_data) -> None:  # type: ignore[no-untyped-def]
    _, train, _ = text_data
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    ledger = _ledger(kits, tmp_path, eps=4.0)
    eps, sigmas = [], []
    for r in range(1, 4):
        res = train_private(model=model, data=train, ledger=ledger, settings=DPSettings(), steps=5, learning_rate=1e-3,
                            rounds_left=3 - r + 1, run_id="r", round_=r)
        eps.append(res.epsilon_after)
        sigmas.append(res.noise_multiplier)
    assert eps[0] < eps[1] < eps[2] <= 4.0  # spent across rounds, never beyond the budget
    assert eps[2] > 0.98 * 4.0  # the plan uses the budget...
    assert max(sigmas) / min(sigmas) < 1.01  # ...at one noise level calibrated for all planned rounds
    with pytest.raises(PrivacyBudgetExceeded):  # a fourth round the plan did not foresee
        train_private(model=model, data=train, ledger=ledger, settings=DPSettings(), steps=2000, learning_rate=1e-3,
                      rounds_left=1, run_id="r", round_=4)
    reopened = Ledger(ledger.path, kit=load_kit(kits.clients["a"]), budget=PrivacyBudget(4.0, 1e-5))
    assert reopened.history() == ledger.history() and reopened.epsilon == eps[-1]


def test_tiny_dataset_and_unchanged_parameters_fail_loudly(kits: Provisioned, tmp_path: Path, text_data) -> None:  # type: ignore[no-untyped-def]
    _, train, _ = text_data
    model, tok = build_reward_model(easyvqa_reward_config(kind="text"))
    ledger = _ledger(kits, tmp_path)
    tiny = encode_pairs(client_pairs(name="a", clients=["a", "b"], kind="text", limit=10), tok, answers=answers())
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_private(model=model, data=tiny, ledger=ledger, settings=DPSettings(), steps=5, learning_rate=1e-3,
                      rounds_left=1, run_id="r", round_=1)
    assert ledger.head().seq == 0
    # lr = 0: epsilon is spent but nothing moves (the opacus#820 symptom) -> loud failure.
    with pytest.raises(RuntimeError, match="changed no trainable parameter"):
        train_private(model=model, data=train, ledger=ledger, settings=DPSettings(), steps=2, learning_rate=0.0,
                      rounds_left=1, run_id="r", round_=1)


def test_crash_mid_training_is_charged_conservatively(kits: Provisioned, tmp_path: Path, text_data,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, train, _ = text_data
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    ledger = _ledger(kits, tmp_path)

    def crash(self, data):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(DPStepper, "step", crash)
    with pytest.raises(KeyboardInterrupt):
        train_private(model=model, data=train, ledger=ledger, settings=DPSettings(), steps=5, learning_rate=1e-3,
                      rounds_left=1, run_id="r", round_=1)
    # The release was recorded before training started: charged although never completed.
    entries = verify_ledger(ledger.path, ca_cert=load_kit(kits.server).ca_cert)
    reopened = Ledger(ledger.path, kit=load_kit(kits.clients["a"]), budget=PrivacyBudget(8.0, 1e-5))
    assert len(entries) == 2 and reopened.history() == [entries[1].step()]
    assert epsilon(reopened.history(), delta=1e-5) == pytest.approx(entries[1].epsilon_after)


def test_secure_noise_and_sampling_statistics() -> None:
    ref = torch.zeros(200_000)
    noise = secure_gaussian_like(ref, 2.0)
    assert abs(float(noise.mean())) < 0.03 and abs(float(noise.std()) - 2.0) < 0.03
    assert not torch.equal(noise, secure_gaussian_like(ref, 2.0))
    sizes = [len(poisson_batch(10_000, 0.01, secure=True)) for _ in range(200)]
    assert abs(np.mean(sizes) - 100) < 5 and np.std(sizes) > 5  # Poisson, not fixed-size batches


def test_insecure_mode_needs_an_explicit_flag_and_warns() -> None:
    assert DPSettings().secure_mode is True
    with pytest.warns(UserWarning, match="secure_mode is OFF"):
        DPSettings(secure_mode=False)


def test_the_bench_command_offers_the_clients_own_trainable_sets() -> None:
    # apps.cli names them without importing torch (the parser is built for every command)
    from apps.cli import build_parser, subcommand_parser
    from client_sdk.dp_training import TRAINABLE_SETS

    bench = subcommand_parser(build_parser(), "bench")
    (action,) = [a for a in bench._actions if a.dest == "trainable"]
    assert tuple(action.choices) == TRAINABLE_SETS  # type: ignore[arg-type]
