"""FedCola-style reward models for the three client kinds (docs/design.md §5).

Backbones are Hugging Face classes of one block shape — a ViT image stack and a BERT
text stack with the same hidden size, heads and MLP width — so real local checkpoints
load the same way (``from_pretrained(path)``). Adapters:
- attention projections carry **FFA-LoRA**: A is frozen and drawn from a seed shared by
  the federation, only B trains, so averaging B across clients is exact and the gate
  merge ``B + g * B_aux`` stays linear;
- MLPs carry ordinary LoRA (A and B train), kept local;
- heads are local. Client kinds:
  image_text: reward(image, question, answer); image: reward(image, answer) from an
  answer-vocabulary head for a task with a closed answer set, else from an encoder of the
  response (the text stack, never shown the question); text: reward(question, answer).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from fedsecure.data.images import DEFAULT_IMAGE_SIZE
from fedsecure.errors import KitError
from fedsecure.models.backbone import IMAGE_DIR, TEXT_DIR, backbone_digest, shape_of
from fedsecure.models.backbone import TOKENIZER as BACKBONE_TOKENIZER
from fedsecure.models.groups import block_shape
from fedsecure.models.slots import slot_of
from fedsecure.models.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from fedsecure.models.towers import (
    TOWER_FAMILIES,
    CheckpointProcessor,
    image_features,
    load_towers,
    text_features,
)

Kind = Literal["image_text", "image", "text"]
KINDS: tuple[str, ...] = ("image_text", "image", "text")
# Attention projections of BERT (query/key/value, attention.output.dense) and ViT
# (q/k/v/o_proj); MLPs of BERT (intermediate.dense, output.dense) and ViT (mlp.fc1/fc2).
# CLIP/SigLIP towers: self_attn.(q|k|v|out)_proj and mlp.fc1/fc2 (fedsecure/models/towers.py).
ATTENTION_TARGETS = (r".*\.attention\.(self\.)?(query|key|value|q_proj|k_proj|v_proj|o_proj)|.*\.attention\.output\.dense"
                     r"|.*\.self_attn\.(q_proj|k_proj|v_proj|out_proj)")
# (block MLPs only: not the MLP inside SigLIP's pooling head)
MLP_TARGETS = r".*\.intermediate\.dense|.*layer\.\d+\.output\.dense|.*layers\.\d+\.mlp\.fc[12]"
SHARED_ADAPTER, LOCAL_ADAPTER = "attn", "local"
UNKNOWN_ANSWER_REWARD = -20.0
PAIRED_ROWS = 2  # text layers see each pair as 2 rows (chosen, rejected) in one batch  # log-probability floor for answers outside the vocabulary
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "reward_config.json", "reward.safetensors", "tokenizer.json"


@dataclass(frozen=True)
class RewardModelConfig:
    """Shape of a reward model; tiny by default (tests, demo, CPU)."""

    kind: str = "image_text"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    patch: int = 8
    max_length: int = 24
    lora_rank: int = 8
    lora_alpha: int = 16
    mlp_lora_rank: int = 4
    dropout: float = 0.1
    federation_seed: int = 0
    text_backbone: str | None = None   # local HF checkpoint folder; None = build from config
    image_backbone: str | None = None
    backbone_sha256: str = ""          # the federation's backbone folder digest ("" = random stacks)
    # "fedsecure": BERT/ViT stacks with a word tokenizer (the backbone's, else one over
    # ``vocabulary``) and 64×64 pixels; "clip" or "siglip": a dual-encoder checkpoint with
    # its own tokenizer and image processor
    tower_family: str = "fedsecure"
    # The task's closed answer set (the image kind's head classifies over it; empty: free
    # text, which the image kind reads through a response encoder)
    answers: tuple[str, ...] = ()
    # The task's words, for the word tokenizer of a model without a pretrained backbone
    vocabulary: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # tuples whatever JSON gave (a saved config reads back lists)
        object.__setattr__(self, "answers", tuple(self.answers))
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(set(self.answers)) != len(self.answers):
            raise ValueError("the answer set has duplicates")
        if self.tower_family not in ("fedsecure", *TOWER_FAMILIES):
            raise ValueError(f"tower_family must be fedsecure or one of {TOWER_FAMILIES}, got {self.tower_family!r}")
        if self.kind == "image" and not self.answers and self.tower_family != "fedsecure":
            # A checkpoint's tokenizer encodes question and response as one text, so its
            # response encoder would read the question an image-only client must not use.
            raise ValueError(f"an image-only model on a {self.tower_family} checkpoint needs a closed answer set; "
                             "on a free-text task use the federation's fedsecure backbone")
        if self.tower_family != "fedsecure" and not (self.text_backbone or self.image_backbone):
            raise ValueError(f"a {self.tower_family} reward model needs its checkpoint folder")
        if self.hidden % self.heads:
            raise ValueError("hidden must be divisible by heads")
        if self.tower_family == "fedsecure" and DEFAULT_IMAGE_SIZE % self.patch:
            raise ValueError(f"patch must divide the image size {DEFAULT_IMAGE_SIZE}")


HEAD_PREFIXES = ("head.", "fuse.")
"""Parameter-name prefixes of a reward model's score head and fusion layer."""


