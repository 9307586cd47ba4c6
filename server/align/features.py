"""Prompt features for the router and for expert selection: the frozen reference
policy's own representation of the prompt (image and question) — the last layer's hidden
state at the prompt's last token, the state from which the policy answers. Frozen, so a
prompt's features do not drift while GRPO trains the policy; available for any local
vision-language checkpoint, with no other model to ship."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from server.align.engine.policy import Policy
from server.align.engine.prompts import Prompt, collate_prompts
from server.align.engine.positions import prompt_positions


def reference_features(policy: Policy, *, batch_size: int = 64) -> Callable[[Sequence[Prompt]], torch.Tensor]:
    """A feature function (prompts → (P, hidden)) over ``policy``'s frozen reference."""
    def features(prompts: Sequence[Prompt]) -> torch.Tensor:
        out = []
        device = policy.placement.device
        with torch.no_grad(), policy.reference() as model:
            for start in range(0, len(prompts), batch_size):
                batch = collate_prompts(prompts[start:start + batch_size], pad_id=policy.pad_id)
                images = batch.image_kwargs(device)
                ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
                hidden = model(input_ids=ids, attention_mask=mask,
                               position_ids=prompt_positions(model, ids, mask, images or None),
                               output_hidden_states=True, **images).hidden_states[-1]
                out.append(hidden[:, -1].float().cpu())  # left padding: the last column is the last token
        return torch.cat(out)
    return features
