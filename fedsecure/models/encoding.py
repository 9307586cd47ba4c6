"""Turn preference pairs and scoring items into model inputs (tensors)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsecure.data.images import DEFAULT_IMAGE_SIZE, load_image
from fedsecure.data.preferences import PreferencePair, PreferenceRecord

UNKNOWN_ANSWER = -1
_PUNCT = re.compile(r"[^a-z ]")


def normalise_answer(text: str) -> str:
    """Lowercase, strip punctuation and spaces: how completions are matched to answers."""
    return _PUNCT.sub("", text.lower()).strip()


def answer_id(text: str, answers: Sequence[str]) -> int:
    """Index of ``text`` (normalised) in the closed answer set, or UNKNOWN_ANSWER (also
    for every text when the task has no closed answer set)."""
    norm = normalise_answer(text)
    return answers.index(norm) if norm in answers else UNKNOWN_ANSWER


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def pixel_transform(tokenizer: object) -> Callable[[torch.Tensor], torch.Tensor]:
    """How images become pixel values for the model the tokenizer belongs to: a checkpoint's
    own image processor (:class:`fedsecure.models.towers.CheckpointProcessor`), else
    :func:`pixels`."""
    return getattr(tokenizer, "pixels", pixels)


@dataclass
class EncodedPairs:
    """Pairs as tensors; images stored once per image id (uint8)."""

    images: torch.Tensor            # (M, 3, 64, 64) uint8
    image_index: torch.Tensor       # (N,) into images
    text: dict[str, torch.Tensor]   # chosen_/rejected_ input_ids, attention_mask, token_type_ids (N, L)
    chosen_answer: torch.Tensor     # (N,)
    rejected_answer: torch.Tensor   # (N,)
    digest: str                     # what the ledger records as "data used"
    truncated: int = 0              # pairs with a text cut to the tokenizer's length
    # uint8 images -> the image stack's input: [-1, 1] as they are, or a checkpoint's processor
    to_pixels: Callable[[torch.Tensor], torch.Tensor] = pixels

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs of the pairs at ``idx``."""
        return _model_inputs(self, idx, {"chosen_answer": self.chosen_answer, "rejected_answer": self.rejected_answer})


@dataclass
class EncodedRecords:
    """Records as tensors: each with K candidate answers (the chosen one first; shorter
    candidate lists padded and masked out); images stored once per image id (uint8)."""

    images: torch.Tensor             # (M, 3, 64, 64) uint8
    image_index: torch.Tensor        # (N,) into images
    text: dict[str, torch.Tensor]    # candidate_ input_ids, attention_mask, token_type_ids (N, K, L)
    candidate_answer: torch.Tensor   # (N, K) answer-vocabulary ids (UNKNOWN_ANSWER outside it)
    candidate_mask: torch.Tensor     # (N, K) bool: a real candidate, not padding
    digest: str
    truncated: int = 0               # records with a candidate text cut to the tokenizer's length
    to_pixels: Callable[[torch.Tensor], torch.Tensor] = pixels

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @property
    def candidates(self) -> int:
        """K, candidates per record (after padding)."""
        return int(self.candidate_mask.shape[1])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs of the records at ``idx``."""
        return _model_inputs(self, idx, {"candidate_answer": self.candidate_answer,
                                         "candidate_mask": self.candidate_mask})


def trim_padding(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``text`` (input ids, masks, type ids; the sequence last) cut after the last column
    any row attends to. The tokenizer pads to its maximum length (24; the built-in task's
    rows use 9-14 tokens) and every row masks the dropped columns out, so the model computes the
    same rewards (bit for bit, measured) at two thirds of the cost of a DP step; a
    left-padding tokenizer keeps every column."""
    masks = [v for k, v in text.items() if k.endswith("attention_mask")]
    if not masks:
        return text
    used = torch.stack([m.reshape(-1, m.shape[-1]).any(dim=0) for m in masks]).any(dim=0)
    width = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    return {k: v[..., :width].contiguous() for k, v in text.items()}


