"""Prompts for the policy: what a rollout starts from and what a reward is asked about.

A prompt is already tokenised (and its image already preprocessed) once, when the pool is
loaded, so every GRPO step reuses the same tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsecure.data.easyvqa import VQARecord, load_image
from fedsecure.errors import PromptError

MAX_QUESTION_CHARS = 8192


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id, the question text, its token ids (image placeholders
    included), the preprocessed image (None for a text-only policy) and, where the server
    holds it (public pool, seed set, test split), the reference answer."""

    prompt_id: str
    question: str
    input_ids: tuple[int, ...]
    pixel_values: torch.Tensor | None = None
    image: np.ndarray | None = None
    answer: str | None = None


@dataclass(frozen=True)
class PromptBatch:
    """Prompts left-padded into one batch (generation appends on the right)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None


def collate_prompts(prompts: Sequence[Prompt], *, pad_id: int) -> PromptBatch:
    """Left-pad token ids; stack images. Mixing prompts with and without images is refused."""
    if not prompts:
        raise PromptError("no prompts")
    with_image = [p.pixel_values is not None for p in prompts]
    if any(with_image) and not all(with_image):
        missing = next(p.prompt_id for p in prompts if p.pixel_values is None)
        raise PromptError(f"prompt {missing} has no image while others do")
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        n = len(p.input_ids)
        ids[i, width - n:] = torch.tensor(p.input_ids, dtype=torch.long)
        mask[i, width - n:] = 1
    pixels = torch.stack([p.pixel_values for p in prompts]) if all(with_image) else None  # type: ignore[misc]
    return PromptBatch(ids, mask, pixels)


def vqa_prompts(records: Sequence[VQARecord], *, processor: object) -> list[Prompt]:
    """Encode easy-VQA records for a vision-language policy through its own processor
    (which expands the image placeholder to the vision tower's token count)."""
    from fedsecure.models.policy_vlm import encode_prompt

    out = []
    for r in records:
        image = load_image(r.split, r.image_id)
        ids, pixels = encode_prompt(processor, question=r.question, image=image)
        out.append(Prompt(prompt_id=r.record_id, question=r.question, input_ids=ids,
                          pixel_values=pixels, image=image, answer=r.answer))
    check_prompts(out, needs_image=True)
    return out


def check_prompts(prompts: Sequence[Prompt], *, needs_image: bool) -> None:
    """Refuse, before any training, prompts a policy cannot take: no image for a
    vision-language policy, an image for a text-only one, no tokens, an overlong question."""
    for p in prompts:
        if needs_image and p.pixel_values is None:
            raise PromptError(f"prompt {p.prompt_id} has no image, and the policy is a vision-language model")
        if not needs_image and p.pixel_values is not None:
            raise PromptError(f"prompt {p.prompt_id} has an image, and the policy is text-only")
        if not p.input_ids:
            raise PromptError(f"prompt {p.prompt_id} has no tokens")
        if len(p.question) > MAX_QUESTION_CHARS:
            raise PromptError(f"prompt {p.prompt_id} is longer than {MAX_QUESTION_CHARS} characters")
