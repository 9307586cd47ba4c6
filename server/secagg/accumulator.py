"""Homomorphic accumulation of encrypted updates as their chunks arrive (docs/design.md §6).

Per (run, round, attempt, group) the server keeps one running ciphertext sum per chunk position,
so memory grows with the model, not with the number of clients. Each chunk is added the
moment it arrives; the chunks themselves already sit in the object store. An upload that
fails (bad chunk, disconnect, refused at admission) has exactly the chunks it added
subtracted again — ciphertext arithmetic is exact modular arithmetic, so the sum is
bit-for-bit what it was. A chunk is added whole or not at all (every ciphertext is
validated first, and the sums are swapped in only when all additions succeeded).

Invariant: running sum = sum of the accepted contributions. The close of a phase trusts
the running sum only when its bookkeeping says so (exactly the accepted uploads, nothing
in flight, each position holding one term per contribution) *and* a chunk position drawn
at random re-adds from the object store to the same bytes; otherwise (a restart, a
straggler mid-stream, a defect) it rebuilds the sum from the object store.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedsecure.crypto import ckks
from fedsecure.crypto.ckks import CkksParams, ChunkSum
from fedsecure.crypto.packing import Encoding, Section, parse_encoding
from fedsecure.errors import CkksError, InvalidSubmission
from fedsecure.types import UpdateManifest

from server.rounds.objects import ObjectStore

GroupKey = tuple[str, int, int, str]  # run, round, attempt, group

log = logging.getLogger("fedsecure.server.aggregation")


@dataclass
class _GroupSum:
    layout: str
    numel: int
    chunks: list[ChunkSum]
    complete: set[str] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class UploadSession:
    """One upload being accumulated: its id, run/round, parsed encoding and what it added."""

    upload_id: str
    run_id: str
    round: int
    attempt: int
    encoding: Encoding
    ranges: dict[str, tuple[int, int]]
    added: list[tuple[str, int, bytes]] = field(default_factory=list)  # group, position, chunk digest
    pinned: list[bytes] = field(default_factory=list)   # chunks stored for it (pinned in the object store)
    created: list[bytes] = field(default_factory=list)  # those it wrote itself


class HomomorphicAccumulator:
    """Running sums of encrypted updates, one per (run, round, group)."""

    def __init__(self, *, public_context: bytes, params: CkksParams, objects: ObjectStore) -> None:
        self.params = params
        self.ctx = ckks.load_public_context(public_context, params)
        self.fingerprint = ckks.context_fingerprint(public_context)
        self.objects = objects
        self._sums: dict[GroupKey, _GroupSum] = {}
        self._lock = threading.Lock()

    def check_manifest(self, manifest: UpdateManifest) -> Encoding:
        """Everything checkable from the header: encoding, context, chunk count, weight."""
        enc = parse_encoding(manifest.encoding)
        if enc.context != self.fingerprint:
            raise InvalidSubmission("update is encrypted under another CKKS context than the federation's")
        expected = enc.total_chunks(self.params)
        if len(manifest.chunk_sha256) != expected:
            raise InvalidSubmission(f"manifest lists {len(manifest.chunk_sha256)} chunks; its encoding needs {expected}")
        if not (math.isfinite(manifest.weight) and 0.0 < manifest.weight <= 1.0):
            raise InvalidSubmission(f"update weight must be in (0, 1], got {manifest.weight}")
        return enc

    def _group(self, key: GroupKey, layout: str, numel: int) -> _GroupSum:
        with self._lock:
            group = self._sums.get(key)
            if group is None:
                counts = [ckks.ciphertexts_in_chunk(self.params, numel, i) for i in range(self.params.chunk_count(numel))]
                group = self._sums[key] = _GroupSum(layout, numel, [ChunkSum(self.ctx, self.params, c) for c in counts])
            if (group.layout, group.numel) != (layout, numel):
                raise InvalidSubmission(f"group {key[2]}: layout differs from the other contributions' "
                                        f"({layout}/{numel} vs {group.layout}/{group.numel})")
            return group

    def begin(self, *, upload_id: str, run_id: str, round_: int, attempt: int,
              manifest: UpdateManifest) -> UploadSession:
        """Start accumulating an upload whose header passed admission's precheck."""
        enc = self.check_manifest(manifest)
        for s in enc.sections:
            self._group((run_id, round_, attempt, s.name), s.layout, s.numel).in_flight.add(upload_id)
        return UploadSession(upload_id, run_id, round_, attempt, enc, enc.chunk_ranges(self.params))

    @staticmethod
    def _key(session: UploadSession, name: str) -> GroupKey:
        return (session.run_id, session.round, session.attempt, name)

    def add_chunk(self, session: UploadSession, index: int, data: bytes, digest: bytes) -> None:
        """Validate chunk ``index`` of an upload, store it (the key holder may ask for it),
        then add it to its group's sum (call from a worker thread). A chunk that does not
        validate is never stored."""
        for name, (start, count) in session.ranges.items():
            if start <= index < start + count:
                group = self._sums[self._key(session, name)]
                position = index - start
                try:
                    vecs = group.chunks[position].load(data)
                except CkksError as exc:
                    raise InvalidSubmission(f"chunk {index}: {exc}") from exc
                stored, created = self.objects.put_pinned(data)
                session.pinned.append(stored)
                if created:
                    session.created.append(stored)
                with group.lock:
                    group.chunks[position].add_loaded(vecs)
                session.added.append((name, position, digest))
                return
        raise InvalidSubmission(f"chunk index {index} is outside the update")

    def rollback(self, session: UploadSession) -> None:
        """Subtract what a failed upload added; the sums are exactly as before it. The
        chunks it stored are then deleted (unless another upload uses them)."""
        try:
            for name, position, digest in reversed(session.added):
                group = self._sums[self._key(session, name)]
                with group.lock:
                    group.chunks[position].subtract(self.objects.get(digest))
            session.added.clear()
            for s in session.encoding.sections:
                self._sums[self._key(session, s.name)].in_flight.discard(session.upload_id)
        finally:
            self.objects.release(session.pinned, created=session.created, accepted=False)
            session.pinned.clear()

    def complete(self, session: UploadSession) -> None:
        """The upload was accepted: its chunks now count in the sums."""
        for s in session.encoding.sections:
            group = self._sums[self._key(session, s.name)]
            group.in_flight.discard(session.upload_id)
            group.complete.add(session.upload_id)
        self.objects.release(session.pinned, accepted=True)
        session.pinned.clear()

    def sum_chunks(self, *, run_id: str, round_: int, attempt: int, group: str,
                   contributions: Sequence[tuple[str, UpdateManifest]]) -> list[bytes]:
        """The summed chunks of ``group`` over exactly ``contributions`` (upload id, manifest):
        the running sum when it verifiably holds them, else rebuilt from the object store."""
        if not contributions:
            raise ValueError(f"no contributions to group {group}")
        section, starts = self._starts(group, contributions)
        current = self._sums.get((run_id, round_, attempt, group))
        if current is not None:
            with current.lock:
                running = self._trusted(current, {uid for uid, _ in contributions}, starts)
            if running is not None:
                return running
            log.warning("%s round %d: running sum of %s does not hold exactly the accepted contributions; "
                        "rebuilding it from the object store", run_id, round_, group)
        return [self._rebuild(section.numel, position, starts)
                for position in range(self.params.chunk_count(section.numel))]

    def _starts(self, group: str, contributions: Sequence[tuple[str, UpdateManifest]]
                ) -> tuple[Section, list[tuple[int, UpdateManifest]]]:
        section: Section | None = None
        starts: list[tuple[int, UpdateManifest]] = []
        for _, manifest in contributions:
            enc = parse_encoding(manifest.encoding)
            if section is not None and enc.section(group) != section:
                raise InvalidSubmission(f"group {group}: contributions disagree on the layout")
            section = enc.section(group)
            starts.append((enc.chunk_ranges(self.params)[group][0], manifest))
        assert section is not None
        return section, starts

    def _trusted(self, current: _GroupSum, ids: set[str], starts: list[tuple[int, UpdateManifest]]
                 ) -> list[bytes] | None:
        """The running sum's chunks if the invariant holds, else None (caller holds the lock)."""
        if current.in_flight or current.complete != ids or any(c.terms != len(ids) for c in current.chunks):
            return None
        out = [c.to_bytes() for c in current.chunks]
        # Spot check of the contents, at a position the uploaders could not predict:
        # ciphertext addition is exact, so a correct running sum re-adds to the same bytes.
        position = secrets.randbelow(len(out))
        rebuilt = self._rebuild(current.numel, position, starts)
        canonical = ckks.canonical_chunk(self.ctx, self.params, out[position], current.chunks[position].count)
        return out if canonical == rebuilt else None

    def _rebuild(self, numel: int, position: int, starts: list[tuple[int, UpdateManifest]]) -> bytes:
        total = ChunkSum(self.ctx, self.params, ckks.ciphertexts_in_chunk(self.params, numel, position))
        for start, manifest in starts:
            total.add(self.objects.get(manifest.chunk_sha256[start + position]))
        return total.to_bytes()

    def discard(self, run_id: str, round_: int, attempt: int, group: str) -> None:
        """Forget a running sum (the key holder refused it): the next close rebuilds it."""
        with self._lock:
            self._sums.pop((run_id, round_, attempt, group), None)

    def drop(self, run_id: str, round_: int) -> None:
        """Free the sums of a finished round."""
        with self._lock:
            for key in [k for k in self._sums if k[:2] == (run_id, round_)]:
                del self._sums[key]
