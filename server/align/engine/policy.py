"""The trainable policy and its frozen reference.

With LoRA the reference is the base model with the adapters switched off (peft's
``disable_adapter``): no second copy in memory. With full fine-tuning the reference is a
frozen copy taken before the first update. Either way the reference is the initial policy,
so the KL term starts at exactly zero.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from server.align.engine.devices import Placement

Adapter = Literal["lora", "full"]


@dataclass(frozen=True)
class PolicySetup:
    """How the policy is trained: LoRA (rank, alpha, target module names) or full fine-tuning."""

    adapter: Adapter = "lora"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    modules_to_save: tuple[str, ...] = field(default_factory=tuple)
    # full fine-tuning only: keep the (publicly pretrained) vision tower frozen; GRPO's
    # reward is too weak a signal to improve it (measured: no worse frozen, ~27 % faster)
    freeze_vision_tower: bool = False

    def __post_init__(self) -> None:
        if self.adapter not in ("lora", "full"):
            raise ValueError("adapter is 'lora' or 'full'")
        if self.lora_rank < 1 or self.lora_alpha < 1 or (self.adapter == "lora" and not self.lora_targets):
            raise ValueError("LoRA needs rank >= 1, alpha >= 1 and at least one target module")


def _decode_ids(ids: Sequence[int]) -> str:
    return " ".join(str(i) for i in ids)


class Policy:
    """A causal LM or vision-language model ready for GRPO: placed on its device, adapters
    attached, reference available, token ids it needs (EOS, pad, ids it must never emit
    such as the image placeholder) and a decoder for rewards."""

    def __init__(self, model: nn.Module, *, setup: PolicySetup, placement: Placement, eos_id: int,
                 pad_id: int, is_vlm: bool, decode: Callable[[Sequence[int]], str] | None = None,
                 suppressed_ids: Sequence[int] = ()) -> None:
        # Move before wrapping: peft/opacus on a model moved afterwards train nothing
        # (known failure: opacus#820, peft#3409).
        model = model.to(placement.device)
        self.setup, self.placement = setup, placement
        self.eos_id, self.pad_id, self.is_vlm = eos_id, pad_id, is_vlm
        self.decode_ids = decode or _decode_ids
        ids = sorted(set(suppressed_ids) - {eos_id})
        self.suppressed = torch.tensor(ids, dtype=torch.long, device=placement.device) if ids else None
        self._reference: nn.Module | None = None
        self._fingerprint: str | None = None
        if setup.adapter == "lora":
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=setup.lora_rank, lora_alpha=setup.lora_alpha, lora_dropout=0.0,
                                target_modules=list(setup.lora_targets),
                                modules_to_save=list(setup.modules_to_save) or None)
            model = get_peft_model(model, config)
        else:
            self._reference = copy.deepcopy(model).eval().requires_grad_(False)
            if setup.freeze_vision_tower:
                from server.align.engine.vision_pretrain import vision_tower

                vision_tower(model).requires_grad_(False)
        model.eval()  # no dropout in rollouts or in the ratio: both must see the same policy
        self.model = model

    @classmethod
    def for_vlm(cls, model: nn.Module, processor: object, *, setup: PolicySetup, placement: Placement) -> Policy:
        """A vision-language policy whose token ids and decoder come from its processor."""
        tok = processor.tokenizer  # type: ignore[attr-defined]
        return cls(model, setup=setup, placement=placement, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                   is_vlm=True, decode=tokenizer_decoder(tok), suppressed_ids=vlm_suppressed_ids(processor))

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything GRPO updates, in a stable order."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The frozen reference policy, for no-grad forwards only."""
        if self._reference is not None:
            yield self._reference
            return
        with self.model.disable_adapter():  # type: ignore[operator]
            yield self.model

    def fingerprint(self) -> str:
        """Digest of the architecture (names, shapes, dtypes) and of the frozen weights'
        sums: a checkpoint is only resumed onto the policy it was taken from. Computed once:
        none of it changes during training, and it reads every frozen weight."""
        if self._fingerprint is None:
            self._fingerprint = self._digest()
        return self._fingerprint

    def _digest(self) -> str:
        h = hashlib.sha256()
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}".encode())
                if not p.requires_grad:
                    h.update(f"{float(p.double().sum()):.6e}".encode())
        return h.hexdigest()

    def decode(self, completion_ids: Sequence[int]) -> str:
        """The text of one completion (what a reward is asked about)."""
        return decode_completion(completion_ids, eos_id=self.eos_id, pad_id=self.pad_id, decode_ids=self.decode_ids)


def vlm_suppressed_ids(processor: object) -> list[int]:
    """Ids a vision-language policy must never emit: the image placeholder (a sampled one
    would ask for an image that is not there), padding, BOS and UNK."""
    tok = processor.tokenizer  # type: ignore[attr-defined]
    never = [tok.convert_tokens_to_ids(processor.image_token), tok.pad_token_id,  # type: ignore[attr-defined]
             tok.bos_token_id, tok.unk_token_id]
    return sorted({i for i in never if i is not None} - {tok.eos_token_id})


def decode_completion(completion_ids: Sequence[int], *, eos_id: int, pad_id: int,
                      decode_ids: Callable[[Sequence[int]], str]) -> str:
    """Tokens before the first EOS, padding dropped, decoded and stripped."""
    ids = list(completion_ids)
    if eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return decode_ids([i for i in ids if i != pad_id]).strip()


def tokenizer_decoder(tokenizer: object) -> Callable[[Sequence[int]], str]:
    """A ``decode_ids`` from a Hugging Face tokenizer, special tokens dropped."""
    def decode(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))  # type: ignore[attr-defined]
    return decode
