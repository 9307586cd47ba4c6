"""Reward models: FedCola stacks from HF classes, FFA-LoRA, heads, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from tasks.easyvqa.models import reward_config as easyvqa_reward_config
from fedsecure.models.backbone import backbone_digest
from fedsecure.models.encoding import encode_items, encode_pairs
from fedsecure.models.reward import (
    KINDS,
    UNKNOWN_ANSWER_REWARD,
    RewardModelConfig,
    build_reward_model,
    load_reward_model,
    save_reward_model,
)
from tasks.easyvqa.data import vocabulary, answers
from fedsecure.models.tokenizer import CLS, SEP, build_tokenizer, word_vocabulary
from tasks.easyvqa.shares import client_pairs


def _lora_a(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A.attn" in n}


def test_tokenizer_is_built_locally_and_deterministic() -> None:
    tok = build_tokenizer(24, words=vocabulary())
    enc = tok.encode("what color is the shape?", "blue")
    assert enc.tokens[0] == CLS and SEP in enc.tokens and "blue" in enc.tokens and "[UNK]" not in enc.tokens
    assert len(enc.ids) == 24 and build_tokenizer(24, words=vocabulary()).get_vocab() == tok.get_vocab()


def test_free_text_is_read_in_pieces_and_the_tasks_words_keep_their_ids() -> None:
    """Issue 25: a hospital's free-text answer must reach the model, not collapse to
    [UNK]; easy-VQA's words stay one token each, with the ids a word tokenizer gives them."""
    tok = build_tokenizer(48, words=vocabulary())
    words = word_vocabulary(vocabulary())
    enc = tok.encode("What colour is the nodule?", "A 4-mm nodule, smooth margins; café au lait.")
    assert "[UNK]" not in enc.tokens and "##u" in enc.tokens and "4" in enc.tokens
    known = tok.encode("what color is the shape?", "blue")
    assert [t for t in known.tokens if t not in (CLS, SEP, "[PAD]")] == ["what", "color", "is", "the", "shape", "?", "blue"]
    assert all(known.ids[i] == words.index(t) for i, t in enumerate(known.tokens) if t != "[PAD]")
    assert tok.encode("q", "数").tokens[3] == "[UNK]"  # outside the alphabet: one [UNK], never dropped
    assert len(tok.encode("q", " ".join(["nodule"] * 40)).ids) == 48  # truncated to max_length


@pytest.mark.parametrize("kind", KINDS)
def test_ffa_lora_a_is_shared_and_frozen_b_trains(kind: str) -> None:
    m1, _ = build_reward_model(easyvqa_reward_config(kind=kind, federation_seed=7))
    m2, _ = build_reward_model(easyvqa_reward_config(kind=kind, federation_seed=7))
    m3, _ = build_reward_model(easyvqa_reward_config(kind=kind, federation_seed=8))
    a1, a2, a3 = _lora_a(m1), _lora_a(m2), _lora_a(m3)
    assert a1 and all(torch.equal(a1[n], a2[n]) for n in a1)  # same federation seed -> same A everywhere
    assert not any(torch.equal(a1[n], a3[n]) for n in a1)
    params = dict(m1.named_parameters())
    assert all(not params[n].requires_grad for n in a1)
    shared = m1.attention_adapter_names()
    assert shared and all(params[n].requires_grad and not params[n].any() for n in shared)  # B starts at 0
    trainable = set(m1.trainable_names())
    assert trainable == {n for n in params if "lora_B.attn" in n or ".local." in n or n.startswith(("head.", "fuse."))}
    assert any(n.startswith("fuse.") for n in trainable) == (kind == "image_text")
    assert not any("base_layer" in n or "embeddings" in n for n in trainable)


@pytest.mark.parametrize("kind", KINDS)
def test_head_and_fusion_layer_start_alike_on_every_client_of_a_kind(kind: str) -> None:
    """Same federation seed and kind -> the same head and fusion layer, whatever the global
    RNG (two clients' heads may then be averaged unit by unit); another seed -> another."""
    torch.manual_seed(1)
    m1, _ = build_reward_model(easyvqa_reward_config(kind=kind, federation_seed=7))
    torch.manual_seed(2)
    m2, _ = build_reward_model(easyvqa_reward_config(kind=kind, federation_seed=7))
    m3, _ = build_reward_model(easyvqa_reward_config(kind=kind, federation_seed=8))
    names = m1.head_names()
    assert names and all(n.startswith(("head.", "fuse.")) for n in names)
    p1, p2, p3 = (dict(m.named_parameters()) for m in (m1, m2, m3))
    assert all(torch.equal(p1[n], p2[n]) for n in names)
    drawn = [n for n in names if p1[n].any()]  # the classifier head of the image kind starts at zero
    assert bool(drawn) == (kind != "image")
    assert not drawn or not all(torch.equal(p1[n], p3[n]) for n in drawn)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    model, tok = build_reward_model(easyvqa_reward_config(kind=kind))
    data = encode_pairs(client_pairs(name="a", clients=["a", "b"], kind=kind, limit=16), tok, answers=answers())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # move off the zero-initialised head
    model.eval()  # no dropout: outputs must be comparable
    margins = model(data.batch(torch.arange(16)))
    assert margins.shape == (16,) and torch.isfinite(margins).all()
    save_reward_model(model, tok, tmp_path / "m")
    loaded, _ = load_reward_model(tmp_path / "m")
    loaded.eval()
    assert torch.allclose(loaded(data.batch(torch.arange(16))), margins)
    with pytest.raises(ValueError, match="missing"):
        load_reward_model(tmp_path)


def test_real_local_checkpoint_loads_by_path(tmp_path: Path) -> None:
    tok = build_tokenizer(24, words=vocabulary())
    bert = BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=1,
                                num_attention_heads=4, intermediate_size=128, max_position_embeddings=24),
                     add_pooling_layer=False)
    bert.save_pretrained(tmp_path / "bert")
    model, _ = build_reward_model(easyvqa_reward_config(kind="text", text_backbone=str(tmp_path / "bert"),
                                                    backbone_sha256=backbone_digest(tmp_path)))
    assert model.text is not None and model.text.config.num_hidden_layers == 1
    loaded = model.text.embeddings.word_embeddings.weight
    assert torch.equal(loaded, bert.embeddings.word_embeddings.weight)


def test_image_head_gives_unknown_answers_the_floor() -> None:
    import numpy as np

    model, tok = build_reward_model(easyvqa_reward_config(kind="image"))
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    batch = encode_items([img, img], ["q", "q"], ["red", "a purple dragon"], tok, answers=answers())
    scores = model.score(batch)
    assert scores[1] == UNKNOWN_ANSWER_REWARD and scores[0] > UNKNOWN_ANSWER_REWARD


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        easyvqa_reward_config(kind="audio")
    with pytest.raises(ValueError, match="divisible"):
        RewardModelConfig(hidden=65)
