"""Bad submissions over real gRPC: each refused with a fitting code and a clear message,
nothing recorded, and the server keeps serving the others."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from client_sdk import FederatedClient, Update
from fedsecure import serde
from fedsecure.crypto import signing
from fedsecure.proto.v1 import common_pb2, federation_pb2
from fedsecure.transport.limits import Limits
from fedsecure.types import LedgerHead, PayloadKind, PhaseConfig, RunConfig, Score, Task, TaskKind, UpdateManifest
from tests.conftest import Federation
from tests.helpers import (
    group,
    StaticScorePlanner,
    StaticTrainPlanner,
    assert_refused,
    encrypted_update,
    pull_tasks,
    resign,
    wait_for,
)

SCORE_RUN = RunConfig(rounds=1, quorum=2, min_clients=2, phases=(PhaseConfig(TaskKind.SCORE, 60),))
@pytest.fixture(scope="module", autouse=True)
def _updates(kits) -> None:  # type: ignore[no-untyped-def]
    from fedsecure.kit import load_kit

    global THREE_SECTIONS, ONE_SECTION
    kit = load_kit(kits.clients["a"])
    THREE_SECTIONS = encrypted_update(kit, {group(g): np.full(2048, 0.1) for g in "xyz"}, 0.5)
    ONE_SECTION = encrypted_update(kit, {group("x"): np.full(2048, 0.2)}, 0.5)


THREE_SECTIONS: Update
ONE_SECTION: Update
TRAIN_RUN = RunConfig(rounds=1, quorum=2, min_clients=2, phases=(PhaseConfig(TaskKind.TRAIN, 60),))


def _scores(task: Task) -> tuple[Score, ...]:
    return tuple(Score(i.item_id, 1.0) for i in task.spec.items)  # type: ignore[union-attr]


def _scores_request(client: FederatedClient, task: Task, scores: tuple[Score, ...] | None = None,
                    **changes: object) -> federation_pb2.SubmitScoresRequest:
    scores = _scores(task) if scores is None else scores
    env = client.sign(task, PayloadKind.SCORES, signing.scores_digest(scores))
    if changes:
        env = resign(client, env, **changes)
    return federation_pb2.SubmitScoresRequest(envelope=serde.envelope_to_proto(env),
                                              scores=serde.scores_to_proto(scores))


def _n_submissions(fed: Federation) -> int:
    return fed.store(lambda s: s.submissions.count())


@pytest.fixture
def score_fed(start_federation: Callable[..., Federation]) -> Iterator[tuple[Federation, dict]]:
    fed = start_federation(SCORE_RUN, planners={TaskKind.SCORE: StaticScorePlanner()})
    tasks = pull_tasks(fed, ("a", "b"))
    yield fed, tasks
    for c, _ in tasks.values():
        c.close()


def test_resend_is_idempotent_and_counted_once(score_fed) -> None:  # type: ignore[no-untyped-def]
    fed, tasks = score_fed
    client, task = tasks["a"]
    req = _scores_request(client, task)
    first = client._stub.SubmitScores(req, timeout=5)
    again = client._stub.SubmitScores(req, timeout=5)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.submission_id == again.submission_id
    assert _n_submissions(fed) == 1


def test_binding_and_signature_violations(score_fed) -> None:  # type: ignore[no-untyped-def]
    fed, tasks = score_fed
    client, task = tasks["a"]
    stub = client._stub
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, round=task.round + 1), timeout=5),
             grpc.StatusCode.INVALID_ARGUMENT, "bound to run")
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, run_id="run-other"), timeout=5),
             grpc.StatusCode.INVALID_ARGUMENT, "bound to run")
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, client_id="b"), timeout=5),
             grpc.StatusCode.INVALID_ARGUMENT, "caller is 'a'")
    bad_sig = _scores_request(client, task)
    bad_sig.envelope.signature = bad_sig.envelope.signature[:-1] + bytes([bad_sig.envelope.signature[-1] ^ 1])
    assert_refused(lambda: stub.SubmitScores(bad_sig, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "signature")
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, timestamp_ms=1), timeout=5),
             grpc.StatusCode.INVALID_ARGUMENT, "clock skew")
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, task_id="t-unknown"), timeout=5),
             grpc.StatusCode.NOT_FOUND, "not a task of a")
    # b's task is not a's to answer.
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, task_id=tasks["b"][1].task_id), timeout=5),
             grpc.StatusCode.NOT_FOUND, "not a task of a")
    # Payload changed after signing.
    tampered = _scores_request(client, task)
    tampered.scores[0].value = 42.0
    assert_refused(lambda: stub.SubmitScores(tampered, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "digest")
    # Wrong items, non-finite values, wrong payload kind.
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, scores=(Score("zz", 1.0),)), timeout=5),
             grpc.StatusCode.INVALID_ARGUMENT, "items in order")
    nan = tuple(dataclasses.replace(s, value=math.nan) for s in _scores(task))
    assert_refused(lambda: stub.SubmitScores(_scores_request(client, task, scores=nan), timeout=5),
             grpc.StatusCode.INVALID_ARGUMENT, "not a finite number")
    head = LedgerHead()
    env = client.sign(task, PayloadKind.LEDGER_HEAD, signing.ledger_head_digest(head))
    assert_refused(lambda: stub.ReportLedger(federation_pb2.ReportLedgerRequest(
        envelope=serde.envelope_to_proto(env), head=serde.ledger_head_to_proto(head)), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "cannot answer a SCORE task")
    assert _n_submissions(fed) == 0
    # The server still serves: a valid submission from each client goes through.
    for c, t in tasks.values():
        assert not c._stub.SubmitScores(_scores_request(c, t), timeout=5).duplicate
    assert _n_submissions(fed) == 2


def test_replays_areassert_refused(score_fed) -> None:  # type: ignore[no-untyped-def]
    fed, tasks = score_fed
    client, task = tasks["a"]
    accepted = _scores_request(client, task)
    client._stub.SubmitScores(accepted, timeout=5)
    # Same nonce, other bytes: a replayed nonce.
    reused = _scores_request(client, task, nonce=accepted.envelope.nonce, timestamp_ms=accepted.envelope.timestamp_ms + 1)
    assert_refused(lambda: client._stub.SubmitScores(reused, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "nonce")
    # Fresh nonce, same task: the task already holds a submission.
    assert_refused(lambda: client._stub.SubmitScores(_scores_request(client, task), timeout=5),
             grpc.StatusCode.ALREADY_EXISTS, "already holds")
    assert _n_submissions(fed) == 1


def _upload_stream(client: FederatedClient, task: Task, chunks: list[bytes], *, manifest_chunks: list[bytes] | None = None,
                   corrupt: int | None = None, send: int | None = None,
                   encoding: str | None = None) -> Iterator[federation_pb2.UploadUpdateRequest]:
    declared = chunks if manifest_chunks is None else manifest_chunks
    manifest = UpdateManifest(group="attn", weight=0.5, encoding=encoding or THREE_SECTIONS.encoding,
                              chunk_sha256=tuple(signing.sha256(c) for c in declared),
                              total_bytes=sum(len(c) for c in declared))
    env = client.sign(task, PayloadKind.UPDATE, signing.manifest_digest(manifest))
    yield federation_pb2.UploadUpdateRequest(header=federation_pb2.UploadHeader(
        envelope=serde.envelope_to_proto(env), manifest=serde.manifest_to_proto(manifest)))
    for i, data in enumerate(chunks[:send]):
        digest = signing.sha256(data)
        if i == corrupt:
            data = b"X" + data[1:]
        yield federation_pb2.UploadUpdateRequest(chunk=common_pb2.TensorChunk(
            name="attn", dtype="bytes", index=i, data=data, sha256=digest))


def test_upload_limits_digests_and_download(start_federation: Callable[..., Federation]) -> None:
    limits = Limits(max_chunks_per_stream=4, max_chunk_bytes=40_000)
    fed = start_federation(TRAIN_RUN, planners={TaskKind.TRAIN: StaticTrainPlanner()}, limits=limits)
    tasks = pull_tasks(fed, ("a", "b"))
    client, task = tasks["a"]
    up = client._stub.UploadUpdate
    good = list(THREE_SECTIONS.chunks)
    assert_refused(lambda: up(_upload_stream(client, task, good, corrupt=1), timeout=10),
             grpc.StatusCode.INVALID_ARGUMENT, "sha256 does not match")
    assert_refused(lambda: up(_upload_stream(client, task, good + [b"extra"], manifest_chunks=good), timeout=10),
             grpc.StatusCode.RESOURCE_EXHAUSTED, "more chunks than")
    assert_refused(lambda: up(_upload_stream(client, task, [b"x"] * 5), timeout=10),
             grpc.StatusCode.RESOURCE_EXHAUSTED, "exceed the limit")
    assert_refused(lambda: up(_upload_stream(client, task, [b"y" * 50_000] + good[1:]), timeout=10),
             grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than 40000")
    assert_refused(lambda: up(_upload_stream(client, task, good, send=2), timeout=10),
             grpc.StatusCode.INVALID_ARGUMENT, "ended after 2 of 3")
    assert _n_submissions(fed) == 0
    # Valid uploads from both clients; the phase closes and the aggregate is downloadable.
    acks = [client.submit(task, THREE_SECTIONS)]
    other, other_task = tasks["b"]
    acks.append(other.submit(other_task, ONE_SECTION))
    assert [a.duplicate for a in acks] == [False, False]
    assert _n_submissions(fed) == 2
    wait_for(lambda: fed.store(lambda s: s.submissions.aggregate(task.run_id, 1, "attn")), 10, "the published aggregate")
    assert client.download_aggregate(task.run_id, "attn", 1).data == b"".join(good) + ONE_SECTION.chunks[0]
    assert_refused(lambda: client.download_aggregate(task.run_id, "nope", 1), grpc.StatusCode.NOT_FOUND, "no aggregate")
    for c, _ in tasks.values():
        c.close()
