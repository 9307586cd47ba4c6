"""Rollouts: G sampled completions per prompt, with their token ids and log-probabilities
under the sampling policy.

The prompt is encoded once (one prefill per prompt, not per completion); its KV cache is
then repeated G times and the completions are decoded together, one token per step, until
every row has emitted EOS or ``max_new_tokens`` is reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from server.align.engine.positions import following_positions, prompt_positions
from server.align.engine.prompts import PromptBatch


@dataclass(frozen=True)
class SamplingConfig:
    """Temperature (0 = greedy), nucleus top-p and the completion length cap."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or not 1 <= self.max_new_tokens <= 4096:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and 1 <= max_new_tokens <= 4096")


@dataclass(frozen=True)
class Rollouts:
    """``B = prompts × G`` completions, row ``i`` from prompt ``i // G``.

    ``completion_ids`` (B, T) is padded after EOS; ``completion_mask`` marks real tokens
    (EOS included); ``sampling_logp`` holds each token's log-probability under the
    distribution it was drawn from (after temperature and top-p)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    sampling_logp: torch.Tensor
    group_size: int


def suppress(logits: torch.Tensor, suppressed: torch.Tensor | None, *, inplace: bool = False) -> torch.Tensor:
    """Logits with the suppressed ids (image placeholder, padding, BOS) made impossible: a
    sampled image placeholder would ask the model for an image that is not there."""
    if suppressed is None or suppressed.numel() == 0:
        return logits
    if inplace:
        return logits.index_fill_(-1, suppressed.to(logits.device), float("-inf"))
    return logits.index_fill(-1, suppressed.to(logits.device), float("-inf"))


def sample_next(logits: torch.Tensor, *, config: SamplingConfig, generator: torch.Generator | None,
                suppressed: torch.Tensor | None = None, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (tokens, their log-probability under the sampling
    distribution)."""
    logits = logits.float()
    # in place when no one else holds these logits (a float32 view of a no-grad output)
    logits = suppress(logits, suppressed, inplace=not logits.requires_grad and inplace)
    if config.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.zeros_like(tokens, dtype=torch.float32)
    scaled = logits if config.temperature == 1.0 else logits / config.temperature
    if config.top_p < 1:
        logp = torch.log_softmax(scaled, dim=-1)
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        cumulative = sorted_logp.exp().cumsum(-1)
        # drop a token once the mass before it already reaches top_p; the first one always stays
        drop = (cumulative - sorted_logp.exp()) >= config.top_p
        sorted_logp = sorted_logp.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp)
    probs = torch.softmax(scaled, dim=-1)
    # inverse-CDF sampling with one uniform per row (torch.multinomial, or a Gumbel race
    # drawing one number per vocabulary entry, cost several times more on CPU)
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
    tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    # a zero-probability token can only come from rounding at the very top of the CDF
    tokens = torch.where(probs.gather(-1, tokens[:, None]).squeeze(-1) > 0, tokens, probs.argmax(-1))
    return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1).log()


def generate(model: nn.Module, batch: PromptBatch, *, group_size: int, config: SamplingConfig,
             eos_id: int, pad_id: int, generator: torch.Generator | None = None,
             autocast: torch.dtype | None = None, suppressed: torch.Tensor | None = None) -> Rollouts:
    """Sample ``group_size`` completions for every prompt of ``batch`` (seeded by ``generator``)."""
    with torch.no_grad():  # not inference_mode: the ids are reused in the graded forward
        rollouts, _ = _decode(model, batch, group_size=group_size, config=config, eos_id=eos_id, pad_id=pad_id,
                              generator=generator, autocast=autocast, suppressed=suppressed, graded=False)
    return rollouts


def generate_graded(model: nn.Module, batch: PromptBatch, *, group_size: int, config: SamplingConfig,
                    eos_id: int, pad_id: int, generator: torch.Generator | None = None,
                    autocast: torch.dtype | None = None,
                    suppressed: torch.Tensor | None = None) -> tuple[Rollouts, torch.Tensor]:
    """:func:`generate`, also returning the completions' log-probabilities (B, T) under
    the tempered policy *with their autograd graph*, as :class:`CompletionScorer` would
    compute them: with one update per batch (μ = 1) the policy is scored by the very
    forward that sampled it, instead of a second pass. Activation memory grows with the
    square of the completion length (each step keeps its KV cache for backward), so this is
    for short completions."""
    with torch.enable_grad():
        return _decode(model, batch, group_size=group_size, config=config, eos_id=eos_id, pad_id=pad_id,
                       generator=generator, autocast=autocast, suppressed=suppressed, graded=True)


