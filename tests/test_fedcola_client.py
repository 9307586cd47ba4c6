"""A client's side of FedCola, without a server: what a TRAIN task's aux adapters and
compensation coefficients do, and every refusal (bad layout, bad coefficient, a diverged
gate) happening before an upload, with the ledger keeping what was charged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from client_sdk.adapter_exchange import adapter_groups, apply_aggregate
from client_sdk.dp_training import DPSettings
from client_sdk.outcomes import Aggregate, TaskContext
from client_sdk.reward_participant import ParticipantConfig, RewardParticipant
from fedsecure.crypto.packing import TensorLayout, plain_encoding
from fedsecure.errors import InvalidTaskSpec, TrainingDiverged
from fedsecure.kit import load_kit
from fedsecure.models import gate as gate_module
from fedsecure.models.groups import GroupKey
from fedsecure.models.reward import build_reward_model
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.provision import Provisioned
from fedsecure.types import Task, TaskKind, TrainSpec
from tasks.easyvqa.shares import client_pairs

SHAPE = "h64l2a4m128"


def _group(family: str, stack: str, shape: str = SHAPE) -> str:
    return GroupKey.of(family=family, stack=stack, backbone_sha256="", shape=shape).name


def _aggregate(group: str, tensors: dict[str, np.ndarray], round_: int = 1) -> Aggregate:
    layout = TensorLayout.of(tensors)
    data = layout.pack(tensors).astype("<f4").tobytes()
    return Aggregate(group=group, round=round_, encoding=plain_encoding(layout.digest, layout.numel), contributors=2,
                     data=data)


def _text_means(scale: float = 0.05) -> dict[str, np.ndarray]:
    """What the federation's text-stack attention mean looks like (from an image+text model)."""
    model, _ = build_reward_model(easyvqa_reward_config(kind="image_text"))
    rng = np.random.default_rng(0)
    return {n: rng.normal(0, scale, a.shape) for n, a in adapter_groups(model, "attn")[_group("attn", "text")].items()}


def _participant(kits: Provisioned, tmp_path: Path, kind: str) -> RewardParticipant:
    return RewardParticipant(kit=load_kit(kits.clients["a"]), state_dir=tmp_path / kind,
                             pairs=client_pairs(name="a", clients=["a", "b"], kind=kind, limit=200),
                             config=ParticipantConfig(model=easyvqa_reward_config(kind=kind),
                                                      budget=PrivacyBudget(8.0, 1e-5), dp=DPSettings(batch_size=32)))


def _task(spec: TrainSpec, round_: int = 2) -> Task:
    return Task(run_id="run-x", round=round_, task_id="t", kind=TaskKind.TRAIN, deadline_unix_ms=0, attempt=1,
                spec=spec)


def _ctx(aggregates: dict[str, Aggregate]) -> TaskContext:
    return TaskContext(client_name="a", download_aggregate=lambda run, group, round_: aggregates[group])


SPEC = TrainSpec(local_steps=3, learning_rate=3e-3, batch_size=32, planned_rounds=3)


def test_text_client_trains_a_gate_on_the_image_means_and_reports_it(kits: Provisioned, tmp_path: Path) -> None:
    part = _participant(kits, tmp_path, "text")
    from fedsecure.models.slots import attention_module, slot_of
    image_means = {f"{attention_module('image', s.block, s.role)}.lora_B.attn.weight": a
                   for n, a in _text_means().items() for s in [slot_of(n)]}
    group = _group("attn", "image")
    report = part.train(_task(dataclasses.replace(SPEC, aux_groups=(group,))), _ctx({group: _aggregate(group, image_means)}))
    metrics = dict(report.metrics)
    assert metrics["gate_max_abs"] > 0.0  # started at exactly 0 (test_gate.py) and moved
    assert not gate_module.gated_layers(part.model)  # merged into B, never kept or uploaded
    assert part.ledger.head().seq == 1


