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

BACKBONE_TAG = 12
RANDOM_BACKBONE = "random"


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
