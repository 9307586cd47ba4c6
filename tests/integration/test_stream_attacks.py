"""Attack review (issue 23, items 3-5), over real mTLS gRPC on loopback, with one enrolled
client's valid kit:
- 3: after `admin revoke`, the client's already-open score session ends and no step
  waits for it or fuses its answers;
- 4: one identity cannot hold more than its share of calls, nor lock others or the admin
  out; an idle stream is ended when its first message does not come; a call cannot
  outlive the server's own time limit, whatever deadline it asked for;
- 5: answers for no pending step are dropped before any verification, and a client that
  sends more answers than it was asked for has its session ended.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import grpc
import pytest

from fedsecure import serde
from fedsecure.admin_client import AdminClient
from fedsecure.crypto import signing
from fedsecure.kit import load_kit
from fedsecure.proto.v1 import federation_pb2, federation_pb2_grpc
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, Limits, channel_options
from fedsecure.types import (AlignSpec, Capabilities, PayloadKind, PhaseConfig, RunConfig, Score, ScoreItem,
                             StepScores, Task, TaskKind, TaskSpec)
from client_sdk import FederatedClient
from server.align.sessions import ScoreSessions
from server.rounds.admission import Admission
from server.rounds.phases import PhaseContext
from server.rounds.store import SubmissionRow
from tests.conftest import Federation
from tests.helpers import TEST_SHAPE, wait_for

ALIGN = RunConfig(rounds=1, quorum=1, min_clients=1, phases=(PhaseConfig(TaskKind.ALIGN, 300),))
ITEMS = (ScoreItem("x", question="q", completion="c"),)


class OpenAlignPlanner:
    """Hands every participant an ALIGN task and keeps the phase open (the test drives steps)."""

    def plan(self, ctx: PhaseContext, participants: Sequence[str]) -> Mapping[str, TaskSpec]:
        return {p: AlignSpec() for p in participants}

    async def close(self, ctx: PhaseContext, accepted: Sequence[SubmissionRow]) -> None:
        return None


def _stub(fed: Federation, name: str, limits: Limits = DEFAULT_LIMITS) -> federation_pb2_grpc.FederationStub:
    kit = fed.kit(name)
    channel = grpc.secure_channel(fed.address, channel_credentials(kit),
                                  options=channel_options(limits, target_name=kit.server_name))
    return federation_pb2_grpc.FederationStub(channel)


class RawSession:
    """A client's score session driven by hand: the test decides what is sent."""

    def __init__(self, client: FederatedClient, stub: federation_pb2_grpc.FederationStub, task: Task) -> None:
        self.client, self.task = client, task
        self.outbox: queue.Queue[federation_pb2.ScoreSessionRequest | None] = queue.Queue()
        self.outbox.put(federation_pb2.ScoreSessionRequest(open=federation_pb2.ScoreSessionOpen(task_id=task.task_id)))
        self.responses = stub.ScoreSession(iter(self.outbox.get, None), timeout=30)

    def answer(self, step: int, value: float = 1.0) -> federation_pb2.ScoreSessionRequest:
        scores = (Score("x", value),)
        env = self.client.sign(self.task, PayloadKind.STEP_SCORES, signing.step_scores_digest(step, scores))
        return serde.step_scores_to_proto(StepScores(step=step, envelope=env, scores=scores))

    def close(self) -> None:
        self.outbox.put(None)
        self.responses.cancel()


def _enrol_and_pull(fed: Federation, name: str) -> tuple[FederatedClient, Task]:
    client = FederatedClient(kit=fed.kit(name), address=fed.address, poll_wait_ms=5000,
                             capabilities=Capabilities(block_shape=TEST_SHAPE))
    client.hello()
    resp = client.pull()
    assert resp.WhichOneof("outcome") == "task", resp
    return client, serde.task_from_proto(resp.task)


def _ask(fed: Federation, sessions: ScoreSessions, client: str, step: int, timeout_s: float) -> object:
    """Request one step from ``client`` on the server's loop; the answer or the exception."""
    async def ask() -> object:
        try:
            return await sessions.request(client, step, ITEMS, timeout_s)
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            return exc
    return fed.loop.run(ask(), timeout=timeout_s + 10)


def _start(start_federation: Callable[..., Federation], **options: object) -> tuple[Federation, ScoreSessions]:
    sessions = ScoreSessions()
    fed = start_federation(ALIGN, planners={TaskKind.ALIGN: OpenAlignPlanner()}, sessions=sessions, **options)
    return fed, sessions


