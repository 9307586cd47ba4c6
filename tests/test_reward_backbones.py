"""Reward models on pretrained dual-encoder backbones (CLIP, SigLIP) from local checkpoint
folders: the checkpoint's own tokenizer and image processor are used (not the easy-VQA word
tokenizer and raw 64×64 pixels), the towers' weights are the checkpoint's, DP training moves
the adapters and the held-out metric, a client takes such a folder with ``--backbone`` only
when its digest — tokenizer and image processor files included — is the sealed one."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.easyvqa.models import reward_config_on_backbone as easyvqa_on_backbone
from client_sdk.dp_training import DPSettings, pairwise_accuracy, train_private
from fedsecure.data.images import load_image
from fedsecure.data.preferences import holdout
from fedsecure.errors import KitError
from fedsecure.kit import load_kit
from fedsecure.models.backbone import backbone_digest, shape_of, verify_backbone
from fedsecure.models.encoding import encode_items, encode_pairs
from fedsecure.models.reward import (
    KINDS,
    RewardModel,
    build_reward_model,
    load_reward_model,
    save_reward_model,
)
from fedsecure.models.scoring import score_triples
from fedsecure.models.slots import attention_module, slot_of
from tasks.easyvqa.data import vocabulary
from fedsecure.models.tokenizer import build_tokenizer
from fedsecure.models.towers import CheckpointProcessor
from fedsecure.privacy.budget import PrivacyBudget
from fedsecure.privacy.ledger import Ledger
from tasks.easyvqa import TASK as EASYVQA
from fedsecure.provision import provision
from server.planners.quality import JudgedQuestion, reward_quality
from tasks.easyvqa.data import answer_type, answers
from tasks.easyvqa.shares import client_pairs, server_part
from tests.reward_backbones import IMAGE_SIZE, MAX_LENGTH, SAVERS

FAMILIES = sorted(SAVERS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("towers")
    return {family: SAVERS[family](root / family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_checkpoints_own_tokenizer_and_image_processor_are_used(family: str, folders: dict[str, Path]) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = folders[family]
    model, tok = build_reward_model(easyvqa_on_backbone("image_text", folder))
    assert isinstance(tok, CheckpointProcessor) and model.config.tower_family == family
    pairs = client_pairs(name="a", clients=["a", "b"], kind="image_text", limit=4)
    encoded = encode_pairs(pairs, tok, answers=answers())
    own = AutoTokenizer.from_pretrained(folder)(f"{pairs[0].question} {pairs[0].chosen}", padding="max_length",
                                                max_length=MAX_LENGTH)["input_ids"]
    assert encoded.text["chosen_input_ids"][0].tolist() == own
    words = build_tokenizer(MAX_LENGTH, words=vocabulary()).encode(pairs[0].question, pairs[0].chosen).ids
    assert encoded.text["chosen_input_ids"][0].tolist() != words  # not the easy-VQA word tokenizer's ids
    batch = encoded.batch(torch.arange(len(pairs)))
    # resized from 64×64 and normalised as the checkpoint's processor says
    expected = AutoImageProcessor.from_pretrained(folder)(
        images=[im.permute(1, 2, 0).numpy() for im in encoded.images[encoded.image_index]],
        return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].shape == (len(pairs), 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(batch["pixel_values"], expected)
    scoring = encode_items([im.permute(1, 2, 0).numpy() for im in encoded.images[:1]], ["what color?"], ["red"], tok, answers=answers())
    assert scoring["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_frozen_towers_are_the_checkpoints_and_adapters_sit_on_every_block(
        family: str, kind: str, folders: dict[str, Path]) -> None:
    from transformers import AutoModel

    model, _ = build_reward_model(easyvqa_on_backbone(kind, folders[family]))
    full = AutoModel.from_pretrained(folders[family])
    reference = {"text": full.text_model, "image": full.vision_model}
    stacks = {"text": model.text, "image": model.image}
    for stack, tower in stacks.items():
        if tower is None:
            continue
        mine = dict(tower.named_parameters())
        theirs = dict(reference[stack].named_parameters())
        q = "encoder.layers.1.self_attn.q_proj"
        assert torch.equal(mine[f"{q}.base_layer.weight"], theirs[f"{q}.weight"])
        assert not mine[f"{q}.base_layer.weight"].requires_grad
    # an FFA-LoRA B on q, k, v, o of every block, found again by slot (the aux adapter path)
    params = dict(model.named_parameters())
    names = model.attention_adapter_names()
    assert len(names) == 4 * 2 * sum(t is not None for t in stacks.values())
    for name in names:
        slot = slot_of(name)
        assert slot is not None
        path = attention_module(slot.stack, slot.block, slot.role, family=family)
        assert f"{path}.lora_B.attn.weight" in params


PUBLIC_QUESTIONS = 60


def _public_pairwise(model: RewardModel, tok: object) -> float:
    """Mean pairwise accuracy over question types on the server's public evaluation
    questions, every answer scored (where the server judges reward models, not a client's
    own share)."""
    vocab = answers()
    records = server_part("reward_eval")[:PUBLIC_QUESTIONS]
    images = None if model.image is None else [load_image(r.image) for r in records for _ in vocab]
    scores = score_triples(model, tok, images=images, questions=[r.question for r in records for _ in vocab],
                           completions=list(vocab) * len(records))
    judged = [JudgedQuestion(r.answer, dict(zip(vocab, scores[i * len(vocab):(i + 1) * len(vocab)], strict=True)))
              for i, r in enumerate(records)]
    quality = reward_quality(judged, group_of=answer_type)
    return float(np.mean([v for k, v in quality.items() if k.startswith("pairwise.")]))


@pytest.mark.parametrize("family", FAMILIES)
def test_dp_training_on_a_pretrained_backbone_moves_adapters_and_accuracy(
        family: str, folders: dict[str, Path], kits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, tok = build_reward_model(easyvqa_on_backbone("text", folders[family]))
    train, held = holdout(client_pairs(name="a", clients=["a", "b"], kind="text", limit=1500), fraction=0.2, seed=0)
    train_data, held_data = encode_pairs(train, tok, answers=answers()), encode_pairs(held, tok, answers=answers())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    acc_before, public_before = pairwise_accuracy(model, held_data), _public_pairwise(model, tok)
    ledger = Ledger(tmp_path / "ledger.jsonl", kit=load_kit(kits.clients["a"]), budget=PrivacyBudget(8.0, 1e-5))
    result = train_private(model=model, data=train_data, ledger=ledger, settings=DPSettings(), steps=60,
                           learning_rate=0.03, rounds_left=1, run_id=f"run-{family}", round_=1)
    after = dict(model.named_parameters())
    assert result.parameters_changed == len(before)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    acc_after, public_after = pairwise_accuracy(model, held_data), _public_pairwise(model, tok)
    print(f"{family}: held-out pairwise accuracy {acc_before:.3f} -> {acc_after:.3f}; public questions, "
          f"pairwise against every same-type answer {public_before:.3f} -> {public_after:.3f}; "
          f"epsilon {result.epsilon_after:.2f}")
    assert acc_before == 0.5 and public_before == 0.5  # zero-initialised head: every answer ties
    assert acc_after > 0.6, f"{family}: held-out pairwise accuracy {acc_after:.3f}"
    assert public_after != public_before  # the metric the server judges by moved


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_reward_model_reloads_on_its_checkpoint(family: str, folders: dict[str, Path], tmp_path: Path) -> None:
    model, tok = build_reward_model(easyvqa_on_backbone("image_text", folders[family]))
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_reward_model(model, tok, tmp_path / "rm")
    again, tok2 = load_reward_model(tmp_path / "rm")
    assert isinstance(tok2, CheckpointProcessor) and tok2.folder == folders[family]
    pairs = client_pairs(name="a", clients=["a", "b"], kind="image_text", limit=6)
    batch = encode_pairs(pairs, tok2, answers=answers()).batch(torch.arange(len(pairs)))
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch), model(batch))
        assert model(batch).abs().max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_the_digest_covers_the_tokenizer_and_the_image_processor(family: str, folders: dict[str, Path],
                                                                 tmp_path: Path, keyholder_keys: Path) -> None:
    from client_sdk.cli import model_config

    folder = folders[family]
    sealed = backbone_digest(folder)
    kits = provision(out=tmp_path / "kits", clients=["x"], backbone=folder,
                     keyholder_public_context=(keyholder_keys / "ckks_public.ctx").read_bytes(), task=EASYVQA)
    kit = load_kit(kits.clients["x"])
    assert kit.settings["backbones"][0]["shape"]["family"] == family
    config = model_config(argparse.Namespace(kind="image_text", backbone=folder), kit)  # fedsecure client --backbone
    assert config.tower_family == family and config.backbone_sha256 == sealed
    for name, edit in (("preprocessor_config.json", lambda d: {**d, "image_mean": [0.0, 0.0, 0.0]}),
                       ("tokenizer_config.json", lambda d: {**d, "model_max_length": 7})):
        tampered = tmp_path / f"tampered-{name}"
        shutil.copytree(folder, tampered)
        (tampered / name).write_text(json.dumps(edit(json.loads((tampered / name).read_text()))))
        assert backbone_digest(tampered) != sealed
        with pytest.raises(KitError, match="is not one the federation seals"):
            verify_backbone(tampered, expected_sha256=sealed)
        with pytest.raises(KitError, match="is not one the federation seals"):
            model_config(argparse.Namespace(kind="image_text", backbone=tampered), kit)


def test_towers_of_two_block_shapes_and_other_models_are_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, CLIPConfig

    CLIPConfig(text_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 128},
               vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "intermediate_size": 128}).save_pretrained(tmp_path / "uneven")
    with pytest.raises(KitError, match="differ in block shape"):
        shape_of(tmp_path / "uneven")
    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(KitError, match="clip, siglip"):
        shape_of(tmp_path / "bert")


def test_images_of_other_sizes_are_resized_by_the_checkpoints_processor(folders: dict[str, Path]) -> None:
    tok = CheckpointProcessor(folders["clip"], max_length=MAX_LENGTH)
    big = torch.from_numpy(np.full((2, 3, 100, 80), 200, np.uint8))
    assert tok.pixels(big).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
