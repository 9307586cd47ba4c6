"""The membership-inference attack: AUC known answers, and the attack on a real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.easyvqa.data import answers
from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.dp_training import train_nonprivate
from fedsecure.data.preferences import holdout
from fedsecure.models.encoding import encode_pairs
from fedsecure.models.reward import build_reward_model
from fedsecure.privacy.membership import auc, membership_auc
from tasks.easyvqa.shares import client_pairs


def test_auc_known_answers() -> None:
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    with pytest.raises(ValueError):
        auc(np.array([]), np.array([1.0]))


def test_attack_runs_against_a_trained_reward_model() -> None:
    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_reward_config(kind="text"))
    train, held = holdout(client_pairs(name="a", clients=["a", "b"], kind="text", limit=1200), fraction=0.3, seed=0)
    members, nonmembers = encode_pairs(train, tok, answers=answers()), encode_pairs(held, tok, answers=answers())
    untrained = membership_auc(model, members, nonmembers, limit=300)
    assert untrained == 0.5  # zero-initialised head: every loss ties
    train_nonprivate(model=model, data=members, steps=40, learning_rate=3e-3, batch_size=64)
    value = membership_auc(model, members, nonmembers, limit=300)
    assert 0.0 <= value <= 1.0 and value != 0.5