def test_bad_aux_adapters_and_coefficients_are_refused_before_any_budget_is_spent(kits: Provisioned,
                                                                                  tmp_path: Path) -> None:
    part = _participant(kits, tmp_path, "image")
    text_group = _group("attn", "text")
    good = _aggregate(text_group, _text_means())
    wrong_layout = _aggregate(text_group, {k: v for k, v in list(_text_means().items())[:-1]})
    cases = [
        (dataclasses.replace(SPEC, aux_groups=(text_group,)), {text_group: wrong_layout}, "does not match"),
        (dataclasses.replace(SPEC, aux_groups=(_group("attn", "image"),)),
         {_group("attn", "image"): _aggregate(_group("attn", "image"), _text_means())}, "other modality's attention"),
        (dataclasses.replace(SPEC, aux_groups=(_group("attn", "text", "h32l2a4m64"),)),
         {_group("attn", "text", "h32l2a4m64"): _aggregate(_group("attn", "text", "h32l2a4m64"), _text_means())},
         "another backbone or block shape"),
        (dataclasses.replace(SPEC, aux_groups=(_group("attn", "image"),)), {_group("attn", "image"): good},
         "got attn.text"),
        (dataclasses.replace(SPEC, download_groups=(_group("mlp_image", "image"),),
                             compensation=((_group("mlp_image", "image"), 1.5),)), {}, r"outside \[0, 1\]"),
        (dataclasses.replace(SPEC, download_groups=(_group("mlp_image", "image"),),
                             compensation=((_group("mlp_image", "image"), float("nan")),)), {}, r"outside \[0, 1\]"),
        (dataclasses.replace(SPEC, download_groups=(_group("mlp_image", "image"),)), {},
         "no compensation coefficient"),
        (dataclasses.replace(SPEC, compensation=((_group("mlp_text", "text"), 0.5),)), {}, "not an MLP or head group"),
        (dataclasses.replace(SPEC, download_groups=(_group("head_text", "head"),),
                             compensation=((_group("head_text", "head"), 0.5),)), {}, "not an MLP or head group"),
        (dataclasses.replace(SPEC, download_groups=(_group("head_image", "head"),)), {},
         "no compensation coefficient"),
        (dataclasses.replace(SPEC, upload_group="attn+mlp+head+head"), {}, "names a family twice"),
        (dataclasses.replace(SPEC, upload_group="attn+bogus"), {}, "unknown family"),
    ]
    for spec, aggregates, text in cases:
        with pytest.raises(InvalidTaskSpec, match=text):
            part.train(_task(spec), _ctx(aggregates))
        assert part.ledger.head().seq == 0, text  # refused before training: nothing charged
    assert not gate_module.gated_layers(part.model)
    it = _participant(kits, tmp_path, "image_text")
    with pytest.raises(InvalidTaskSpec, match="both stacks"):
        it.train(_task(dataclasses.replace(SPEC, aux_groups=(text_group,))), _ctx({text_group: good}))


def test_a_diverged_gate_uploads_nothing_and_keeps_the_charge(kits: Provisioned, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    part = _participant(kits, tmp_path, "image")
    text_group = _group("attn", "text")
    before = {n: p.detach().clone() for n, p in part.model.named_parameters()}
    real_merge = gate_module.merge_gates

    def poisoned(model):  # type: ignore[no-untyped-def]
        for module in gate_module.gated_layers(model).values():
            with torch.no_grad():
                module.fedcola_aux.gate.fill_(float("nan"))
        return real_merge(model)

    monkeypatch.setattr("client_sdk.reward_participant.merge_gates", poisoned)
    spec = dataclasses.replace(SPEC, aux_groups=(text_group,), upload_group="attn", weight_total=1e6)
    with pytest.raises(TrainingDiverged, match="training diverged"):
        part.train(_task(spec), _ctx({text_group: _aggregate(text_group, _text_means())}))
    assert part.ledger.head().seq == 1  # the release happened and stays charged
    assert not gate_module.gated_layers(part.model)
    assert all(torch.equal(before[n], p) for n, p in part.model.named_parameters())  # restored


def test_compensation_moves_mlp_adapters_by_c_towards_the_mean() -> None:
    model, _ = build_reward_model(easyvqa_reward_config(kind="image"))
    group = _group("mlp_image", "image")
    own = adapter_groups(model, "mlp_image")[group]
    mean = {n: a + 1.0 for n, a in own.items()}
    apply_aggregate(model, _aggregate(group, mean), family="mlp_image", coefficient=0.25)
    after = adapter_groups(model, "mlp_image")[group]
    for n in own:
        np.testing.assert_allclose(after[n], own[n] + 0.25, rtol=1e-5, atol=1e-6)  # w + c (mean - w)
    with pytest.raises(InvalidTaskSpec):
        apply_aggregate(model, _aggregate(group, mean), family="mlp_image", coefficient=-0.1)
