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

from fedsecure.crypto.ckks import CkksParams
from fedsecure.errors import CkksError

ENCODING_PREFIX = "ckks/v1"
_ENCODING = re.compile(r"ckks/v1;ctx=([0-9a-f]{16});sections=([^;]{1,4096})")
_SECTION = re.compile(r"([a-z][a-z0-9_.@-]{0,63}):([0-9a-f]{16}):([1-9][0-9]{0,11})")
_PLAIN = re.compile(r"f32le;layout=([0-9a-f]{16});n=([1-9][0-9]{0,11})")
MAX_SECTIONS = 16


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
class Section:
    """One aggregation group inside an update: its name, layout digest and length."""

    name: str
    layout: str
    numel: int


@dataclass(frozen=True)
class Encoding:
    """Parsed encoding string of an encrypted update: the context it is encrypted under
    and its sections (one per aggregation group, in name order, each starting on a
    fresh chunk so the server can sum each group on its own)."""

    context: str
    sections: tuple[Section, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.sections]
        if not names or names != sorted(set(names)):
            raise CkksError("an encoding lists at least one section, by unique name, in sorted order")

    def __str__(self) -> str:
        body = ",".join(f"{s.name}:{s.layout}:{s.numel}" for s in self.sections)
        return f"{ENCODING_PREFIX};ctx={self.context};sections={body}"

    def section(self, name: str) -> Section:
        """The section called ``name``; raise if absent."""
        for s in self.sections:
            if s.name == name:
                return s
        raise CkksError(f"update has no section {name!r}")

    def chunk_ranges(self, params: CkksParams) -> dict[str, tuple[int, int]]:
        """Section name -> (first chunk index, chunk count) within the update."""
        out, start = {}, 0
        for s in self.sections:
            count = params.chunk_count(s.numel)
            out[s.name] = (start, count)
            start += count
        return out

    def total_chunks(self, params: CkksParams) -> int:
        """Chunks the whole update must have."""
        return sum(params.chunk_count(s.numel) for s in self.sections)


def encoding_for(context_fingerprint: str, layouts: Mapping[str, TensorLayout]) -> Encoding:
    """The encoding of an update with one section per named layout."""
    return Encoding(context_fingerprint, tuple(Section(name, layouts[name].digest, layouts[name].numel)
                                               for name in sorted(layouts)))


def parse_encoding(text: str) -> Encoding:
    """Parse an encoding string strictly; raise :class:`CkksError` on anything else."""
    m = _ENCODING.fullmatch(text)
    if m is None:
        raise CkksError(f"unsupported update encoding {text[:80]!r}")
    sections = []
    for part in m.group(2).split(","):
        sm = _SECTION.fullmatch(part)
        if sm is None:
            raise CkksError(f"malformed encoding section {part[:60]!r}")
        sections.append(Section(sm.group(1), sm.group(2), int(sm.group(3))))
    if len(sections) > MAX_SECTIONS:
        raise CkksError(f"more than {MAX_SECTIONS} sections")
    return Encoding(m.group(1), tuple(sections))


def plain_encoding(layout_digest: str, numel: int) -> str:
    """Encoding of a published (decrypted, averaged) aggregate: float32 little-endian."""
    return f"f32le;layout={layout_digest};n={numel}"


def parse_plain_encoding(text: str) -> tuple[str, int]:
    """(layout digest, numel) of a published aggregate's encoding."""
    m = _PLAIN.fullmatch(text)
    if m is None:
        raise CkksError(f"unsupported aggregate encoding {text[:80]!r}")
    return m.group(1), int(m.group(2))
