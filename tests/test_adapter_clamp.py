"""Adapters that grew past the CKKS bound are clamped in the model, then encrypt; without
the clamp the encryptor refuses them (what broke `make demo`'s third round)."""

from __future__ import annotations

import pytest
import torch

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.adapter_exchange import adapter_groups, clip_shared_adapters, encrypt_adapters
from fedsecure.crypto import ckks
from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.errors import CkksError
from fedsecure.models.reward import build_reward_model


def test_oversized_adapters_are_clamped_into_the_bound_and_then_encrypt() -> None:
    model, _ = build_reward_model(easyvqa_reward_config(kind="text"))
    params = dict(model.named_parameters())
    names = model.attention_adapter_names()
    with torch.no_grad():
        params[names[0]].fill_(0.5)
        params[names[0]].view(-1)[:3] = torch.tensor([1.06, -3.0, 0.99])
    secret = ckks.create_secret_context()
    encryptor = Encryptor(public_context=ckks.public_context_bytes(secret), workers=1)
    with pytest.raises(CkksError, match="exceeds the CKKS bound"):
        encrypt_adapters(model, encryptor=encryptor, families=["attn"], weight=0.5)
    assert clip_shared_adapters(model, bound=encryptor.params.value_bound) == 2
    values = params[names[0]].view(-1)[:4].tolist()
    assert values == pytest.approx([1.0, -1.0, 0.99, 0.5])
    update = encrypt_adapters(model, encryptor=encryptor, families=["attn"], weight=0.5)
    assert update.chunks and max(abs(v).max() for g in adapter_groups(model, "attn").values() for v in g.values()) <= 1.0
    assert clip_shared_adapters(model, bound=1.0) == 0  # idempotent