def _model_inputs(data: EncodedPairs | EncodedRecords, idx: torch.Tensor,
                  per_unit: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text (:func:`trim_padding`), position ids, pixels and ``per_unit`` tensors of the
    units at ``idx``."""
    out = trim_padding({k: v[idx] for k, v in data.text.items()})
    seq = next(iter(out.values())).shape[-1]
    out["position_ids"] = torch.arange(seq).expand(len(idx), seq).contiguous()  # (B, L) for per-sample grads
    out["pixel_values"] = data.to_pixels(data.images[data.image_index[idx]])
    out.update((k, v[idx]) for k, v in per_unit.items())
    return out


def _tokenize(tokenizer: object, questions: Sequence[str], answers_: Sequence[str],
              truncated: list[bool] | None = None) -> dict[str, torch.Tensor]:
    """Token tensors of each (question, answer); a text longer than the tokenizer's
    length is cut to it, and ``truncated`` (if given) gets one flag per text saying so."""
    enc = tokenizer.encode_batch(list(zip(questions, answers_, strict=True)))  # type: ignore[attr-defined]
    if truncated is not None:
        truncated.extend(bool(getattr(e, "overflowing", None)) for e in enc)
    return {"input_ids": torch.tensor([e.ids for e in enc], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in enc], dtype=torch.long),
            "token_type_ids": torch.tensor([e.type_ids for e in enc], dtype=torch.long)}


def pairs_digest(pairs: Sequence[PreferencePair]) -> str:
    """SHA-256 over the pairs' content, in order."""
    doc = [[p.record_id, Path(p.image).name, p.question, p.chosen, p.rejected] for p in pairs]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


def records_digest(records: Sequence[PreferenceRecord]) -> str:
    """SHA-256 over the records' content, in order."""
    doc = [[r.record_id, Path(r.image).name, r.question, r.chosen, list(r.rejected)] for r in records]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


def _load_images(items: Sequence[PreferencePair] | Sequence[PreferenceRecord],
                 image_loader: Callable[[str], np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (M, 3, H, W), index (N,)): every distinct image loaded once; an item
    without an image (a text-only client's) gets a black one, which a text-only model
    never reads."""
    keys = sorted({p.image for p in items})
    slot = {k: i for i, k in enumerate(keys)}
    imgs = []
    for key in keys:
        try:
            imgs.append(image_loader(key) if key else np.zeros((DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3), np.uint8))
        except (OSError, ValueError) as exc:
            bad = next(p.record_id for p in items if p.image == key)
            raise ValueError(f"record {bad}: image {key} cannot be loaded: {exc}") from exc
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([slot[p.image] for p in items], dtype=torch.long)


def encode_records(records: Sequence[PreferenceRecord], tokenizer: object, *, answers: Sequence[str] = (),
                   image_loader: Callable[[str], np.ndarray] = load_image) -> EncodedRecords:
    """Encode records, every candidate of each as one (question, answer) text; raises
    ValueError naming the first record that cannot be encoded. Given the task's closed
    ``answers``, every candidate must be one of them (an image-only model scores nothing
    else); without, candidates are free text."""
    if not records:
        raise ValueError("no preference records")
    if answers:
        for r in records:
            for a in r.candidates:
                if answer_id(a, answers) == UNKNOWN_ANSWER:
                    raise ValueError(f"record {r.record_id}: unknown answer {a!r}")
    images, index = _load_images(records, image_loader)
    k = max(len(r.candidates) for r in records)
    n = len(records)
    # Candidate-major within a record; padding repeats the chosen answer and is masked out.
    padded = [list(r.candidates) + [r.chosen] * (k - len(r.candidates)) for r in records]
    cut: list[bool] = []
    flat = _tokenize(tokenizer, [r.question for r in records for _ in range(k)], [a for row in padded for a in row], cut)
    text = {f"candidate_{key}": v.view(n, k, -1) for key, v in flat.items()}
    mask = torch.tensor([[j < len(r.candidates) for j in range(k)] for r in records], dtype=torch.bool)
    ids = torch.tensor([[answer_id(a, answers) for a in row] for row in padded], dtype=torch.long)
    return EncodedRecords(images=images, image_index=index, text=text, candidate_answer=ids, candidate_mask=mask,
                          truncated=sum(any(cut[i * k:(i + 1) * k]) for i in range(n)),
                          digest=records_digest(records), to_pixels=pixel_transform(tokenizer))


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer: object, *, answers: Sequence[str] = (),
                 image_loader: Callable[[str], np.ndarray] = load_image) -> EncodedPairs:
    """Encode pairs; raises ValueError naming the first record that cannot be encoded
    (given the task's closed ``answers``, an answer outside them)."""
    if not pairs:
        raise ValueError("no preference pairs")
    images, index = _load_images(pairs, image_loader)
    for p in pairs if answers else ():
        for a in (p.chosen, p.rejected):
            if answer_id(a, answers) == UNKNOWN_ANSWER:
                raise ValueError(f"record {p.record_id}: unknown answer {a!r}")
    q = [p.question for p in pairs]
    text = {}
    cut: dict[str, list[bool]] = {"chosen": [], "rejected": []}
    for which in ("chosen", "rejected"):
        for k, v in _tokenize(tokenizer, q, [getattr(p, which) for p in pairs], cut[which]).items():
            text[f"{which}_{k}"] = v
    return EncodedPairs(
        images=images,
        image_index=index,
        text=text,
        chosen_answer=torch.tensor([answer_id(p.chosen, answers) for p in pairs], dtype=torch.long),
        rejected_answer=torch.tensor([answer_id(p.rejected, answers) for p in pairs], dtype=torch.long),
        digest=pairs_digest(pairs), to_pixels=pixel_transform(tokenizer),
        truncated=sum(a or b for a, b in zip(cut["chosen"], cut["rejected"], strict=True)))


def encode_items(images: Sequence[np.ndarray], questions: Sequence[str], completions: Sequence[str],
                 tokenizer: object, *, answers: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Model inputs for scoring (question, completion) with optional images, as 'chosen'
    (a completion's index in the closed ``answers``, if the task has them)."""
    out = trim_padding({f"chosen_{k}": v for k, v in _tokenize(tokenizer, questions, completions).items()})
    seq = out["chosen_input_ids"].shape[1]
    out["position_ids"] = torch.arange(seq).expand(len(questions), seq).contiguous()
    if images:
        out["pixel_values"] = pixel_transform(tokenizer)(
            torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
    out["chosen_answer"] = torch.tensor([answer_id(c, answers) for c in completions], dtype=torch.long)
    return out
