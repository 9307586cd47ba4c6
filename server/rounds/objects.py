"""Content-addressed object store on disk for uploaded chunks and published aggregates.

An object's name is the SHA-256 of its bytes, so a chunk named in a signed manifest
is fetched and re-verified by its digest alone. Writes go to a temp file, are fsynced
and renamed into place, so a crash never leaves a half-written object under a valid
name. Objects never referenced by an accepted submission (a client that disconnected
mid-stream) are simply never read; :meth:`ObjectStore.remove` deletes them.
"""

from __future__ import annotations

import hmac
import os
import tempfile
from pathlib import Path

from fedsecure.crypto.signing import sha256


class ObjectStore:
    """Bytes by SHA-256 under ``root/ab/cdef…``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: bytes) -> Path:
        if len(digest) != 32:
            raise ValueError("object ids are 32-byte SHA-256 digests")
        hexd = digest.hex()
        return self.root / hexd[:2] / hexd[2:]

    def put(self, data: bytes) -> bytes:
        """Store ``data`` durably; return its digest (idempotent)."""
        digest = sha256(data)
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: bytes) -> bytes:
        """Read an object and re-check its digest (disk corruption fails loudly)."""
        data = self._path(digest).read_bytes()
        if not hmac.compare_digest(sha256(data), digest):
            raise OSError(f"object {digest.hex()} is corrupt on disk")
        return data

    def has(self, digest: bytes) -> bool:
        """Whether an object is stored."""
        return self._path(digest).exists()

    def remove(self, digest: bytes) -> None:
        """Delete an object if present."""
        self._path(digest).unlink(missing_ok=True)