def test_revoking_a_client_ends_its_open_score_session(start_federation: Callable[..., Federation],
                                                        kits) -> None:  # type: ignore[no-untyped-def]
    fed, sessions = _start(start_federation)
    client, task = _enrol_and_pull(fed, "a")
    raw = RawSession(client, _stub(fed, "a"), task)
    wait_for(lambda: fed.loop.call(lambda: sessions.connected()) == ["a"], 10, "a's session to open")

    # Step 1 is answered and accepted while a is in good standing.
    responses: Iterator[federation_pb2.ScoreSessionResponse] = iter(raw.responses)
    ask = asyncio.run_coroutine_threadsafe(sessions.request("a", 1, ITEMS, 10.0), fed.loop.loop)
    batch = next(responses)
    assert batch.batch.step == 1
    raw.outbox.put(raw.answer(1))
    assert ask.result(10) == (Score("x", 1.0),)

    with AdminClient(kit=load_kit(kits.admin), address=fed.address) as admin:
        assert admin.revoke("a", "stolen key")

    # The open stream is ended by the server (not left for the client to close) ...
    with pytest.raises(grpc.RpcError) as err:
        for resp in responses:
            assert resp.WhichOneof("part") == "end", resp  # no further batch reaches a revoked client
    assert err.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.CANCELLED), err.value
    # ... no step waits for the revoked client or fuses its answers ...
    started = time.monotonic()
    out = _ask(fed, sessions, "a", 2, 5.0)
    assert isinstance(out, ConnectionError) and time.monotonic() - started < 1.0, out
    assert fed.loop.call(lambda: sessions.connected()) == []
    # ... and it cannot open another.
    with pytest.raises(grpc.RpcError) as err:
        list(_stub(fed, "a").ScoreSession(iter([federation_pb2.ScoreSessionRequest(
            open=federation_pb2.ScoreSessionOpen(task_id=task.task_id))]), timeout=5))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    raw.close()
    client.close()


def test_one_identity_cannot_hold_more_than_its_share_nor_lock_the_admin_out(
        start_federation: Callable[..., Federation], kits) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(max_calls_per_identity=4, max_client_calls=8, reserved_calls=4, max_pull_wait_ms=20_000)
    fed = start_federation(limits=limits)
    stubs = {}
    for name in "abc":
        FederatedClient(kit=fed.kit(name), address=fed.address, limits=limits).hello()
        stubs[name] = _stub(fed, name, limits)
    idle = federation_pb2.PullTaskRequest(wait_ms=20_000)  # no run: each poll waits, holding its call
    held = [stubs["a"].PullTask.future(idle, timeout=30) for _ in range(4)]
    wait_for(lambda: fed.loop.call(lambda: fed.server.interceptor.guard.open_calls("a")) == 4, 10, "a's 4 polls")
    with pytest.raises(grpc.RpcError) as err:
        stubs["a"].PullTask(idle, timeout=30)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "open calls" in err.value.details()
    # Another client is served while a holds its share.
    stubs["b"].Heartbeat(federation_pb2.HeartbeatRequest(), timeout=5)
    # Clients together at their limit: a third client waits its turn, the admin never does.
    held += [stubs["b"].PullTask.future(idle, timeout=30) for _ in range(4)]
    wait_for(lambda: fed.loop.call(lambda: fed.server.interceptor.guard.open_calls("b")) == 4, 10, "b's 4 polls")
    with pytest.raises(grpc.RpcError) as err:
        stubs["c"].Heartbeat(federation_pb2.HeartbeatRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    with AdminClient(kit=load_kit(kits.admin), address=fed.address) as admin:
        assert admin.status()[1] == 3
    for f in held:
        f.cancel()
    wait_for(lambda: fed.loop.call(lambda: fed.server.interceptor.guard.open_calls("a")) == 0, 10, "slots freed")
    stubs["a"].Heartbeat(federation_pb2.HeartbeatRequest(), timeout=5)


def test_an_idle_stream_and_an_overlong_call_are_ended_by_the_server(
        start_federation: Callable[..., Federation]) -> None:
    limits = Limits(first_message_s=0.5, max_stream_call_s=2.0)
    fed, sessions = _start(start_federation, limits=limits)
    client, task = _enrol_and_pull(fed, "a")
    stub = _stub(fed, "a", limits)
    silent: queue.Queue[federation_pb2.ScoreSessionRequest | None] = queue.Queue()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ScoreSession(iter(silent.get, None), timeout=60))  # never sends its first message
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 5
    assert "first message" in err.value.details()
    # A session asking for a 120 s deadline is still ended at the server's 2 s limit.
    raw = RawSession(client, stub, task)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(raw.responses)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 10
    wait_for(lambda: fed.loop.call(lambda: fed.server.interceptor.guard.open_calls("a")) == 0, 10, "slot freed")
    raw.close()
    client.close()


def test_a_flood_of_unasked_answers_is_dropped_unverified_and_ends_the_session(
        start_federation: Callable[..., Federation], monkeypatch: pytest.MonkeyPatch) -> None:
    verified: list[int] = []
    real = Admission.check_step_scores

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        verified.append(1)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Admission, "check_step_scores", counting)
    fed, sessions = _start(start_federation)
    client, task = _enrol_and_pull(fed, "a")
    raw = RawSession(client, _stub(fed, "a"), task)
    responses = iter(raw.responses)
    wait_for(lambda: fed.loop.call(lambda: sessions.connected()) == ["a"], 10, "a's session to open")
    ask = asyncio.run_coroutine_threadsafe(sessions.request("a", 1, ITEMS, 10.0), fed.loop.loop)
    assert next(responses).batch.step == 1
    raw.outbox.put(raw.answer(1))                 # the one answer asked for: verified and used
    assert ask.result(10) == (Score("x", 1.0),) and len(verified) == 1
    flood = raw.answer(7)
    for _ in range(200):                          # answers to a step never asked
        raw.outbox.put(flood)
    end = next(responses)
    assert end.WhichOneof("part") == "end" and "more answers" in end.end.reason, end
    assert len(verified) == 1                     # not one of the flood was verified
    session_gone = wait_for(lambda: fed.loop.call(lambda: sessions.connected()) == [], 10, "the session to end")
    assert session_gone
    raw.close()
    client.close()
