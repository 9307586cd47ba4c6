"""The object store's size limit and disk-full handling (refused whole, nothing written,
the usage unchanged), and the garbage collector's rule on a stand-in store."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from fedsecure.crypto.signing import sha256
from fedsecure.errors import StorageFull
from server.rounds.objects import ObjectStore
from server.secagg import garbage
from server.secagg.garbage import collect_garbage


def test_size_limit_refuses_whole_objects_and_remove_frees(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "o", max_bytes=250)
    a = store.put(b"a" * 100)
    store.put(b"a" * 100)  # idempotent: no second charge
    b = store.put(b"b" * 100)
    assert store.used_bytes == 200
    with pytest.raises(StorageFull, match="object store is full"):
        store.put(b"c" * 100)
    assert store.used_bytes == 200 and not store.has(sha256(b"c" * 100))
    assert store.remove(a) == 100 and store.remove(a) == 0
    store.put(b"c" * 100)  # space freed: accepted now
    assert store.used_bytes == 200 and store.get(b) == b"b" * 100
    assert ObjectStore(tmp_path / "o", max_bytes=250).used_bytes == 200  # counted again on reopening
    with pytest.raises(ValueError):
        ObjectStore(tmp_path / "p", max_bytes=0)


def test_a_full_disk_is_storage_full_with_nothing_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObjectStore(tmp_path / "o")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageFull, match="disk is full"):
        store.put(b"x" * 10)
    assert store.used_bytes == 0 and list(store.objects()) == []
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file()]  # no temp file either


def test_collector_keeps_referenced_and_young_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = ObjectStore(tmp_path / "o")
    published, live, refused, young = (objects.put(bytes([i]) * 50) for i in range(4))
    old = time.time() - 3600
    for d in (published, live, refused):
        os.utime(objects._path(d), (old, old))
    # The store's side (which digests are referenced) is exercised over real SQL in
    # tests/integration/test_object_store.py; here only the collector's rule.
    monkeypatch.setattr(garbage, "referenced_objects", lambda store: {published, live})
    report = collect_garbage(store=None, objects=objects, min_age_s=600)  # type: ignore[arg-type]
    assert (report.removed, report.freed_bytes, report.kept) == (1, 50, 3)
    assert not objects.has(refused) and all(objects.has(d) for d in (published, live, young))
    objects.put(bytes([0]) * 50)  # put again: refreshed, so an old object in use is young again
    assert objects._path(published).stat().st_mtime > old + 1000
    with pytest.raises(ValueError):
        collect_garbage(store=None, objects=objects, min_age_s=-1)  # type: ignore[arg-type]


def test_a_refused_upload_deletes_only_what_it_wrote_and_nobody_else_uses(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects")
    mine, shared, accepted_elsewhere = (bytes([i]) * 40 for i in range(3))
    pinned, created = [], []
    for data in (mine, shared, accepted_elsewhere):
        digest, new = objects.put_pinned(data)
        pinned.append(digest)
        if new:
            created.append(digest)
    assert len(created) == 3
    other, _ = objects.put_pinned(shared)                 # a second upload in flight uses it
    accepted, new = objects.put_pinned(accepted_elsewhere)  # a third, accepted, named it
    assert not new
    objects.release([accepted], accepted=True)
    freed = objects.release(pinned, created=created, accepted=False)
    assert freed == 40 and not objects.has(pinned[0])
    assert objects.has(other) and objects.has(accepted)
    objects.release([other], created=[], accepted=False)  # it had not written it: kept
    assert objects.has(other) and objects.used_bytes == 80
