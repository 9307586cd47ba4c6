"""Aggregation groups: which clients' adapters may be averaged together. Adapters are
summed only across clients of the same modality stack, the same backbone and the same
block shape (FedCola's rule for heterogeneous clients; docs/design.md §5): averaging
adapters trained on different frozen bases, or of different shapes, is meaningless.

A group's name carries its key, so the server can aggregate by name alone and check an
upload against what its client declared: ``attn.image@64c6b60ccd0c-h64l2a4m128``
(family, stack, the backbone digest's first 12 hex digits or ``random``, block shape).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsecure.types import Modality

BACKBONE_TAG = 12
RANDOM_BACKBONE = "random"
ATTENTION_FAMILY = "attn"   # attention adapters: aggregated across every client holding the stack
_MLP_PREFIX = "mlp_"        # MLP adapters: aggregated among clients of one kind ("mlp_image_text")
_HEAD_PREFIX = "head_"      # head and fusion layer: among clients of one kind ("head_image_text"), if the server asks
KIND_MODALITY = {"image_text": Modality.IMAGE_TEXT, "image": Modality.IMAGE, "text": Modality.TEXT}


def _family(prefix: str, kind: str) -> str:
    if kind not in KIND_MODALITY:
        raise ValueError(f"unknown client kind {kind!r}")
    return f"{prefix}{kind}"


def _kind(prefix: str, family: str) -> str | None:
    kind = family[len(prefix):] if family.startswith(prefix) else ""
    return kind if kind in KIND_MODALITY else None


def mlp_family(kind: str) -> str:
    """The MLP family of a client kind (FedCola: MLPs are averaged only within a kind)."""
    return _family(_MLP_PREFIX, kind)


def mlp_kind(family: str) -> str | None:
    """The client kind of an MLP family, or None for any other family."""
    return _kind(_MLP_PREFIX, family)


def head_family(kind: str) -> str:
    """The head family of a client kind: its score head and fusion layer, averaged only
    within the kind (their inputs mean the same thing only in models of one kind)."""
    return _family(_HEAD_PREFIX, kind)


def head_kind(family: str) -> str | None:
    """The client kind of a head family, or None for any other family."""
    return _kind(_HEAD_PREFIX, family)


def same_kind_family_kind(family: str) -> str | None:
    """The kind whose clients alone may share ``family`` (an MLP or head family), or None
    for a family shared across kinds (attention) or unknown."""
    return mlp_kind(family) or head_kind(family)


def kind_of(modalities: tuple[Modality, ...]) -> str | None:
    """The client kind that declared exactly ``modalities`` (None: not a reward-model client)."""
    return next((k for k, m in KIND_MODALITY.items() if tuple(modalities) == (m,)), None)


def block_shape(*, hidden: int, layers: int, heads: int, intermediate: int) -> str:
    """A block shape as declared and named: ``h64l2a4m128``."""
    return f"h{hidden}l{layers}a{heads}m{intermediate}"


@dataclass(frozen=True)
class GroupKey:
    """(family, modality stack, backbone tag, block shape) of an aggregation group."""

    family: str
    stack: str
    backbone: str
    shape: str

    @property
    def name(self) -> str:
        """The group's name on the wire."""
        return f"{self.family}.{self.stack}@{self.backbone}-{self.shape}"

    @classmethod
    def of(cls, *, family: str, stack: str, backbone_sha256: str, shape: str) -> GroupKey:
        """The key of a client's group (an empty digest: a randomly initialised backbone)."""
        return cls(family, stack, backbone_sha256[:BACKBONE_TAG] or RANDOM_BACKBONE, shape)

    @classmethod
    def parse(cls, name: str) -> GroupKey:
        """Parse a group name; ValueError names what is wrong."""
        head, sep, tail = name.partition("@")
        family, dot, stack = head.partition(".")
        backbone, dash, shape = tail.partition("-")
        if not (sep and dot and dash and family and stack and backbone and shape):
            raise ValueError(f"group {name!r} is not FAMILY.STACK@BACKBONE-SHAPE")
        return cls(family, stack, backbone, shape)

    def declared_by(self, backbone_sha256: str, shape: str) -> bool:
        """Whether a client that declared (backbone, shape) may contribute to this group."""
        return (self.backbone == (backbone_sha256[:BACKBONE_TAG] or RANDOM_BACKBONE)) and self.shape == shape
