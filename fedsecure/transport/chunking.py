"""Split payloads into digest-carrying chunks and check them on arrival."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from fedsecure.crypto.signing import sha256
from fedsecure.errors import InvalidSubmission
from fedsecure.types import TensorChunk


def split(data: bytes, *, name: str, chunk_bytes: int, dtype: str = "bytes",
          shape: tuple[int, ...] = (), start_index: int = 0) -> Iterator[TensorChunk]:
    """Yield ``data`` as chunks of at most ``chunk_bytes``, each with its SHA-256."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    pieces = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    for offset, piece in enumerate(pieces):
        yield TensorChunk(name=name, dtype=dtype, shape=shape, index=start_index + offset,
                          data=piece, sha256=sha256(piece))


def check_chunk(chunk: TensorChunk, *, expected_index: int, expected_sha256: bytes | None = None) -> None:
    """Raise :class:`InvalidSubmission` unless the chunk is in order and its digests match."""
    if chunk.index != expected_index:
        raise InvalidSubmission(f"chunk {chunk.index} out of order: expected index {expected_index}")
    actual = sha256(chunk.data)
    # Constant-time compares: digests gate what enters the aggregate.
    if not hmac.compare_digest(actual, chunk.sha256):
        raise InvalidSubmission(f"chunk {chunk.index} ({chunk.name}): sha256 does not match its data")
    if expected_sha256 is not None and not hmac.compare_digest(actual, expected_sha256):
        raise InvalidSubmission(f"chunk {chunk.index} ({chunk.name}): sha256 differs from the signed manifest")
