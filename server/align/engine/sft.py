"""Optional supervised warm start of the policy on the server's small public seed set:
teaches the answer format (one word, then EOS) before GRPO, which then only has to learn
which answer is right. The warm-started weights become the base, hence the reference."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsecure.errors import PromptError
from server.align.engine.positions import prompt_positions
from server.align.engine.prompts import Prompt, collate_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTConfig:
    """Epochs over the seed set, batch size, AdamW learning rate, shuffling seed."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("need epochs >= 0, batch_size >= 1, learning_rate > 0")


def _batch(model: nn.Module, prompts: Sequence[Prompt], targets: Sequence[tuple[int, ...]], pad_id: int,
           device: torch.device) -> dict[str, torch.Tensor]:
    rows = [(*p.input_ids, *t) for p, t in zip(prompts, targets, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
        labels[i, width - len(target):] = torch.tensor(target)  # loss on the answer only
    images = collate_images(prompts) or {}
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, **images}
    # the answer continues the prompt's positions (M-RoPE families included): computed over
    # the whole row, whose image tokens all sit in the prompt
    out["position_ids"] = prompt_positions(model, ids, mask, images or None)
    return {k: v.to(device) for k, v in out.items()}


def sft_warm_start(model: nn.Module, *, prompts: Sequence[Prompt], targets: Sequence[tuple[int, ...]],
                   pad_id: int, config: SFTConfig = SFTConfig()) -> list[float]:
    """Fine-tune ``model`` in place on (prompt → target ids); returns the mean loss of each epoch."""
    if len(prompts) != len(targets) or not prompts:
        raise PromptError("SFT needs one non-empty target per prompt")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    losses = []
    model.train()
    for epoch in range(config.epochs):
        order = rng.permutation(len(prompts))
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = model(**_batch(model, [prompts[i] for i in idx], [targets[i] for i in idx], pad_id, device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / batches)
        log.info("SFT epoch %d/%d: loss %.4f", epoch + 1, config.epochs, losses[-1])
    model.eval()
    return losses
