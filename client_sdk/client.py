"""``FederatedClient``: enrol, long-poll for tasks, run the registered handler, submit
the signed result. Outbound connections only; every call has a deadline; transient
failures (server restart, network) are retried with jittered exponential backoff, and
resends carry the same signed bytes, so the server counts them once."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from fedsecure import __version__, serde
from fedsecure.crypto import signing
from fedsecure.errors import (InvalidSubmission, InvalidTaskSpec, PersonalisationRefused, PrivacyBudgetExceeded,
                              TrainingDiverged)
from fedsecure.kit import Kit
from fedsecure.proto.v1 import common_pb2, federation_pb2, federation_pb2_grpc
from fedsecure.transport import chunking
from fedsecure.transport.credentials import channel_credentials
from fedsecure.transport.limits import DEFAULT_LIMITS, RPC_DEADLINE_S, STREAM_DEADLINE_S, Limits, channel_options
from fedsecure.transport.retry import Backoff, call_with_retry
from fedsecure.types import (
    AlignSpec,
    Capabilities,
    Decline,
    DeclineReason,
    Envelope,
    LedgerHead,
    PayloadKind,
    Role,
    StepScores,
    Task,
    TaskKind,
    TaskReport,
    UpdateManifest,
)

from client_sdk.outcomes import Aggregate, Handler, Outcome, Scores, StepScorer, TaskContext, Update

log = logging.getLogger("fedsecure.client")


@dataclass
class ClientRunSummary:
    """What one ``run()`` did: tasks answered per kind, declines, refusals, reconnects."""

    completed: Counter[str] = field(default_factory=Counter)
    declined: Counter[str] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)
    retries: int = 0
    run_state: str = ""
    heartbeats: int = 0           # sent and answered
    heartbeat_failures: int = 0   # not answered (the server learns of this client from its next call)


def report_ledger_head(provider: Callable[[], LedgerHead]) -> Handler:
    """Built-in REPORT_LEDGER handler: report the head of the local privacy ledger."""

    def handle(task: Task, ctx: TaskContext) -> Outcome:
        return provider()

    return handle


@dataclass(frozen=True)
class _UnaryForm:
    """How one kind of outcome is signed and sent: its payload kind, the digest its
    envelope signs, the RPC and the request that carries it."""

    kind: PayloadKind
    digest: Callable[[Any], bytes]
    method: str
    request: Callable[[common_pb2.SignedEnvelope, Any], Message]


_UNARY_FORMS: dict[type, _UnaryForm] = {
    Scores: _UnaryForm(PayloadKind.SCORES, lambda o: signing.scores_digest(o.scores), "SubmitScores",
                       lambda env, o: federation_pb2.SubmitScoresRequest(
                           envelope=env, scores=serde.scores_to_proto(o.scores))),
    LedgerHead: _UnaryForm(PayloadKind.LEDGER_HEAD, signing.ledger_head_digest, "ReportLedger",
                           lambda env, o: federation_pb2.ReportLedgerRequest(
                               envelope=env, head=serde.ledger_head_to_proto(o))),
    TaskReport: _UnaryForm(PayloadKind.TASK_REPORT, signing.task_report_digest, "FinishTask",
                           lambda env, o: federation_pb2.FinishTaskRequest(
                               envelope=env, report=serde.report_to_proto(o))),
    Decline: _UnaryForm(PayloadKind.DECLINE, signing.decline_digest, "FinishTask",
                        lambda env, o: federation_pb2.FinishTaskRequest(
                            envelope=env, decline=serde.decline_to_proto(o))),
}


def sign_envelope(kit: Kit, task: Task, kind: PayloadKind, payload_sha256: bytes) -> Envelope:
    """A fresh envelope for ``task`` over a payload digest, signed with ``kit``'s key
    (a new random nonce and the current time: the server refuses replays and stale ones)."""
    env = Envelope(client_id=kit.name, run_id=task.run_id, round=task.round, task_id=task.task_id,
                   nonce=signing.new_nonce(), timestamp_ms=int(time.time() * 1000), payload_kind=kind,
                   payload_sha256=payload_sha256)
    return dataclasses.replace(env, signature=signing.sign(kit.private_key, signing.envelope_bytes(env)))


def unary_request(kit: Kit, task: Task, outcome: Outcome) -> tuple[str, Message]:
    """(Federation method, signed request) answering ``task`` with a unary ``outcome``
    (scores, ledger head, report or decline; an ``Update`` streams: :func:`upload_requests`)."""
    form = _UNARY_FORMS.get(type(outcome))
    if form is None:
        raise TypeError(f"{type(outcome).__name__} is not a unary Outcome")
    env = sign_envelope(kit, task, form.kind, form.digest(outcome))
    return form.method, form.request(serde.envelope_to_proto(env), outcome)


def upload_requests(kit: Kit, task: Task, update: Update, limits: Limits = DEFAULT_LIMITS
                    ) -> list[federation_pb2.UploadUpdateRequest]:
    """The signed header and the chunks of ``update``'s stream (one fixed list, so a
    resend carries the same bytes and the server counts it once)."""
    for i, c in enumerate(update.chunks):
        if len(c) > limits.max_chunk_bytes:
            raise ValueError(f"update chunk {i} exceeds {limits.max_chunk_bytes} bytes")
    manifest = UpdateManifest(group=update.group, weight=update.weight, encoding=update.encoding,
                              chunk_sha256=tuple(signing.sha256(c) for c in update.chunks),
                              total_bytes=sum(len(c) for c in update.chunks))
    env = sign_envelope(kit, task, PayloadKind.UPDATE, signing.manifest_digest(manifest))
    header = federation_pb2.UploadHeader(envelope=serde.envelope_to_proto(env),
                                         manifest=serde.manifest_to_proto(manifest))
    out = [federation_pb2.UploadUpdateRequest(header=header)]
    for index, data in enumerate(update.chunks):
        chunk = next(chunking.split(data, name=update.group, chunk_bytes=max(1, len(data)), start_index=index))
        out.append(federation_pb2.UploadUpdateRequest(chunk=serde.chunk_to_proto(chunk)))
    return out


class FederatedClient:
    """A federation participant. Register a handler per task kind, then ``run()``."""

    def __init__(
        self,
        *,
        kit: Kit,
        capabilities: Capabilities = Capabilities(),
        handlers: Mapping[TaskKind, Handler] | None = None,
        address: str | None = None,
        ledger_head: Callable[[], LedgerHead] = LedgerHead,
        backoff: Backoff = Backoff(),
        poll_wait_ms: int = 5_000,
        limits: Limits = DEFAULT_LIMITS,
        on_progress: Callable[[str], None] | None = None,
        heartbeat: bool = True,
    ) -> None:
        if kit.role is not Role.CLIENT:
            raise ValueError(f"FederatedClient needs a client kit, got a {kit.role.value} kit")
        if poll_wait_ms <= 0:
            raise ValueError("poll_wait_ms must be positive")
        self.kit = kit
        self.name = kit.name
        self.capabilities = capabilities
        self.ledger_head = ledger_head
        self.backoff = backoff
        self.poll_wait_ms = poll_wait_ms
        self.limits = limits
        self._progress = on_progress or (lambda msg: log.info("%s: %s", self.name, msg))
        self.handlers: dict[TaskKind, Handler] = {TaskKind.REPORT_LEDGER: report_ledger_head(ledger_head)}
        self.handlers.update(handlers or {})
        self.address = address or kit.server_address
        self._channel = grpc.secure_channel(self.address, channel_credentials(kit),
                                            options=channel_options(limits, target_name=kit.server_name))
        self._stub = federation_pb2_grpc.FederationStub(self._channel)
        self._summary = ClientRunSummary()
        self.heartbeat = heartbeat  # off only to play a client that hangs silently (tests)
        # Tasks answered or refused: never handled twice (bounded, newest kept).
        self._handled: deque[str] = deque(maxlen=64)

    def register(self, kind: TaskKind, handler: Handler) -> None:
        """Handle tasks of ``kind`` with ``handler`` (replacing any earlier one)."""
        self.handlers[kind] = handler

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> FederatedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls ------------------------------------------------------------------------

    def _retry(self, fn: Callable[[], object]) -> object:
        def on_retry(err: grpc.RpcError, delay: float) -> None:
            self._summary.retries += 1
            log.debug("%s: %s, retrying in %.2fs", self.name, err.code().name, delay)

        return call_with_retry(fn, backoff=self.backoff, on_retry=on_retry)

    def hello(self) -> federation_pb2.HelloResponse:
        """Enrol (idempotent), declaring capabilities and the current ledger head."""
        req = federation_pb2.HelloRequest(sdk_version=__version__,
                                          capabilities=serde.capabilities_to_proto(self.capabilities),
                                          ledger_head=serde.ledger_head_to_proto(self.ledger_head()))
        return self._retry(lambda: self._stub.Hello(req, timeout=RPC_DEADLINE_S))  # type: ignore[return-value]

    def pull(self) -> federation_pb2.PullTaskResponse:
        """One long poll; re-enrols if the server does not know this client."""
        req = federation_pb2.PullTaskRequest(wait_ms=self.poll_wait_ms, skip_task_ids=list(self._handled))
        timeout = self.poll_wait_ms / 1000 + RPC_DEADLINE_S
        try:
            return self._retry(lambda: self._stub.PullTask(req, timeout=timeout))  # type: ignore[return-value]
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            self.hello()
            return self._retry(lambda: self._stub.PullTask(req, timeout=timeout))  # type: ignore[return-value]

    def download_aggregate(self, run_id: str, group: str, round_: int) -> Aggregate:
        """Fetch a published aggregate, verifying every chunk against the header's digests."""
        req = federation_pb2.DownloadAggregateRequest(run_id=run_id, round=round_, group=group)

        def fetch() -> Aggregate:
            parts: list[bytes] = []
            digests: list[bytes] = []
            header = None
            for i, msg in enumerate(self._stub.DownloadAggregate(req, timeout=STREAM_DEADLINE_S)):
                if i == 0:
                    if msg.WhichOneof("part") != "header":
                        raise InvalidSubmission("aggregate stream did not start with its header")
                    digests = list(msg.header.chunk_sha256)
                    header = msg.header
                    continue
                chunk = serde.chunk_from_proto(msg.chunk)
                if len(parts) >= len(digests):
                    raise InvalidSubmission("aggregate stream carries more chunks than announced")
                chunking.check_chunk(chunk, expected_index=len(parts), expected_sha256=digests[len(parts)])
                parts.append(chunk.data)
            if len(parts) != len(digests):
                raise InvalidSubmission(f"aggregate stream ended after {len(parts)} of {len(digests)} chunks")
            assert header is not None
            return Aggregate(group=group, round=round_, encoding=header.encoding, contributors=header.contributors,
                             data=b"".join(parts))

        return self._retry(fetch)  # type: ignore[return-value]

    # --- signing and submission ------------------------------------------------------

    def sign(self, task: Task, kind: PayloadKind, payload_sha256: bytes) -> Envelope:
        """A fresh envelope for ``task`` over a payload digest, signed with the kit key."""
        return sign_envelope(self.kit, task, kind, payload_sha256)

    def submit(self, task: Task, outcome: Outcome) -> object:
        """Sign and send an outcome; resends (after transient errors) reuse the same bytes."""
        if isinstance(outcome, Update):
            requests = upload_requests(self.kit, task, outcome, self.limits)
            return self._retry(lambda: self._stub.UploadUpdate(iter(requests), timeout=STREAM_DEADLINE_S))
        method, request = unary_request(self.kit, task, outcome)
        rpc = getattr(self._stub, method)
        return self._retry(lambda: rpc(request, timeout=RPC_DEADLINE_S))

    # --- the ALIGN stage's score session --------------------------------------------------

    def score_session(self, task: Task, scorer: StepScorer) -> TaskReport:
        """Serve ``task``'s score session: answer each step's batch with ``scorer``'s
        scores, signed and bound to (run, round, task, step), until the server ends the
        session or the task's deadline. A broken stream (e.g. a server restart) is reopened
        with backoff while the task's deadline allows; the server resumes the stage."""
        if not isinstance(task.spec, AlignSpec):
            raise InvalidTaskSpec("a score session serves an ALIGN task")
        answered, reason, opened = 0, "", 0
        delays = self.backoff.delays()
        while time.time() * 1000 < task.deadline_unix_ms:
            opened += 1
            try:
                n, reason = self._serve_session(task, scorer)
                answered += n
                break
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning("%s: score session broke (%s); reopening in %.1f s", self.name, err.code().name, delay)
                time.sleep(delay)
        self._progress(f"round {task.round} ALIGN: {answered} steps scored ({reason or 'deadline reached'})")
        return TaskReport(metrics=(("sessions_opened", float(opened)), ("steps_answered", float(answered))))

    def _serve_session(self, task: Task, scorer: StepScorer) -> tuple[int, str]:
        outbox: queue.Queue[federation_pb2.ScoreSessionRequest | None] = queue.Queue()
        outbox.put(federation_pb2.ScoreSessionRequest(open=federation_pb2.ScoreSessionOpen(task_id=task.task_id)))

        def requests() -> Iterator[federation_pb2.ScoreSessionRequest]:
            while (msg := outbox.get()) is not None:
                yield msg

        timeout = max(1.0, task.deadline_unix_ms / 1000 - time.time())
        responses = self._stub.ScoreSession(requests(), timeout=timeout)
        answered = 0
        try:
            for resp in responses:
                if resp.WhichOneof("part") == "end":
                    return answered, resp.end.reason
                batch = serde.score_batch_from_proto(resp.batch)
                scores = tuple(scorer(batch))
                env = self.sign(task, PayloadKind.STEP_SCORES, signing.step_scores_digest(batch.step, scores))
                outbox.put(serde.step_scores_to_proto(StepScores(step=batch.step, envelope=env, scores=scores)))
                answered += 1
            return answered, "the server closed the session"
        finally:
            outbox.put(None)
            responses.cancel()

    # --- the loop ---------------------------------------------------------------------

    def handle(self, task: Task) -> Outcome:
        """Run the handler for a task; failures become typed declines, never silence."""
        handler = self.handlers.get(task.kind)
        if handler is None:
            return Decline(DeclineReason.UNSUPPORTED_TASK, f"no handler for {task.kind.name}")
        ctx = TaskContext(client_name=self.name, download_aggregate=self.download_aggregate,
                          score_session=self.score_session)
        try:
            return handler(task, ctx)
        except PrivacyBudgetExceeded as exc:
            return Decline(DeclineReason.BUDGET_EXHAUSTED, str(exc))
        except PersonalisationRefused as exc:
            # Not enough of its own data to decide (its message gives the minimum).
            log.error("%s: %s refused: %s", self.name, task.kind.name, exc)
            return Decline(DeclineReason.NO_DATA, str(exc))
        except (InvalidTaskSpec, TrainingDiverged) as exc:
            # Our own messages name layouts, groups and coefficients, never data: the server
            # (and its operator) learn exactly why the task was refused.
            log.error("%s: %s refused: %s", self.name, task.kind.name, exc)
            return Decline(DeclineReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported to the server as a typed refusal
            log.exception("%s: handler for %s failed", self.name, task.kind.name)
            return Decline(DeclineReason.INTERNAL_ERROR, type(exc).__name__)

    def run(self, *, max_tasks: int | None = None, stop: threading.Event | None = None,
            until_run_finished: bool = True, max_idle_s: float | None = None) -> ClientRunSummary:
        """Serve tasks until the run ends (or ``max_tasks``, ``stop``, ``max_idle_s``)."""
        self._summary = summary = ClientRunSummary()
        hello = self.hello()
        self._progress(f"enrolled with {self.address}")
        beating = threading.Event()
        if self.heartbeat and hello.heartbeat_interval_ms > 0:
            threading.Thread(target=self._beat, args=(hello.heartbeat_interval_ms / 1000, beating), daemon=True,
                             name=f"{self.name}-heartbeat").start()
        try:
            return self._serve(summary, max_tasks=max_tasks, stop=stop, until_run_finished=until_run_finished,
                               max_idle_s=max_idle_s)
        finally:
            beating.set()

    def _beat(self, interval_s: float, stopped: threading.Event) -> None:
        """Heartbeat at the server's interval while ``run()`` serves, long tasks included,
        so the server can tell a busy client from a gone one (bounded: one call per
        interval, each with a deadline; a failure is counted, never fatal)."""
        request = federation_pb2.HeartbeatRequest()
        while not stopped.wait(max(0.05, interval_s)):
            try:
                self._stub.Heartbeat(request, timeout=min(RPC_DEADLINE_S, max(1.0, interval_s)))
                self._summary.heartbeats += 1
            except grpc.RpcError as err:
                self._summary.heartbeat_failures += 1
                log.debug("%s: heartbeat failed: %s", self.name, err.code().name)

    def _serve(self, summary: ClientRunSummary, *, max_tasks: int | None, stop: threading.Event | None,
               until_run_finished: bool, max_idle_s: float | None) -> ClientRunSummary:
        idle_since = time.monotonic()
        handled = 0
        while not (stop is not None and stop.is_set()):
            if max_tasks is not None and handled >= max_tasks:
                break
            resp = self.pull()
            if resp.WhichOneof("outcome") == "idle":
                summary.run_state = resp.idle.run_state
                if until_run_finished and resp.idle.run_finished:
                    break
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
                continue
            task = serde.task_from_proto(resp.task)
            outcome = self.handle(task)
            try:
                ack = self.submit(task, outcome)
            except grpc.RpcError as err:
                # The server said no (closed phase, conflict...): log it and go on.
                summary.refused.append(f"{task.task_id}: {err.code().name}: {err.details()}")
                self._progress(f"round {task.round} {task.kind.name}: refused ({err.code().name})")
            else:
                bucket = summary.declined if isinstance(outcome, Decline) else summary.completed
                bucket[task.kind.name] += 1
                dup = " (duplicate)" if getattr(ack, "duplicate", False) else ""
                self._progress(f"round {task.round} {task.kind.name}: submitted{dup}")
            self._handled.append(task.task_id)
            handled += 1
            idle_since = time.monotonic()
        return summary
