"""Secure aggregation over real gRPC on loopback: clients upload CKKS ciphertexts, the
server adds them as they arrive, the key holder checks and decrypts only the quorum sum,
clients download the mean. Bad uploads, a disconnect mid-stream and a key holder that is
down are each shown to leave the sum untouched and the server serving."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from client_sdk import FederatedClient
from fedsecure import serde
from fedsecure.crypto import ckks, signing
from fedsecure.crypto.ckks_encryptor import Encryptor
from fedsecure.crypto.packing import parse_plain_encoding
from fedsecure.errors import CkksError
from fedsecure.kit import load_kit
from fedsecure.proto.v1 import common_pb2, federation_pb2
from fedsecure.transport.retry import Backoff
from fedsecure.types import PayloadKind, PhaseConfig, RunConfig, Task, TaskKind, UpdateManifest
from keyholder.decryption_log import verify_decryption_log
from server.planners.metrics import MetricsLog
from server.planners.train import TrainPlanner
from tests.helpers import IMAGE, TEXT, assert_refused, encrypted_update, pull_tasks, wait_for

RUN = RunConfig(rounds=1, quorum=2, min_clients=3, phases=(PhaseConfig(TaskKind.TRAIN, 60),))
N = 2048


def _stream(client: FederatedClient, task: Task, update, *, chunks=None, encoding=None,  # type: ignore[no-untyped-def]
            hold: threading.Event | None = None) -> Iterator[federation_pb2.UploadUpdateRequest]:
    sent = list(update.chunks if chunks is None else chunks)
    manifest = UpdateManifest(group=update.group, weight=update.weight, encoding=encoding or update.encoding,
                              chunk_sha256=tuple(signing.sha256(c) for c in sent), total_bytes=sum(map(len, sent)))
    env = client.sign(task, PayloadKind.UPDATE, signing.manifest_digest(manifest))
    yield federation_pb2.UploadUpdateRequest(header=federation_pb2.UploadHeader(
        envelope=serde.envelope_to_proto(env), manifest=serde.manifest_to_proto(manifest)))
    for i, data in enumerate(sent):
        if hold is not None and i == 1:
            hold.wait(10)  # the client "disconnects" here (the call is cancelled)
            return
        yield federation_pb2.UploadUpdateRequest(chunk=common_pb2.TensorChunk(
            name=update.group, dtype="bytes", index=i, data=data, sha256=signing.sha256(data)))


def test_encrypted_round_end_to_end_with_faults(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fed = start_federation(RUN, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "metrics.jsonl"), aggregator=aggregator)}, keyholder=True)
    tasks = pull_tasks(fed, ("a", "b", "c"))
    client_a, task_a = tasks["a"]
    spec = task_a.spec
    assert spec.upload_group == "attn" and spec.weight_total == 3.0  # type: ignore[union-attr]
    w = 1.0 / 3.0
    rng = np.random.default_rng(3)
    x = {k: rng.uniform(-1, 1, N) for k in ("a_img", "a_txt", "b_txt", "c_img")}
    kit_a = fed.kit("a")
    good_a = encrypted_update(kit_a, {IMAGE: x["a_img"], TEXT: x["a_txt"]}, w)
    up = client_a._stub.UploadUpdate

    # NaN/Inf never leave the client.
    with pytest.raises(CkksError, match="NaN"):
        encrypted_update(kit_a, {IMAGE: np.full(N, np.nan)}, w)
    # Wrong chunk count for the encoding.
    assert_refused(lambda: up(_stream(client_a, task_a, good_a, chunks=good_a.chunks[:1]), timeout=10),
             grpc.StatusCode.INVALID_ARGUMENT, "its encoding needs 2")
    # Encoding naming another context.
    other_ctx = good_a.encoding.replace(good_a.encoding.split(";")[1], "ctx=" + "f" * 16)
    assert_refused(lambda: up(_stream(client_a, task_a, good_a, encoding=other_ctx), timeout=10),
             grpc.StatusCode.INVALID_ARGUMENT, "another CKKS context")
    # Ciphertext bytes from another context (NVFlare's parameters), signed and digested.
    ref = ckks.create_secret_context(ckks.NVFLARE_DEFAULT_PARAMS)
    foreign = Encryptor(public_context=ckks.public_context_bytes(ref), params=ckks.NVFLARE_DEFAULT_PARAMS,
                        workers=1).encrypt(np.full(N, 0.1), weight=w)[0]
    assert_refused(lambda: up(_stream(client_a, task_a, good_a, chunks=[good_a.chunks[0], foreign]), timeout=10),
             grpc.StatusCode.INVALID_ARGUMENT, "does not load")
    # Corrupt ciphertext bytes (signed as such, so only the parser can tell).
    # A flipped byte inside the compressed coefficients can decode to other, still valid
    # coefficients (nothing could tell those from an honest ciphertext: it happened once in
    # CI); a corrupt SEAL header never parses.
    corrupt = bytearray(good_a.chunks[1])
    header = corrupt.find(b"\x5e\xa1")  # SEAL's magic; then version, compression mode, size
    assert header > 0
    corrupt[header + 3] ^= 0xFF
    assert_refused(lambda: up(_stream(client_a, task_a, good_a, chunks=[good_a.chunks[0], bytes(corrupt)]), timeout=10),
             grpc.StatusCode.INVALID_ARGUMENT, "chunk 1")
    # Disconnect after the first chunk was added: the call is cancelled mid-stream.
    hold = threading.Event()
    future = up.future(_stream(client_a, task_a, encrypted_update(kit_a, {IMAGE: np.full(N, 0.9),
                                                                          TEXT: np.full(N, 0.9)}, w),
                               hold=hold), timeout=30)
    time.sleep(1.5)
    future.cancel()
    hold.set()
    assert fed.store(lambda s: s.submissions.count()) == 0

    # The server kept serving: valid uploads are accepted and the phase closes.
    client_a.submit(task_a, good_a)
    client_b, task_b = tasks["b"]
    client_b.submit(task_b, encrypted_update(fed.kit("b"), {TEXT: x["b_txt"]}, w))
    client_c, task_c = tasks["c"]
    client_c.submit(task_c, encrypted_update(fed.kit("c"), {IMAGE: x["c_img"]}, w))
    wait_for(lambda: len(fed.store(lambda s: s.submissions.aggregate_groups(task_a.run_id, 1))) == 2, 60, "both aggregates")
    for group, expected, contributors in ((IMAGE, (x["a_img"] + x["c_img"]) / 2, 2),
                                          (TEXT, (x["a_txt"] + x["b_txt"]) / 2, 2)):
        agg = client_b.download_aggregate(task_a.run_id, group, 1)
        assert agg.contributors == contributors
        _, numel = parse_plain_encoding(agg.encoding)
        mean = np.frombuffer(agg.data, dtype="<f4")
        assert numel == N and np.max(np.abs(mean - expected)) < 1e-4  # the rolled-back upload left no trace
    entries = verify_decryption_log(fed.state_dir.parent / "keyholder" / "decryptions.jsonl",
                                    cert=load_kit(fed.kits.keyholder).cert)
    assert sorted((e.group, e.contributors) for e in entries) == [(IMAGE, ("a", "c")), (TEXT, ("a", "b"))]
    assert all(e.sampled_chunks == (0,) for e in entries)  # fraction 1.0: the one chunk was re-added
    for c, _ in tasks.values():
        c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_keyholder_down_when_the_phase_closes(start_federation, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    fed = start_federation(RUN, planners=lambda aggregator: {TaskKind.TRAIN: TrainPlanner(
        metrics=MetricsLog(tmp_path / "metrics.jsonl"), aggregator=aggregator)}, keyholder_address=f"127.0.0.1:{port}",
                           keyholder_backoff=Backoff(initial_s=0.1, max_delay_s=0.3, max_elapsed_s=1.0))
    tasks = pull_tasks(fed, ("a", "b", "c"))
    for name, (client, task) in tasks.items():
        client.submit(task, encrypted_update(fed.kit(name), {TEXT: np.full(N, 0.3)}, 1 / 3))
    run_id = tasks["a"][1].run_id
    time.sleep(6)  # several close attempts, each retrying with backoff
    status = fed.loop.call(fed.server.engine.status)
    assert status.state == "running" and status.rounds_closed == 0  # waiting, not falling back
    assert fed.store(lambda s: s.submissions.aggregate_groups(run_id, 1)) == []
    fed.start_keyholder(address=f"127.0.0.1:{port}")
    wait_for(lambda: fed.loop.call(fed.server.engine.status).state == "finished", 60, "the run to finish")
    agg = tasks["a"][0].download_aggregate(run_id, TEXT, 1)
    assert np.max(np.abs(np.frombuffer(agg.data, dtype="<f4") - 0.3)) < 1e-4 and agg.contributors == 3
    for c, _ in tasks.values():
        c.close()
