"""Fuzzing past the signature checks (issue 15 item 1): a client with a valid key signs
hostile payloads — update manifests and chunks, scores, ledger heads, task reports and
declines — bound to its real open tasks, so each reaches the checks behind the envelope's
(layouts, CKKS parsing, item binding, finiteness, rollback). Every call must end in a
clear status, never INTERNAL or UNKNOWN, and the run must still go on to its end with the
client's legitimate answers.

Each payload is built as a protobuf message of hostile values; when the SDK's parser
accepts it, the envelope is signed over exactly the digest the server will compute."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk import FederatedClient, Scores
from fedsecure import serde
from fedsecure.crypto import signing
from fedsecure.proto.v1 import common_pb2, federation_pb2
from fedsecure.transport.limits import Limits
from fedsecure.types import Capabilities, LedgerHead, PayloadKind, PhaseConfig, RunConfig, Score, ScoreSpec, Task, TaskKind
from tests.conftest import Federation
from tests.helpers import IMAGE, TEST_SHAPE, TEXT, StaticScorePlanner, StaticTrainPlanner, encrypted_update, wait_for
from tests.security.test_fuzz import CRASHES, hostile

EXAMPLES = int(os.environ.get("FEDSECURE_FUZZ_EXAMPLES", "25"))
RUN = RunConfig(rounds=1, quorum=1, min_clients=1, phases=(PhaseConfig(TaskKind.TRAIN, 300),
                                                             PhaseConfig(TaskKind.SCORE, 300),
                                                             PhaseConfig(TaskKind.REPORT_LEDGER, 300)))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e-308]))


def _parsed(parse: Callable[[], object]) -> object | None:
    try:
        return parse()
    except (ValueError, TypeError, OverflowError):
        return None  # the SDK would not send it; the server refuses it unsigned as well


def _sign(client: FederatedClient, task: Task, kind: PayloadKind, digest: bytes) -> common_pb2.SignedEnvelope:
    return serde.envelope_to_proto(client.sign(task, kind, digest))


DETAILS: dict[str, int] = {}


def _outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() not in CRASHES, (err.code(), err.details())
        key = " ".join((err.details() or "").split()[:4])
        DETAILS[key] = DETAILS.get(key, 0) + 1
        return err.code().name
    return "OK"


def _next_task(client: FederatedClient, kind: TaskKind) -> Task:
    def pulled() -> Task | None:
        resp = client.pull()
        if resp.WhichOneof("outcome") != "task":
            return None
        task = serde.task_from_proto(resp.task)
        return task if task.kind is kind else None

    return wait_for(pulled, 60, f"a {kind.name} task")


def _uploads(client: FederatedClient, task: Task, seen: dict[str, int]) -> None:
    real = encrypted_update(client.kit, {IMAGE: np.full(2048, 0.5), TEXT: np.full(2048, 0.5)}, 1.0)
    up = client._stub.UploadUpdate

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(variant=st.sampled_from(["manifest", "random-chunks", "damaged-ciphertext"]),
           manifest_bytes=hostile(common_pb2.UpdateManifest.DESCRIPTOR),
           chunk_bytes=st.lists(hostile(common_pb2.TensorChunk.DESCRIPTOR), min_size=1, max_size=3),
           data=st.lists(st.binary(min_size=0, max_size=70_000), min_size=2, max_size=2),
           flip=st.integers(0, 10**9))
    def one(variant: str, manifest_bytes: bytes, chunk_bytes: list[bytes], data: list[bytes], flip: int) -> None:
        manifest = common_pb2.UpdateManifest.FromString(manifest_bytes)
        chunks = [common_pb2.TensorChunk.FromString(b) for b in chunk_bytes]
        if variant != "manifest":  # the real encoding: the bytes themselves are the attack
            if variant == "damaged-ciphertext":
                # A damaged SEAL header or a truncated stream: never a valid ciphertext (a flipped
                # coefficient byte can decode to another valid one, which would answer the task).
                blob = bytearray(real.chunks[0])
                if flip % 2:
                    blob = blob[: len(blob) - 1 - flip % 100]
                else:  # SEAL's header: size, version, compression mode, stream size (not the reserved bytes)
                    header = blob.find(b"\x5e\xa1")
                    blob[header + (2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15)[flip % 12]] ^= 1 + flip % 255
                data = [bytes(blob), *real.chunks[1:]]
            chunks = [common_pb2.TensorChunk(name=real.group, dtype="bytes", index=i, data=d, sha256=signing.sha256(d))
                      for i, d in enumerate(data)]
            manifest = serde.manifest_to_proto(serde.manifest_from_proto(common_pb2.UpdateManifest(
                group=real.group, weight=1.0, encoding=real.encoding, chunk_sha256=[c.sha256 for c in chunks],
                total_bytes=sum(len(c.data) for c in chunks))))
        parsed = _parsed(lambda: serde.manifest_from_proto(manifest))
        env = (_sign(client, task, PayloadKind.UPDATE, signing.manifest_digest(parsed))  # type: ignore[arg-type]
               if parsed is not None else common_pb2.SignedEnvelope())
        header = federation_pb2.UploadHeader(envelope=env, manifest=manifest)
        requests = [federation_pb2.UploadUpdateRequest(header=header)]
        requests += [federation_pb2.UploadUpdateRequest(chunk=c) for c in chunks]
        code = _outcome(lambda: up(iter(requests), timeout=10))
        seen[f"UploadUpdate:{code}"] = seen.get(f"UploadUpdate:{code}", 0) + 1

    one()


def _unary(client: FederatedClient, task: Task, seen: dict[str, int], *, method: str, desc: object,
           sign: Callable[[Message], tuple[PayloadKind, bytes] | None],
           strategy: st.SearchStrategy[bytes] | None = None) -> None:
    rpc = getattr(client._stub, method)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(payload=strategy if strategy is not None else hostile(desc))  # type: ignore[arg-type]
    def one(payload: bytes) -> None:
        request = message_factory.GetMessageClass(desc).FromString(payload)  # type: ignore[arg-type]
        signed = _parsed(lambda: sign(request))
        if signed is not None:
            kind, digest = signed  # type: ignore[misc]
            request.envelope.CopyFrom(_sign(client, task, kind, digest))
        code = _outcome(lambda: rpc(request, timeout=10))
        seen[f"{method}:{code}"] = seen.get(f"{method}:{code}", 0) + 1

    one()


def _scores_for(task: Task) -> st.SearchStrategy[bytes]:
    """The task's real item ids in order (or shuffled, cut, repeated) with hostile values;
    never a valid answer (one would close the task, and every later call would stop at
    the one-answer-per-task check instead of reaching the content checks)."""
    assert isinstance(task.spec, ScoreSpec)
    ids = [i.item_id for i in task.spec.items]
    orders = st.one_of(st.just(ids), st.just(ids), st.permutations(ids),
                       st.lists(st.sampled_from(ids), max_size=len(ids) * 2))

    def invalid(pair: tuple[list[str], list[float]]) -> bool:
        order, values = pair
        return order != ids or not all(math.isfinite(v) for v in values[: len(order)])

    pairs = st.tuples(orders, st.lists(FLOATS, min_size=len(ids) * 2, max_size=len(ids) * 2)).filter(invalid)
    return pairs.map(lambda pair: federation_pb2.SubmitScoresRequest(scores=[
        common_pb2.Score(item_id=i, value=v) for i, v in zip(*pair)]).SerializeToString())


def _invalid_heads() -> st.SearchStrategy[bytes]:
    """Ledger heads with hostile fields and a non-finite or negative ε (never valid)."""
    def request(head_bytes: bytes, epsilon: float) -> bytes:
        head = common_pb2.LedgerHead.FromString(head_bytes)
        head.epsilon = epsilon
        return federation_pb2.ReportLedgerRequest(head=head).SerializeToString()

    return st.builds(request, hostile(common_pb2.LedgerHead.DESCRIPTOR),
                     st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e-300]))


def _reports() -> st.SearchStrategy[bytes]:
    """Task reports with hostile metrics (a report cannot answer a REPORT_LEDGER task)."""
    return hostile(common_pb2.TaskReport.DESCRIPTOR).map(
        lambda b: federation_pb2.FinishTaskRequest(report=common_pb2.TaskReport.FromString(b)).SerializeToString())


def test_signed_hostile_payloads_reach_the_deep_checks_and_the_run_goes_on(
        start_federation: Callable[..., Federation]) -> None:
    fed = start_federation(RUN, planners={TaskKind.TRAIN: StaticTrainPlanner(), TaskKind.SCORE: StaticScorePlanner()},
                           limits=Limits(calls_per_second=1e9, call_burst=10**9))
    client = FederatedClient(kit=fed.kit("a"), address=fed.address, poll_wait_ms=500,
                             capabilities=Capabilities(block_shape=TEST_SHAPE))
    client.hello()
    seen: dict[str, int] = {}

    train = _next_task(client, TaskKind.TRAIN)
    _uploads(client, train, seen)
    _outcome(lambda: client.submit(train, encrypted_update(client.kit, {TEXT: np.full(2048, 0.1)}, 1.0)))

    score = _next_task(client, TaskKind.SCORE)
    _unary(client, score, seen, method="SubmitScores", desc=federation_pb2.SubmitScoresRequest.DESCRIPTOR,
           sign=lambda r: (PayloadKind.SCORES, signing.scores_digest(serde.scores_from_proto(r.scores))),
           strategy=_scores_for(score))
    assert isinstance(score.spec, ScoreSpec)
    _outcome(lambda: client.submit(score, _legit_scores(score)))

    ledger = _next_task(client, TaskKind.REPORT_LEDGER)
    _unary(client, ledger, seen, method="ReportLedger", desc=federation_pb2.ReportLedgerRequest.DESCRIPTOR,
           sign=lambda r: (PayloadKind.LEDGER_HEAD, signing.ledger_head_digest(serde.ledger_head_from_proto(r.head))),
           strategy=_invalid_heads())

    def finish_digest(r: federation_pb2.FinishTaskRequest) -> tuple[PayloadKind, bytes]:
        if r.WhichOneof("outcome") == "decline":
            return PayloadKind.DECLINE, signing.decline_digest(serde.decline_from_proto(r.decline))
        return PayloadKind.TASK_REPORT, signing.task_report_digest(serde.report_from_proto(r.report))

    _unary(client, ledger, seen, method="FinishTask", desc=federation_pb2.FinishTaskRequest.DESCRIPTOR,
           sign=finish_digest, strategy=_reports())
    _outcome(lambda: client.submit(ledger, LedgerHead()))
    print("signed fuzz outcomes:", seen)
    print("refusals by message:", DETAILS)
    assert sum(seen.values()) >= 4 * EXAMPLES
    # Past the signature: no refusal was about the envelope or its signature.
    assert not [d for d in DETAILS if "signature" in d or "envelope" in d], DETAILS
    assert any("malformed ciphertext" in d for d in DETAILS) and any("non-finite" in d or d.startswith("score for item") for d in DETAILS), DETAILS
    # A hostile answer the checks let through (a valid decline, say) may have sent the round
    # to another attempt: the client's legitimate answers still carry the run to its end.
    wait_for(lambda: _answer_one(client) == "finished", 120, "the run to finish")
    client.close()


def _legit_scores(task: Task) -> Scores:
    assert isinstance(task.spec, ScoreSpec)
    return Scores(tuple(Score(i.item_id, 1.0) for i in task.spec.items))


def _answer_one(client: FederatedClient) -> str:
    """Pull once and answer legitimately; the run's state when idle."""
    resp = client.pull()
    if resp.WhichOneof("outcome") == "idle":
        return resp.idle.run_state
    task = serde.task_from_proto(resp.task)
    outcome = {TaskKind.TRAIN: lambda: encrypted_update(client.kit, {TEXT: np.full(2048, 0.1)}, 1.0),
               TaskKind.SCORE: lambda: _legit_scores(task), TaskKind.REPORT_LEDGER: LedgerHead}[task.kind]()
    _outcome(lambda: client.submit(task, outcome))
    return "answered"