def _ffa_seed(federation_seed: int, key: str) -> int:
    # Same seed + same slot key -> same A on every client (FFA-LoRA's shared frozen A).
    digest = hashlib.sha256(f"{federation_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


class RewardModel(nn.Module):
    """A scalar reward for (image?, question?, answer) for one client kind."""

    def __init__(self, config: RewardModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.answer_vocab = config.answers
        # the image kind classifies over a closed answer set; on free text it reads the
        # response (only: the question is masked out) through a text stack
        self.classifies = config.kind == "image" and bool(config.answers)
        reads_text = not self.classifies
        self.text: nn.Module | None = None
        self.image: nn.Module | None = None
        c = config
        _check_backbone(c)
        if c.tower_family != "fedsecure":
            towers = load_towers(Path(c.text_backbone or c.image_backbone or ""), c.tower_family,
                                 which=[s for s, wanted in (("text", reads_text),
                                                            ("image", c.kind in ("image_text", "image"))) if wanted])
            self.text, self.image = towers.get("text"), towers.get("image")
        if c.tower_family == "fedsecure" and reads_text:
            self.text = (BertModel.from_pretrained(c.text_backbone, local_files_only=True, add_pooling_layer=False)
                         if c.text_backbone else BertModel(BertConfig(
                             vocab_size=vocab_size, hidden_size=c.hidden, num_hidden_layers=c.layers,
                             num_attention_heads=c.heads, intermediate_size=c.intermediate,
                             max_position_embeddings=c.max_length, type_vocab_size=2, hidden_dropout_prob=c.dropout,
                             attention_probs_dropout_prob=c.dropout), add_pooling_layer=False))
        if c.tower_family == "fedsecure" and c.kind in ("image_text", "image"):
            self.image = (ViTModel.from_pretrained(c.image_backbone, local_files_only=True, add_pooling_layer=False)
                          if c.image_backbone else ViTModel(ViTConfig(
                              image_size=DEFAULT_IMAGE_SIZE, patch_size=c.patch, num_channels=3, hidden_size=c.hidden,
                              num_hidden_layers=c.layers, num_attention_heads=c.heads,
                              intermediate_size=c.intermediate, hidden_dropout_prob=c.dropout,
                              attention_probs_dropout_prob=c.dropout), add_pooling_layer=False))
        widths = [m.config.hidden_size for m in (self.text, self.image) if m is not None]
        if len(set(widths)) != 1:
            raise ValueError(f"image and text stacks must share one block shape, got widths {widths}")
        h = widths[0]
        self.fuse: nn.Linear | None = None
        # Head and fusion layer start alike on every client of a kind (seeded from the
        # federation seed, as FFA-LoRA's A): averaged among same-kind clients, hidden units
        # of independently drawn layers would not correspond.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_ffa_seed(c.federation_seed, f"head:{c.kind}"))
            last = self._build_head(h)
        with torch.no_grad():  # every answer starts with the same reward: no accidental preference
            last.weight.zero_()
            last.bias.zero_()
        self._add_adapters()

    def _build_head(self, h: int) -> nn.Linear:
        """Create the head (and the fusion layer of a model that reads an image and text);
        returns the head's last layer."""
        c = self.config
        if self.classifies:
            self.head = nn.Linear(h, len(self.answer_vocab))
            last = self.head
        else:
            # image_text: the head sees [text, image, answer * fuse(image)]: the product lets a
            # small head match an answer's words against what the image shows (a plain MLP on
            # [text, image] measured 0.38 colour top-1 on public questions even non-privately;
            # the answer segment's tokens rather than the CLS of question and answer: colour
            # top-1 0.64 → 0.83 and 0.42 → 0.95 without DP on seed 0, 0.17 → 0.17 and 0.12 →
            # 0.40 on seed 1, at 3 × 40 steps — `fedsecure bench reward-sweep`, issue 24).
            width = h if c.kind == "text" else 3 * h
            if c.kind != "text":
                self.fuse = nn.Linear(h, h)
            self.head = nn.Sequential(nn.Linear(width, h), nn.GELU(), nn.Linear(h, 1))
            last = self.head[2]
        return last

    def _add_adapters(self) -> None:
        c = self.config
        for p in self.parameters():
            p.requires_grad_(False)
        for stack in (self.text, self.image):
            if stack is None:
                continue
            inject_adapter_in_model(LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, target_modules=ATTENTION_TARGETS,
                                               lora_dropout=0.0), stack, adapter_name=SHARED_ADAPTER)
            with warnings.catch_warnings():
                # Two adapters on purpose (shared attention, local MLP) on disjoint modules.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(LoraConfig(r=c.mlp_lora_rank, lora_alpha=2 * c.mlp_lora_rank,
                                                   target_modules=MLP_TARGETS, lora_dropout=0.0),
                                        stack, adapter_name=LOCAL_ADAPTER)
        with torch.no_grad():
            for name, module in self.named_modules():
                if hasattr(module, "lora_A") and hasattr(module, "set_adapter"):
                    # Each projection carries exactly one adapter; make sure it is the active one.
                    module.set_adapter(list(module.lora_A.keys()))
                if name.endswith((f"lora_A.{SHARED_ADAPTER}", f"lora_A.{LOCAL_ADAPTER}")):
                    slot = slot_of(name)
                    if slot is None:
                        raise ValueError(f"adapted layer {name} has no known slot")
                    # Attention A by (block, role) only: the same A in both stacks, so the
                    # gate's W + g*W_aux is exact. MLP A (trained, same-kind only) also per
                    # stack: same-kind clients start from the same A, so averaging is exact.
                    key = slot.position if slot.is_attention else f"mlp:{slot.stack}:{slot.position}"
                    gen = torch.Generator().manual_seed(_ffa_seed(c.federation_seed, key))
                    bound = 1.0 / module.weight.shape[1] ** 0.5
                    module.weight.copy_(torch.empty_like(module.weight).uniform_(-bound, bound, generator=gen))
        for name, p in self.named_parameters():
            p.requires_grad_(f"lora_B.{SHARED_ADAPTER}" in name or f".{LOCAL_ADAPTER}." in name
                             or name.startswith(HEAD_PREFIXES))

    @property
    def block_shape(self) -> str:
        """The block shape this model declares (``h64l2a4m128``)."""
        c = self.config
        return block_shape(hidden=c.hidden, layers=c.layers, heads=c.heads, intermediate=c.intermediate)

    def attention_adapter_names(self) -> list[str]:
        """Parameters shared with the federation (FFA-LoRA B of attention projections)."""
        return [n for n, _ in self.named_parameters() if f"lora_B.{SHARED_ADAPTER}" in n]

    def mlp_adapter_names(self) -> list[str]:
        """MLP adapters (LoRA A and B), shared only among clients of the same kind."""
        return [n for n, _ in self.named_parameters() if f".{LOCAL_ADAPTER}." in n]

    def head_names(self) -> list[str]:
        """The score head and fusion layer: shared, if the server asks, only among clients
        of the same kind (the ``head_<kind>`` family)."""
        return [n for n, _ in self.named_parameters() if n.startswith(HEAD_PREFIXES)]

    def trainable_names(self) -> list[str]:
        """Every parameter DP training updates."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # --- scoring --------------------------------------------------------------------

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                  position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS feature, answer feature) of "question [SEP] answer": the answer feature is
        the mean of the answer segment's tokens (segment 1), so the image can be matched
        against the answer's own words rather than against a summary of the question too;
        a dual-encoder checkpoint's pooled text stands for both."""
        assert self.text is not None
        if self.config.tower_family != "fedsecure":  # no segment ids: one text, pooled as trained
            pooled = text_features(self.text, input_ids=input_ids,
                                   attention_mask=attention_mask, position_ids=position_ids)
            return pooled, pooled
        if self.config.kind == "image":
            # An image-only client has no question to show (its pairs may carry one): only
            # [CLS] and the response's segment are attended to, the response numbered from
            # position 1 whatever the question's length, so no question reaches the score.
            first = torch.zeros_like(attention_mask)
            first[:, 0] = 1
            attention_mask = attention_mask * ((token_type_ids == 1).to(attention_mask.dtype) | first)
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids).last_hidden_state
        answer = ((token_type_ids == 1) & (attention_mask > 0)).unsqueeze(-1).to(out.dtype)
        return out[:, 0], (out * answer).sum(1) / answer.sum(1).clamp(min=1.0)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLS features of the image stack (computed once per pair, shared by both answers)."""
        assert self.image is not None
        if self.config.tower_family != "fedsecure":
            return image_features(self.image, pixel_values)
        return self.image(pixel_values=pixel_values).last_hidden_state[:, 0]

    def reward(self, batch: dict[str, torch.Tensor], which: str, image_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards (B,) for the ``which`` answer ('chosen' or 'rejected') of each pair."""
        if self.classifies:
            assert image_feats is not None
            logits = self.head(image_feats)
            return torch.log_softmax(logits, dim=-1).gather(1, batch[f"{which}_answer"].unsqueeze(1)).squeeze(1)
        txt = self._text_features(batch[f"{which}_input_ids"], batch[f"{which}_attention_mask"],
                             batch[f"{which}_token_type_ids"], batch["position_ids"])
        return self.head(self._joint(txt, image_feats)).squeeze(-1)

    def _joint(self, txt: tuple[torch.Tensor, torch.Tensor], image_feats: torch.Tensor | None) -> torch.Tensor:
        """The head's input: the text's CLS feature, or [CLS, image, answer * fuse(image)]."""
        cls, answer = txt
        if self.fuse is None or image_feats is None:
            return cls
        return torch.cat([cls, image_feats, answer * self.fuse(image_feats)], dim=-1)

    @torch.no_grad()
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards (B,) of the single ('chosen') answer of each item, for scoring tasks.
        An image-only model gives answers outside its vocabulary the floor reward."""
        feats = self.image_features(batch["pixel_values"]) if self.image is not None else None
        if not self.classifies:
            return self.reward(batch, "chosen", feats)
        ids = batch["chosen_answer"]
        known = ids >= 0
        logp = torch.log_softmax(self.head(feats), dim=-1).gather(1, ids.clamp(min=0).unsqueeze(1)).squeeze(1)
        return torch.where(known, logp, torch.full_like(logp, UNKNOWN_ANSWER_REWARD))

    def candidate_rewards(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards (B, K) of every candidate answer of each record (an encoded batch of
        :class:`fedsecure.models.encoding.EncodedRecords`; padding is scored too and left to
        the loss to mask).

        Text kinds run the K candidates as one stacked batch of K·B rows, candidate-major
        (row j·B + i is candidate j of record i); the image features are computed once per
        record. DP training folds those rows back into one gradient per record."""
        feats = self.image_features(batch["pixel_values"]) if self.image is not None else None
        ids = batch["candidate_answer"]
        if self.classifies:
            assert feats is not None
            logp = torch.log_softmax(self.head(feats), dim=-1).gather(1, ids.clamp(min=0))
            return torch.where(ids >= 0, logp, torch.full_like(logp, UNKNOWN_ANSWER_REWARD))
        b, k, seq = batch["candidate_input_ids"].shape

        def rows(name: str) -> torch.Tensor:
            return batch[name].transpose(0, 1).reshape(k * b, seq)

        txt = self._text_features(rows("candidate_input_ids"), rows("candidate_attention_mask"),
                             rows("candidate_token_type_ids"), batch["position_ids"].repeat(k, 1))
        both = None if feats is None else feats.repeat(k, 1)
        return self.head(self._joint(txt, both)).squeeze(-1).view(k, b).transpose(0, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Candidate rewards (B, K) for a batch of records (:meth:`candidate_rewards`), or
        Bradley–Terry margins r(chosen) - r(rejected), one per pair, for a batch of pairs.

        Text kinds run chosen and rejected answers as one stacked batch of 2B rows
        (rows i and B+i belong to pair i): one pass instead of two. DP training folds
        those rows back into one per-pair gradient (see :data:`PAIRED_ROWS`)."""
        if "candidate_input_ids" in batch:
            return self.candidate_rewards(batch)
        feats = self.image_features(batch["pixel_values"]) if self.image is not None else None
        if self.classifies:
            return self.reward(batch, "chosen", feats) - self.reward(batch, "rejected", feats)
        n = batch["chosen_input_ids"].shape[0]
        txt = self._text_features(*(torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
                               for k in ("input_ids", "attention_mask", "token_type_ids")),
                             torch.cat([batch["position_ids"], batch["position_ids"]]))
        both = None if feats is None else torch.cat([feats, feats])
        rewards = self.head(self._joint(txt, both)).squeeze(-1)
        return rewards[:n] - rewards[n:]


# --- building, saving, loading -------------------------------------------------------

def tokenizer_for(config: RewardModelConfig) -> Any:
    """The tokenizer a model of ``config`` reads text with: the one sealed in the
    federation's backbone folder (trained on public text), one built over the config's
    ``vocabulary`` when there is no backbone, or a dual-encoder checkpoint's own tokenizer
    and image processor (:class:`CheckpointProcessor`). Data for such a model is encoded
    with this one, never another (token ids are the backbone's)."""
    if config.tower_family == "fedsecure":
        stack = config.text_backbone or config.image_backbone
        sealed = Path(stack).parent / BACKBONE_TOKENIZER if stack else None
        if sealed is not None and sealed.is_file():
            return load_tokenizer(sealed)
        if not config.vocabulary:
            raise ValueError("a reward model needs a tokenizer: its backbone folder's, or the task's vocabulary")
        return build_tokenizer(config.max_length, words=config.vocabulary)
    return CheckpointProcessor(Path(config.text_backbone or config.image_backbone or ""), max_length=config.max_length)


def build_reward_model(config: RewardModelConfig) -> tuple[RewardModel, Any]:
    """A fresh reward model and the tokenizer its inputs are encoded with."""
    tok = tokenizer_for(config)
    return RewardModel(config, tok.get_vocab_size()), tok


def save_reward_model(model: RewardModel, tokenizer: object, folder: Path) -> None:
    """Write config (JSON), weights (safetensors) and tokenizer (JSON) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2, sort_keys=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    save_tokenizer(tokenizer, folder / TOKENIZER_FILE)  # type: ignore[arg-type]


def load_reward_model(folder: Path) -> tuple[RewardModel, object]:
    """Load a model saved by :func:`save_reward_model`; raises ValueError if incomplete."""
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (folder / name).exists():
            raise ValueError(f"{folder}: not a reward model (missing {name})")
    config = RewardModelConfig(**json.loads((folder / CONFIG_FILE).read_text()))
    # a checkpoint's own processor is read from the (digest-verified) checkpoint, never from a copy
    tok = load_tokenizer(folder / TOKENIZER_FILE) if config.tower_family == "fedsecure" else tokenizer_for(config)
    model = RewardModel(config, tok.get_vocab_size())
    missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, tok


def backbone_folder(config: RewardModelConfig) -> Path | None:
    """The backbone folder a config reads its stacks from (None: stacks built from config)."""
    stack = config.text_backbone or config.image_backbone
    if not stack:
        return None
    return Path(stack).parent if config.tower_family == "fedsecure" else Path(stack)


def _check_backbone(config: RewardModelConfig) -> None:
    """Every load re-verifies the backbone folder against the digest the config was made
    with (fail closed: KitError): a file changed after start-up would otherwise change the
    model's outputs (issue 23 item 11). A folder without a sealed digest is refused too."""
    folder = backbone_folder(config)
    if folder is None:
        return
    if not config.backbone_sha256:
        raise KitError(f"{folder}: a reward model on a backbone folder needs that folder's digest")
    got = backbone_digest(folder)
    if not hmac.compare_digest(got, config.backbone_sha256):
        raise KitError(f"{folder}: backbone digest {got[:16]}… is not the {config.backbone_sha256[:16]}… this model "
                       "was built on; the folder changed after it was verified")


def config_on_backbone(kind: str, folder: Path, **overrides: object) -> RewardModelConfig:
    """A reward model of ``kind`` on the federation's pretrained backbone in ``folder``: a
    fedsecure backbone folder or a CLIP/SigLIP checkpoint (its block shape, its towers;
    call :func:`fedsecure.models.backbone.verify_backbone` first so that the folder is the
    one the kit seals)."""
    s = shape_of(folder)
    stacks = ((str(folder / TEXT_DIR), str(folder / IMAGE_DIR)) if s.family == "fedsecure"
              else (str(folder), str(folder)))
    return RewardModelConfig(kind=kind, hidden=s.hidden, layers=s.layers, heads=s.heads, intermediate=s.intermediate,
                             patch=s.patch, max_length=s.max_length, dropout=s.dropout,
                             text_backbone=stacks[0], image_backbone=stacks[1], tower_family=s.family,
                             backbone_sha256=backbone_digest(folder), **overrides)  # type: ignore[arg-type]
