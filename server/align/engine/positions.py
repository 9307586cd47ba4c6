"""Rotary position ids of a prompt and of the tokens generated after it.

Most families number tokens 0, 1, 2, … skipping left padding: shape (B, L). Qwen2-VL and
Qwen2.5-VL use multimodal rope (M-RoPE; Wang et al. 2024, "Qwen2-VL", §2.1): an image's
tokens carry (temporal, height, width) positions of their patch grid, text tokens one
position repeated three times, and the text after an image resumes from the grid's largest
extent rather than from its token count. Their ids have shape (3, B, L).

The prompt's ids are computed here, once, from the checkpoint's own ``get_rope_index``, and
every later token takes the prompt's last position plus its offset in the completion. The
model is always handed explicit ids: left to itself, Qwen2-VL keeps ``rope_deltas`` as
state on the module, which goes stale when a prefix cache is repeated for G completions or
when the reference and the policy share the module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions that skip left padding, so a padded prompt sees the same positions
    as an unpadded one."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _rope_index(model: nn.Module) -> tuple[Callable[..., Any], int] | None:
    """The multimodal rope function of a Qwen2-VL-style model (through peft, DDP or FSDP
    wrappers) and its image token id, or None for a 1-D rope model."""
    for module in model.modules():
        fn = getattr(module, "get_rope_index", None)
        config = getattr(module, "config", None)
        if callable(fn) and config is not None and getattr(config, "image_token_id", None) is not None:
            return fn, int(config.image_token_id)
    return None


def prompt_positions(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     images: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """Position ids of a left-padded prompt batch: (B, L), or (3, B, L) for M-RoPE models
    given images (``image_grid_thw`` says each image's patch grid)."""
    rope = _rope_index(model) if images is not None and "image_grid_thw" in images else None
    if rope is None:
        return text_positions(attention_mask)
    fn, image_token_id = rope
    # token types: 0 text, 1 image (no video in a VQA prompt)
    kinds = (input_ids == image_token_id).int()
    positions, _ = fn(input_ids, mm_token_type_ids=kinds, image_grid_thw=images["image_grid_thw"],  # type: ignore[index]
                      attention_mask=attention_mask)
    return positions


def following_positions(prompt: torch.Tensor, steps: int, *, repeat: int = 1) -> torch.Tensor:
    """Positions of the ``steps`` tokens after each prompt (each prompt row repeated
    ``repeat`` times, for its G completions): last prompt position + 1, + 2, …
    Shape (B·repeat, steps), or (3, B·repeat, steps) for M-RoPE."""
    last = prompt[..., -1:]
    if repeat > 1:
        last = last.repeat_interleave(repeat, dim=-2)
    return last + torch.arange(1, steps + 1, device=prompt.device)
