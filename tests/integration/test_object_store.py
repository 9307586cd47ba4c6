"""Fault-matrix cell "the object store's disk is full", over real gRPC with the key
holder: an upload past the store's limit is refused whole with RESOURCE_EXHAUSTED and a
clear message, the uploads accepted before it are neither lost nor changed, the round
closes on them, and the garbage collector then frees the refused and superseded chunks
(over the real tables) while keeping the published aggregates."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedsecure.crypto.packing import parse_plain_encoding
from fedsecure.kit import load_kit
from fedsecure.types import PhaseConfig, RunConfig, TaskKind
from keyholder.decryption_log import verify_decryption_log
from server.planners.metrics import MetricsLog
from server.planners.train import TrainPlanner
from server.secagg.garbage import collect_garbage
from tests.helpers import IMAGE, TEXT, assert_refused, encrypted_update, pull_tasks, wait_for

N = 2048
RUN = RunConfig(rounds=1, quorum=2, min_clients=3, phases=(PhaseConfig(TaskKind.TRAIN, 8),))


def test_full_object_store_refuses_whole_and_loses_nothing_accepted(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fed = start_federation(RUN, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "metrics.jsonl"), aggregator=aggregator)}, keyholder=True)
    updates = {name: encrypted_update(fed.kit(name), {TEXT: np.full(N, value)}, 1 / 3)
               for name, value in (("a", 0.2), ("b", 0.4), ("c", 0.9))}
    # Sized from the real ciphertexts: room for two clients' chunks and half of a third.
    size = sum(len(c) for c in updates["a"].chunks)
    fed.server.aggregator.objects.max_bytes = 2 * size + size // 2
    tasks = pull_tasks(fed, ("a", "b", "c"))
    for name in "ab":
        client, task = tasks[name]
        client.submit(task, updates[name])
    client_c, task_c = tasks["c"]
    assert_refused(lambda: client_c.submit(task_c, updates["c"]), grpc.StatusCode.RESOURCE_EXHAUSTED,
                   "object store is full")
    assert fed.store(lambda s: s.submissions.count(task_c.run_id)) == 2
    assert fed.store(lambda s: s.submissions.for_task(task_c.task_id)) is None

    wait_for(lambda: fed.loop.call(fed.server.engine.status).state == "finished", 60, "the run to finish")
    agg = tasks["a"][0].download_aggregate(task_c.run_id, TEXT, 1)
    _, numel = parse_plain_encoding(agg.encoding)
    assert agg.contributors == 2 and numel == N
    assert np.max(np.abs(np.frombuffer(agg.data, dtype="<f4") - 0.3)) < 1e-4  # a and b exactly, no trace of c
    entries = verify_decryption_log(fed.state_dir.parent / "keyholder" / "decryptions.jsonl",
                                    cert=load_kit(fed.kits.keyholder).cert)
    assert [(e.group, e.contributors) for e in entries] == [(TEXT, ("a", "b"))]

    # The round is closed: a's and b's chunks are superseded by the aggregate; only that stays.
    objects = fed.server.aggregator.objects
    published = set(fed.store(lambda s: s.submissions.published_chunk_digests()))
    report = fed.store(lambda s: collect_garbage(store=s, objects=objects, min_age_s=0))
    assert report.removed == 2 and report.freed_bytes == sum(len(c) for n in "ab" for c in updates[n].chunks)
    assert {d for d, _, _ in objects.objects()} == published and published
    assert objects.used_bytes == sum(n for _, n, _ in objects.objects())
    for c, _ in tasks.values():
        c.close()


def test_refused_uploads_leave_nothing_in_the_store_and_cannot_fill_it(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Attack review (issue 23 item 6): chunks were written before they were validated and
    kept after a refusal, so refused uploads filled the store and honest clients were then
    refused. Now: a chunk that does not validate is never written, a refused upload's
    chunks are deleted, and a client's bytes in flight are capped."""
    from fedsecure.crypto import ckks
    from fedsecure.transport.limits import Limits
    from tests.integration.test_secure_aggregation import _stream

    n = 3 * 2048  # three ciphertexts per chunk; a chunk per group: two chunks per upload
    groups = {TEXT: np.full(n, 0.2), IMAGE: np.full(n, 0.2)}
    fed = start_federation(RUN, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "metrics.jsonl"), aggregator=aggregator)}, keyholder=True,
        limits=Limits(max_pending_upload_bytes=64 * 1024 * 1024))
    tasks = pull_tasks(fed, ("a", "b", "c"))
    client_a, task_a = tasks["a"]
    good = encrypted_update(fed.kit("a"), groups, 1 / 3)
    assert len(good.chunks) >= 2
    size = sum(len(c) for c in good.chunks)
    objects = fed.server.aggregator.objects
    objects.max_bytes = 4 * size  # room for four honest uploads
    stub = client_a._stub

    # Refused at the first chunk (not a ciphertext): nothing is written.
    junk = [b"\x00" * len(good.chunks[0]), *good.chunks[1:]]
    # Refused at the last chunk (valid first chunks, then another scale): what was written is deleted.
    parts = ckks.unframe(good.chunks[-1])
    late_bad = [*good.chunks[:-1], ckks.frame([parts[0][: len(parts[0]) // 2], *parts[1:]])]
    for _ in range(8):  # twice what the store holds, had refused bytes stayed
        for chunks in (junk, late_bad):
            with pytest.raises(grpc.RpcError) as err:
                stub.UploadUpdate(_stream(client_a, task_a, good, chunks=chunks), timeout=10)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert objects.used_bytes == 0 and not list(objects.objects())

    # The honest clients are then accepted, and so is a; the round closes.
    for name, (client, task) in tasks.items():
        client.submit(task, encrypted_update(fed.kit(name), groups, 1 / 3))
    wait_for(lambda: fed.loop.call(fed.server.engine.status).state == "finished", 60, "the run to finish")
    for c, _ in tasks.values():
        c.close()


def test_a_clients_uploads_in_flight_are_capped(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedsecure.transport.limits import Limits

    one = RunConfig(rounds=1, quorum=1, min_clients=1, phases=(PhaseConfig(TaskKind.TRAIN, 30),))
    fed = start_federation(one, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "metrics.jsonl"), aggregator=aggregator)}, keyholder=True,
        limits=Limits(max_pending_upload_bytes=1000))
    tasks = pull_tasks(fed, ("a",))
    client, task = tasks["a"]
    update = encrypted_update(fed.kit("a"), {TEXT: np.full(N, 0.2)}, 1 / 3)
    assert_refused(lambda: client.submit(task, update), grpc.StatusCode.RESOURCE_EXHAUSTED, "uploads in flight")
    assert not list(fed.server.aggregator.objects.objects())
    client.close()
