"""Named tensors <-> one flat slot vector, and the encoding string that names both the
CKKS context and the layout, so the server, the key holder and every client agree on
what each slot means before anything is added."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsecure.errors import CkksError

ENCODING_PREFIX = "ckks/v1"
_ENCODING = re.compile(r"ckks/v1;ctx=([0-9a-f]{16});layout=([0-9a-f]{16});n=([1-9][0-9]{0,11})")


@dataclass(frozen=True)
class TensorLayout:
    """Tensor names and shapes in slot order (sorted by name)."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        names = [n for n, _ in self.entries]
        if not names or names != sorted(set(names)):
            raise CkksError("a layout lists at least one tensor, by unique name, in sorted order")
        if any(d < 1 for _, shape in self.entries for d in shape):
            raise CkksError("tensor dimensions must be positive")

    @classmethod
    def of(cls, tensors: Mapping[str, np.ndarray]) -> TensorLayout:
        """The layout of a set of named tensors."""
        return cls(tuple((name, tuple(int(d) for d in np.shape(tensors[name]))) for name in sorted(tensors)))

    @property
    def numel(self) -> int:
        """Number of values packed."""
        return sum(math.prod(shape) for _, shape in self.entries)

    @property
    def digest(self) -> str:
        """Short id of the layout (names and shapes)."""
        doc = json.dumps([[n, list(s)] for n, s in self.entries], separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    def pack(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the tensors (float64) in layout order; names and shapes must match."""
        if set(tensors) != {n for n, _ in self.entries}:
            raise CkksError("tensors do not match the layout's names")
        parts = []
        for name, shape in self.entries:
            arr = np.asarray(tensors[name], dtype=np.float64)
            if arr.shape != shape:
                raise CkksError(f"{name}: shape {arr.shape} differs from the layout's {shape}")
            parts.append(arr.reshape(-1))
        return np.concatenate(parts)

    def unpack(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector (at least ``numel`` long; padding ignored) back into tensors."""
        if vector.ndim != 1 or vector.size < self.numel:
            raise CkksError(f"vector of {vector.size} values is shorter than the layout's {self.numel}")
        out, pos = {}, 0
        for name, shape in self.entries:
            size = math.prod(shape)
            out[name] = vector[pos:pos + size].reshape(shape)
            pos += size
        return out


@dataclass(frozen=True)
class Encoding:
    """Parsed encoding string of an encrypted update: context, layout and length."""

    context: str
    layout: str
    numel: int

    def __str__(self) -> str:
        return f"{ENCODING_PREFIX};ctx={self.context};layout={self.layout};n={self.numel}"


def encoding_for(context_fingerprint: str, layout: TensorLayout) -> Encoding:
    """The encoding an update of ``layout`` under a context has."""
    return Encoding(context_fingerprint, layout.digest, layout.numel)


def parse_encoding(text: str) -> Encoding:
    """Parse an encoding string strictly; raise :class:`CkksError` on anything else."""
    m = _ENCODING.fullmatch(text)
    if m is None:
        raise CkksError(f"unsupported update encoding {text[:80]!r}")
    return Encoding(m.group(1), m.group(2), int(m.group(3)))
