"""Tiny CLIP- and SigLIP-style dual-encoder checkpoints for the reward-backbone tests:
both towers of one block shape (the reward model's requirement), a word tokenizer over the
easy-VQA vocabulary with the family's own special tokens, and the family's image processor
at 32×32 pixels, so the 64×64 easy-VQA images must be resized on the way in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from fedsecure.models.tokenizer import word_vocabulary
from tasks.easyvqa.data import vocabulary

SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
IMAGE_SIZE, PATCH, MAX_LENGTH = 32, 8, 32


def _tokenizer(*, bos: str | None, eos: str, pad: str, unk: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (pad, unk, bos, eos) if t is not None]
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *word_vocabulary(vocabulary())[4:]]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos is not None:  # CLIP: <|startoftext|> text <|endoftext|>; SigLIP: text </s>
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}",
                                                           special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    else:
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)


def save_clip(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ``CLIPModel`` checkpoint with its tokenizer and ``CLIPImageProcessor``."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip import CLIPImageProcessorPil

    tok = _tokenizer(bos="<|startoftext|>", eos="<|endoftext|>", pad="<|pad|>", unk="<|unk|>")
    config = CLIPConfig(text_config={**SHAPE, "vocab_size": len(tok), "max_position_embeddings": MAX_LENGTH,
                                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                     "pad_token_id": tok.pad_token_id},
                        vision_config={**SHAPE, "image_size": IMAGE_SIZE, "patch_size": PATCH}, projection_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def save_siglip(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ``SiglipModel`` checkpoint with its tokenizer and ``SiglipImageProcessor``."""
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip import SiglipImageProcessorPil

    tok = _tokenizer(bos=None, eos="</s>", pad="<pad>", unk="<unk>")
    config = SiglipConfig(text_config={**SHAPE, "vocab_size": len(tok), "max_position_embeddings": MAX_LENGTH,
                                       "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
                          vision_config={**SHAPE, "image_size": IMAGE_SIZE, "patch_size": PATCH})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


SAVERS = {"clip": save_clip, "siglip": save_siglip}
