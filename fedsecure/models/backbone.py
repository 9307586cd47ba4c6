"""The federation's reward-model backbone: one image stack and one text stack of one block
shape, used frozen by every client: a fedsecure folder (ViT and BERT pretrained once by the
operator on public data, layout below) or a CLIP/SigLIP checkpoint with its own tokenizer
and image processor (fedsecure/models/towers.py). Identical on every client by construction: the operator
distributes one folder, its SHA-256 is sealed in every kit, and a client refuses a
folder whose digest differs (docs/design.md §5).

Folder layout (standard Hugging Face checkpoints, safetensors + JSON, never pickle)::

    image/            ViTModel.save_pretrained
    text/             BertModel.save_pretrained
    tokenizer.json    the task's word tokenizer the text stack was trained with
    backbone.json     block shape, pretraining objective, data, steps, metrics
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from fedsecure.data.images import DEFAULT_IMAGE_SIZE
from fedsecure.errors import KitError
from fedsecure.models.towers import checkpoint_family, tower_configs

MANIFEST = "backbone.json"
IMAGE_DIR, TEXT_DIR, TOKENIZER = "image", "text", "tokenizer.json"


@dataclass(frozen=True)
class BackboneShape:
    """The block shape both stacks share (and every reward model built on them)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    patch: int = 8
    max_length: int = 24
    dropout: float = 0.1
    family: str = "fedsecure"  # or a dual-encoder checkpoint's family (fedsecure/models/towers.py)

    def __post_init__(self) -> None:
        # a fedsecure stack takes the 64×64 images as they are; a checkpoint's processor resizes them
        patch_fits = self.family != "fedsecure" or DEFAULT_IMAGE_SIZE % self.patch == 0
        if self.hidden % self.heads or not patch_fits or min(self.layers, self.intermediate) < 1:
            raise ValueError(f"unusable backbone shape {self}")


def build_stacks(shape: BackboneShape, vocab_size: int, *, seed: int) -> tuple[ViTModel, BertModel]:
    """Fresh image and text stacks, initialised from ``seed`` (same seed, same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = ViTModel(ViTConfig(image_size=DEFAULT_IMAGE_SIZE, patch_size=shape.patch, num_channels=3,
                                   hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                                   num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                                   hidden_dropout_prob=shape.dropout, attention_probs_dropout_prob=shape.dropout),
                         add_pooling_layer=False)
        text = BertModel(BertConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                                    num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                                    max_position_embeddings=shape.max_length, type_vocab_size=2,
                                    hidden_dropout_prob=shape.dropout, attention_probs_dropout_prob=shape.dropout),
                         add_pooling_layer=False)
    return image, text


def backbone_digest(folder: Path) -> str:
    """SHA-256 over every file of the folder (relative path and content), manifest included.

    A symbolic link anywhere inside is refused (KitError): `rglob` skipped linked folders
    and followed linked files, so the digest did not cover what a loader would read, and a
    link's target can change after it was checked (issue 23 item 11; CWE-59)."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs + names:
            path = Path(root) / name
            if path.is_symlink():
                raise KitError(f"{folder}: {path.relative_to(folder)} is a symbolic link; a backbone folder "
                               "holds only real files (copy the target in)")
            if name in names:
                files.append(path)
    files.sort()
    if not files:
        raise KitError(f"{folder}: no backbone files")
    h = hashlib.sha256()
    for path in files:
        rel = path.relative_to(folder).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def save_backbone(folder: Path, *, image: ViTModel, text: BertModel, tokenizer: object,
                  manifest: dict[str, object]) -> str:
    """Write the backbone folder (refuses a non-empty one); return its digest."""
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; a backbone is written once, never over another")
    folder.mkdir(parents=True, exist_ok=True)
    image.save_pretrained(folder / IMAGE_DIR, safe_serialization=True)
    text.save_pretrained(folder / TEXT_DIR, safe_serialization=True)
    tokenizer.save(str(folder / TOKENIZER))  # type: ignore[attr-defined]
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return backbone_digest(folder)


def shape_of(folder: Path) -> BackboneShape:
    """The block shape a backbone folder declares: a fedsecure folder's manifest, or the
    tower configs of a CLIP/SigLIP checkpoint (whose two towers must share one block shape:
    FedCola's gate adds one modality's attention adapters to the other's layers)."""
    try:
        family = checkpoint_family(folder)
    except ValueError as exc:
        raise KitError(str(exc)) from exc
    if family is not None:
        return _checkpoint_shape(folder, family)
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return BackboneShape(**doc["shape"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KitError(f"{folder}: not a fedsecure backbone ({exc})") from exc


def _checkpoint_shape(folder: Path, family: str) -> BackboneShape:
    vision, text = tower_configs(folder)
    shapes = {name: (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size)
              for name, c in (("vision", vision), ("text", text))}
    if shapes["vision"] != shapes["text"]:
        raise KitError(f"{folder}: the {family} towers differ in block shape (hidden, layers, heads, mlp: "
                       f"vision {shapes['vision']}, text {shapes['text']}); a reward backbone needs one shape")
    hidden, layers, heads, intermediate = shapes["text"]
    try:
        return BackboneShape(hidden=hidden, layers=layers, heads=heads, intermediate=intermediate,
                             patch=int(vision.patch_size), max_length=int(text.max_position_embeddings),
                             dropout=float(getattr(text, "attention_dropout", 0.0)), family=family)
    except ValueError as exc:
        raise KitError(f"{folder}: {exc}") from exc


def verify_backbone(folder: Path, *, expected_sha256: str | Sequence[str]) -> BackboneShape:
    """Refuse (raise :class:`KitError`) a backbone folder whose digest is not one the kit
    seals: two clients must never train adapters on different bases."""
    allowed = (expected_sha256,) if isinstance(expected_sha256, str) else tuple(expected_sha256)
    got = backbone_digest(folder)
    if got not in allowed:
        raise KitError(f"{folder}: backbone digest {got[:16]}… is not one the federation seals "
                       f"({', '.join(a[:16] + '…' for a in allowed)})")
    return shape_of(folder)


def sealed_backbones(settings: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """SHA-256 -> shape of every backbone a kit's settings seal (one per architecture);
    empty when the federation seals none (frozen random stacks)."""
    entries = settings.get("backbones", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                                and isinstance(e.get("shape"), dict) for e in entries):
        raise KitError("kit settings: 'backbones' must be a list of {sha256, shape}")
    return {str(e["sha256"]): dict(e["shape"]) for e in entries}


def shape_dict(shape: BackboneShape) -> dict[str, object]:
    """The shape as the manifest stores it."""
    return asdict(shape)