def _decode(model: nn.Module, batch: PromptBatch, *, group_size: int, config: SamplingConfig, eos_id: int,
            pad_id: int, generator: torch.Generator | None, autocast: torch.dtype | None,
            suppressed: torch.Tensor | None, graded: bool) -> tuple[Rollouts, torch.Tensor]:
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    device = next(model.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    images = batch.image_kwargs(device)
    positions = prompt_positions(model, ids, mask, images or None)
    use_amp = autocast is not None
    # prompts of equal length need no mask (padding after EOS is never attended to by an
    # earlier token): attention then runs its plain causal path, without building a mask
    dense = bool(mask.all())
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=use_amp):
        out = model(input_ids=ids, attention_mask=None if dense else mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1, **images)
    cache, logits = out.past_key_values, out.logits[:, -1]
    if group_size > 1:
        cache.batch_repeat_interleave(group_size)
        logits = logits.repeat_interleave(group_size, 0)
    rows = ids.shape[0] * group_size
    attn = mask.repeat_interleave(group_size, 0)
    # the positions of every token this loop may feed back, (rows, T) or (3, rows, T)
    ahead = following_positions(positions, config.max_new_tokens, repeat=group_size)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    # asking whether every row is done waits for the GPU: do it every few steps there
    check_every = 1 if device.type == "cpu" else 8
    tokens_out, logp_out, mask_out, graded_out = [], [], [], []
    for step in range(config.max_new_tokens):
        with torch.no_grad():
            # the graded path still needs the raw logits; otherwise they may be overwritten
            tok, logp = sample_next(logits.detach(), config=config, generator=generator, suppressed=suppressed,
                                    inplace=not graded)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        if graded:
            scaled = suppress(logits.float(), suppressed) / config.temperature
            graded_out.append(scaled.gather(-1, tok[:, None]).squeeze(-1) - scaled.logsumexp(-1))
        tokens_out.append(tok)
        logp_out.append(torch.where(done, torch.zeros_like(logp), logp))
        mask_out.append(~done)
        done = done | (tok == eos_id)
        if step == config.max_new_tokens - 1 or (step % check_every == check_every - 1 and bool(done.all())):
            break
        if not dense:
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=use_amp):
            out = model(input_ids=tok[:, None], attention_mask=None if dense else attn,
                        position_ids=ahead[..., step:step + 1], past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
    completion_mask = torch.stack(mask_out, 1)
    rollouts = Rollouts(prompt_ids=ids.repeat_interleave(group_size, 0),
                        prompt_mask=mask.repeat_interleave(group_size, 0),
                        completion_ids=torch.stack(tokens_out, 1),
                        completion_mask=completion_mask.long(),
                        sampling_logp=torch.stack(logp_out, 1),
                        group_size=group_size)
    scored = torch.where(completion_mask, torch.stack(graded_out, 1), 0.0) if graded else rollouts.sampling_logp
    return rollouts, scored


class CompletionScorer(nn.Module):
    """Per-token log-probabilities (B, T) of completions under ``model``, with gradients
    when enabled, on logits scaled by the sampling temperature (suppressed ids excluded, as
    when sampling) so ratios compare like with like.

    The G completions of a prompt share its prefix, so the prompt (and its image, through
    the vision tower) is encoded once per prompt; its KV cache is repeated G times and only
    the completion tokens are run per completion. Gradients flow back through the repeated
    cache. One module, so that DDP sees one forward per backward."""

    def __init__(self, model: nn.Module, *, temperature: float, suppressed: torch.Tensor | None = None,
                 autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.model, self.temperature, self.autocast = model, temperature, autocast
        self.suppressed = suppressed

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``prompt_ids``/``prompt_mask``/``images`` (the batched image inputs): one row per
        prompt; completions: G consecutive rows per prompt."""
        group = completion_ids.shape[0] // prompt_ids.shape[0]
        t = completion_ids.shape[1]
        images = images or {}
        dense = bool(prompt_mask.all())  # as in generation: no mask needed without left padding
        positions = prompt_positions(self.model, prompt_ids, prompt_mask, images or None)
        device = prompt_ids.device
        with torch.autocast(device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            out = self.model(input_ids=prompt_ids, attention_mask=None if dense else prompt_mask,
                             position_ids=positions, use_cache=True, logits_to_keep=1, **images)
            logits = out.logits[:, -1:].repeat_interleave(group, 0)
            if t > 1:
                cache = out.past_key_values
                cache.batch_repeat_interleave(group)
                mask = torch.cat([prompt_mask.repeat_interleave(group, 0), completion_mask], dim=1)
                rest = self.model(input_ids=completion_ids[:, :-1], attention_mask=None if dense else mask[:, :-1],
                                  position_ids=following_positions(positions, t - 1, repeat=group),
                                  past_key_values=cache, use_cache=True).logits
                logits = torch.cat([logits, rest], dim=1)
        logits = suppress(logits.float(), self.suppressed)
        if self.temperature > 0 and self.temperature != 1.0:
            logits = logits / self.temperature
        chosen = logits.gather(-1, completion_ids[..., None]).squeeze(-1)
        # padding after EOS is a suppressed id (log-prob -inf): zero it, or -inf - -inf = NaN
        # would reach the masked loss terms and their gradients
        return torch.where(completion_mask.bool(), chosen - logits.logsumexp(-1), 0.0)


def completion_logp(model: nn.Module, rollouts: Rollouts, *, temperature: float,
                    images: dict[str, torch.Tensor] | None = None, autocast: torch.dtype | None = None,
                    suppressed: torch.Tensor | None = None) -> torch.Tensor:
    """:class:`CompletionScorer` on a :class:`Rollouts` (``images``: the prompts' batched
    image inputs, :attr:`PromptBatch.images`)."""
    g = rollouts.group_size
    scorer = CompletionScorer(model, temperature=temperature, suppressed=suppressed, autocast=autocast)
    return scorer(rollouts.prompt_ids[::g], rollouts.prompt_mask[::g], rollouts.completion_ids,
                  rollouts.completion_mask, images)
