"""Garbage collection of the server's object store.

Uploaded chunks are needed while their round attempt can still be summed; afterwards
they are garbage: refused or abandoned uploads (never accepted), contributions of an
attempt that was retried (expired), and contributions of a closed attempt (superseded by
the aggregate published from them). Published aggregates are kept: later rounds and TAP
personalisation download them.

Why a minimum age: an upload in flight has stored chunks that no accepted submission
names yet. Nothing younger than ``min_age_s`` (by default twice the longest stream's
deadline) is deleted, and the store refreshes an object's time whenever it is put again,
so a chunk being re-sent is never collected under it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fedsecure import serde
from fedsecure.transport.limits import STREAM_DEADLINE_S
from fedsecure.types import PayloadKind

from server.rounds.objects import ObjectStore
from server.rounds.store import Store

log = logging.getLogger("fedsecure.server.garbage")

MIN_AGE_S = 2 * STREAM_DEADLINE_S


@dataclass(frozen=True)
class GarbageReport:
    """What one collection did."""

    removed: int
    freed_bytes: int
    kept: int


def referenced_objects(store: Store) -> set[bytes]:
    """Digests that must stay: chunks of published aggregates and of accepted uploads
    whose round attempt is still open."""
    keep = store.submissions.published_chunk_digests()
    for payload in store.submissions.live_update_payloads(int(PayloadKind.UPDATE)):
        keep.update(serde.stored_update(payload).manifest.chunk_sha256)
    return keep


def collect_garbage(*, store: Store, objects: ObjectStore, min_age_s: float = MIN_AGE_S,
                    now: float | None = None) -> GarbageReport:
    """Delete every object that is neither referenced nor younger than ``min_age_s``."""
    if min_age_s < 0:
        raise ValueError("min_age_s must be non-negative")
    keep = referenced_objects(store)
    cutoff = (time.time() if now is None else now) - min_age_s
    removed = freed = kept = 0
    for digest, _, mtime in list(objects.objects()):
        if digest in keep or mtime > cutoff:
            kept += 1
            continue
        freed += objects.remove(digest)
        removed += 1
    if removed:
        log.info("object store: removed %d unreferenced objects (%d bytes), kept %d", removed, freed, kept)
    return GarbageReport(removed=removed, freed_bytes=freed, kept=kept)
