"""Prompts for the policy: what a rollout starts from and what a reward is asked about.

A prompt is already tokenised (and its image already preprocessed) once, when the pool is
loaded, so every GRPO step reuses the same tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsecure.data.images import load_image
from fedsecure.errors import PromptError
from fedsecure.task import Example

MAX_QUESTION_CHARS = 8192


@dataclass(frozen=True)
class ImageInputs:
    """Every image input the policy's processor returned for one prompt, by model keyword,
    each with a leading dimension for this one prompt: ``pixel_values`` always, and what a
    family needs besides (LLaVA-NeXT ``image_sizes``, Qwen2-VL ``image_grid_thw``,
    Idefics3 ``pixel_attention_mask``). Kept whole so no family's input is dropped."""

    tensors: tuple[tuple[str, torch.Tensor], ...]

    @classmethod
    def of(cls, inputs: Mapping[str, torch.Tensor]) -> ImageInputs:
        """From a processor's output for one prompt (text inputs already taken out)."""
        if "pixel_values" not in inputs:
            raise PromptError("the processor returned no pixel_values for an image")
        return cls(tuple(sorted(inputs.items())))

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The inputs as model keyword arguments."""
        return dict(self.tensors)


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id, the question text, its token ids (image placeholders
    included), the preprocessed image inputs (None for a text-only policy), the raw image
    and, where the server holds it (public pool, seed set, test split), the reference answer
    and the question's group (its type)."""

    prompt_id: str
    question: str
    input_ids: tuple[int, ...]
    images: ImageInputs | None = None
    image: np.ndarray | None = None
    answer: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class PromptBatch:
    """Prompts left-padded into one batch (generation appends on the right), with their
    image inputs batched by keyword (None for a text-only policy)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    images: dict[str, torch.Tensor] | None

    def image_kwargs(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The image inputs on ``device``, as model keyword arguments ({} without images)."""
        return {} if self.images is None else {k: v.to(device) for k, v in self.images.items()}


def collate_images(prompts: Sequence[Prompt]) -> dict[str, torch.Tensor] | None:
    """Concatenate the prompts' image inputs keyword by keyword (along the leading
    dimension: one image per prompt, or Qwen2-VL's patches one image after another).
    Mixing prompts with and without images, or images the processor shaped differently
    (different image sizes for a family that batches them as one tensor), is refused."""
    if not prompts:
        raise PromptError("no prompts")
    with_image = [p.images is not None for p in prompts]
    if any(with_image) and not all(with_image):
        missing = next(p.prompt_id for p in prompts if p.images is None)
        raise PromptError(f"prompt {missing} has no image while others do")
    if not all(with_image):
        return None
    first = prompts[0].images.as_dict()  # type: ignore[union-attr]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in first}
    for p in prompts:
        inputs = p.images.as_dict()  # type: ignore[union-attr]
        if inputs.keys() != first.keys():
            raise PromptError(f"prompt {p.prompt_id} has image inputs {sorted(inputs)}, others {sorted(first)}")
        for k, v in inputs.items():
            if v.shape[1:] != first[k].shape[1:] or v.dtype != first[k].dtype:
                raise PromptError(f"prompt {p.prompt_id}: {k} of shape {tuple(v.shape)} cannot be batched with "
                                  f"{tuple(first[k].shape)} (images of different sizes?)")
            parts[k].append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def collate_prompts(prompts: Sequence[Prompt], *, pad_id: int) -> PromptBatch:
    """Left-pad token ids; batch the image inputs (:func:`collate_images`)."""
    images = collate_images(prompts)
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        n = len(p.input_ids)
        ids[i, width - n:] = torch.tensor(p.input_ids, dtype=torch.long)
        mask[i, width - n:] = 1
    return PromptBatch(ids, mask, images)


def vqa_prompts(records: Sequence[Example], *, processor: object) -> list[Prompt]:
    """Encode a task's examples for a vision-language policy through its own processor
    (which expands the image placeholder to the vision tower's token count)."""
    from fedsecure.models.policy_vlm import encode_prompt

    out = []
    for r in records:
        image = load_image(r.image)
        ids, images = encode_prompt(processor, question=r.question, image=image)
        out.append(Prompt(prompt_id=r.record_id, question=r.question, input_ids=ids,
                          images=ImageInputs.of(images), image=image, answer=r.answer, group=r.group))
    check_prompts(out, needs_image=True)
    return out


def check_prompts(prompts: Sequence[Prompt], *, needs_image: bool) -> None:
    """Refuse, before any training, prompts a policy cannot take: no image for a
    vision-language policy, an image for a text-only one, no tokens, an overlong question."""
    for p in prompts:
        if needs_image and p.images is None:
            raise PromptError(f"prompt {p.prompt_id} has no image, and the policy is a vision-language model")
        if not needs_image and p.images is not None:
            raise PromptError(f"prompt {p.prompt_id} has an image, and the policy is text-only")
        if not p.input_ids:
            raise PromptError(f"prompt {p.prompt_id} has no tokens")
        if len(p.question) > MAX_QUESTION_CHARS:
            raise PromptError(f"prompt {p.prompt_id} is longer than {MAX_QUESTION_CHARS} characters")
