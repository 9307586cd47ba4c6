"""Pretrained reward backbones from local Hugging Face checkpoints: CLIP- and SigLIP-style
dual encoders (a vision and a text tower), used frozen under the reward model's adapters.

A checkpoint brings its own tokenizer and image processor, and a reward model on it must
use them: another tokenizer gives the text tower ids it never saw, and raw 64×64 pixels
are neither the size nor the normalisation its vision tower was trained on.
:class:`CheckpointProcessor` puts both behind the small interface the reward encoders use
(``encode_batch`` of (question, answer) pairs, ``pixels`` of uint8 images), so encoding,
DP training and scoring are the same code for every backbone.

Features are the towers' pooled outputs, as each checkpoint was trained to pool: CLIP's
text tower at the end-of-text token (it is causal, so question and answer go in as one
text, the answer inside what the pooled token sees) and its vision tower's class token;
SigLIP's text tower at its last position and its vision tower's attention-pooling head (the
mean of the patch states for a checkpoint without that head).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TOWER_FAMILIES = ("clip", "siglip")
"""Hugging Face dual-encoder families a backbone folder may hold (``model_type``)."""


def checkpoint_family(folder: Path) -> str | None:
    """``clip`` or ``siglip`` for a Hugging Face dual-encoder checkpoint folder, None for a
    folder without ``config.json``; raises ValueError for another model type."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{folder}: unreadable config.json ({exc})") from exc
    if model_type not in TOWER_FAMILIES:
        raise ValueError(f"{folder} holds a {model_type!r} model; reward backbones are fedsecure backbone "
                         f"folders or dual encoders of the families {', '.join(TOWER_FAMILIES)}")
    return str(model_type)


def tower_configs(folder: Path) -> tuple[Any, Any]:
    """(vision config, text config) of a dual-encoder checkpoint."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    return config.vision_config, config.text_config


def load_towers(folder: Path, family: str, *, which: Sequence[str] = ("image", "text")) -> dict[str, nn.Module]:
    """The frozen towers named in ``which`` ("image", "text") of a dual-encoder checkpoint,
    each loaded on its own (a text-only reward model does not hold the vision tower)."""
    from transformers import CLIPTextModel, CLIPVisionModel, SiglipTextModel, SiglipVisionModel
    from transformers.utils import logging as hf_logging

    classes = {"clip": (CLIPVisionModel, CLIPTextModel), "siglip": (SiglipVisionModel, SiglipTextModel)}[family]
    out: dict[str, nn.Module] = {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # each tower ignores the other's weights in the shared file: expected
    try:
        for stack, cls in zip(("image", "text"), classes, strict=True):
            if stack in which:
                out[stack] = cls.from_pretrained(str(folder), local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return out


def text_features(tower: nn.Module, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor) -> torch.Tensor:
    """(B, hidden) pooled text features, as the checkpoint pools them."""
    out = tower(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.pooler_output


def image_features(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, hidden) pooled image features, as the checkpoint pools them."""
    out = tower(pixel_values=pixel_values)
    if out.pooler_output is None:  # a SigLIP vision tower saved without its pooling head
        return out.last_hidden_state.mean(1)
    return out.pooler_output


class CheckpointProcessor:
    """The checkpoint's own tokenizer and image processor behind the reward encoders'
    interface: ``encode_batch`` of (question, answer) pairs → encodings padded to
    ``max_length``, and ``pixels`` of uint8 (B, 3, H, W) images → the tower's input
    (resized, cropped and normalised as the checkpoint's processor says)."""

    def __init__(self, folder: Path, *, max_length: int) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        self.folder, self.max_length = Path(folder), max_length
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"{folder}: the reward encoders need a fast (tokenizers) tokenizer")
        self.tokenizer = tok
        self.backend = tok.backend_tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad_id is None:
            raise ValueError(f"{folder}: the tokenizer has neither a padding nor an end-of-text token")
        self.backend.enable_padding(pad_id=pad_id, pad_token=tok.convert_ids_to_tokens(pad_id), length=max_length)
        self.backend.enable_truncation(max_length=max_length)
        self.image_processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)

    def encode_batch(self, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """Encodings of "question answer" texts (one text: a causal tower's pooled token
        must see the answer)."""
        return self.backend.encode_batch([f"{q} {a}" for q, a in pairs])

    def get_vocab_size(self) -> int:
        """Size of the checkpoint's vocabulary."""
        return int(len(self.tokenizer))

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → float pixel values the vision tower expects."""
        arrays = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in images]
        return self.image_processor(images=arrays, return_tensors="pt")["pixel_values"]

    def save(self, path: str) -> None:
        """Write the tokenizer (JSON) for the record; loading always reads the checkpoint."""
        self.backend.save(path)
