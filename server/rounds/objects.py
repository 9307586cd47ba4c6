"""Content-addressed object store on disk for uploaded chunks and published aggregates.

An object's name is the SHA-256 of its bytes, so a chunk named in a signed manifest
is fetched and re-verified by its digest alone. Writes go to a temp file, are fsynced
and renamed into place, so a crash never leaves a half-written object under a valid
name. Objects no longer referenced (a refused or abandoned upload, a retried attempt,
contributions superseded by their published aggregate) are deleted by the garbage
collector (:mod:`server.secagg.garbage`).

Chunks of an upload in flight are *pinned*. When an upload is refused, the chunks it
wrote itself are deleted at once unless another upload pins them or an accepted one
named them (:meth:`ObjectStore.release`): refused uploads must not fill the store
(issue 23 item 6: sixteen refused 4 MiB uploads once filled a 64 MiB store).

An optional size limit keeps uploads from filling the disk; at the limit, or when the
disk itself is full, :meth:`ObjectStore.put` raises :class:`StorageFull` and writes
nothing, so the upload is refused whole and nothing accepted is lost.
"""

from __future__ import annotations

import errno
import hmac
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedsecure.crypto.signing import sha256
from fedsecure.errors import StorageFull

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class ObjectStore:
    """Bytes by SHA-256 under ``root/ab/cdef…``, at most ``max_bytes`` in all (None: no limit)."""

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive (or None for no limit)")
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._used = sum(size for _, size, _ in self.objects())
        self._pins: Counter[bytes] = Counter()  # digests in use by uploads in flight
        self._kept: set[bytes] = set()          # digests an accepted upload named (this process)

    @property
    def used_bytes(self) -> int:
        """Bytes held now."""
        return self._used

    def _path(self, digest: bytes) -> Path:
        if len(digest) != 32:
            raise ValueError("object ids are 32-byte SHA-256 digests")
        hexd = digest.hex()
        return self.root / hexd[:2] / hexd[2:]

    def put(self, data: bytes) -> bytes:
        """Store ``data`` durably; return its digest (idempotent). Raises StorageFull,
        having written nothing, at the size limit or when the disk is full."""
        digest = sha256(data)
        path = self._path(digest)
        if path.exists():
            # Fresh again: the collector spares young objects, and this one is in use now.
            os.utime(path)
            return digest
        with self._lock:
            if self.max_bytes is not None and self._used + len(data) > self.max_bytes:
                raise StorageFull(f"object store is full ({self._used} of {self.max_bytes} bytes used); "
                                  "upload refused, send it again later")
            self._used += len(data)  # reserved before writing: concurrent puts cannot overshoot
        try:
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
        except BaseException as exc:
            with self._lock:
                self._used -= len(data)
            if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
                raise StorageFull("the server's disk is full; upload refused, send it again later") from exc
            raise
        return digest

    def put_pinned(self, data: bytes) -> tuple[bytes, bool]:
        """Store ``data`` for an upload in flight and pin it: (digest, whether this call
        created the object). Every pin is released by :meth:`release`."""
        digest = sha256(data)
        with self._lock:
            self._pins[digest] += 1
        try:
            existed = self.has(digest)
            self.put(data)
        except BaseException:
            self._unpin([digest])
            raise
        return digest, not existed

    def _unpin(self, digests: Iterable[bytes]) -> None:
        with self._lock:
            for d in digests:
                self._pins[d] -= 1
                if self._pins[d] <= 0:
                    del self._pins[d]

    def release(self, pinned: Iterable[bytes], *, created: Iterable[bytes] = (), accepted: bool) -> int:
        """Release an upload's pins. Accepted: its chunks are kept. Refused: the objects
        it created are deleted unless pinned by another upload or named by an accepted
        one. Returns the bytes freed."""
        pinned = list(pinned)
        self._unpin(pinned)
        if accepted:
            with self._lock:
                self._kept.update(pinned)
            return 0
        freed = 0
        for digest in set(created):
            with self._lock:
                if self._pins[digest] > 0 or digest in self._kept:
                    continue
            freed += self.remove(digest)
        return freed

    def objects(self) -> Iterator[tuple[bytes, int, float]]:
        """(digest, size, modification time) of every object stored."""
        for sub in self.root.iterdir():
            if not (sub.is_dir() and len(sub.name) == 2):
                continue
            for f in sub.iterdir():
                if f.name.startswith(".tmp-") or len(f.name) != 62:
                    continue
                try:
                    st = f.stat()
                    yield bytes.fromhex(sub.name + f.name), st.st_size, st.st_mtime
                except (OSError, ValueError):
                    continue  # removed meanwhile, or not one of ours

    def get(self, digest: bytes) -> bytes:
        """Read an object and re-check its digest (disk corruption fails loudly)."""
        data = self._path(digest).read_bytes()
        if not hmac.compare_digest(sha256(data), digest):
            raise OSError(f"object {digest.hex()} is corrupt on disk")
        return data

    def has(self, digest: bytes) -> bool:
        """Whether an object is stored."""
        return self._path(digest).exists()

    def remove(self, digest: bytes) -> int:
        """Delete an object if present; returns the bytes freed."""
        path = self._path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        with self._lock:
            self._used -= size
            self._kept.discard(digest)
        return size
