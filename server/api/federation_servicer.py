"""The Federation service (client -> server): validate, call the handler, map errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


from fedsecure import __version__, serde
from fedsecure.crypto import signing
from fedsecure.errors import InvalidSubmission, LimitExceeded, NotFound, StreamTimeout, TaskClosed, UnknownTask
from fedsecure.proto.v1 import common_pb2, federation_pb2, federation_pb2_grpc
from fedsecure.transport import chunking
from fedsecure.transport.auth import current_peer
from fedsecure.transport.limits import Limits
from fedsecure.crypto.packing import parse_encoding
from fedsecure.models.groups import ATTENTION_FAMILY, GroupKey, kind_of, same_kind_family_kind
from fedsecure.types import Capabilities, PayloadKind, SignedContribution, TaskKind, TensorChunk, UpdateManifest

from server.align.sessions import ScoreSessions
from server.rounds.admission import Admission, Submission
from server.rounds.engine import RoundEngine
from server.secagg.accumulator import HomomorphicAccumulator
from server.rounds.objects import ObjectStore
from fedsecure.transport.status_codes import domain_errors
from server.rounds.store import Store, now_ms

MAX_SKIP_IDS = 64
_TERMINAL = ("finished", "stopped", "failed")


class FederationServicer(federation_pb2_grpc.FederationServicer):
    """Thin servicer over the round engine, admission and the object store."""

    def __init__(self, *, store: Store, engine: RoundEngine, admission: Admission, objects: ObjectStore,
                 accumulator: HomomorphicAccumulator, limits: Limits, backbones: frozenset[str] = frozenset(),
                 sessions: ScoreSessions | None = None) -> None:
        self.store, self.engine, self.admission, self.objects, self.limits = store, engine, admission, objects, limits
        self.accumulator = accumulator
        self.sessions = sessions or ScoreSessions()
        self.backbones = backbones  # the ones the kits seal (one per architecture); empty: none sealed
        self._pending_bytes: dict[str, int] = {}  # per client: bytes of its uploads in flight

    @domain_errors
    async def Hello(self, request, context):  # type: ignore[no-untyped-def]
        peer = current_peer()
        caps = serde.capabilities_from_proto(request.capabilities)
        if self.backbones and caps.backbone_sha256 not in self.backbones:
            # Adapters trained on another base must never be averaged with the federation's.
            raise InvalidSubmission(f"client declares backbone {caps.backbone_sha256[:16] or '(random)'}…; the "
                                    f"federation seals {', '.join(sorted(b[:16] + '…' for b in self.backbones))}")
        if request.HasField("ledger_head") and request.ledger_head.seq > 0:
            head = serde.ledger_head_from_proto(request.ledger_head)
            self.admission.check_ledger_head(peer.identity.name, head)
        self.store.clients.upsert(name=peer.identity.name, capabilities=caps, sdk_version=request.sdk_version,
                                 fingerprint=peer.identity.fingerprint)
        run = self.store.runs.active()
        self.engine.poke()
        return federation_pb2.HelloResponse(
            client_id=peer.identity.name, server_version=__version__, run_id=run.run_id if run else "",
            heartbeat_interval_ms=self.engine.heartbeat_interval_ms, max_chunk_bytes=self.limits.max_chunk_bytes,
            max_chunks=self.limits.max_chunks_per_stream, server_time_ms=now_ms())

    def _enrolled(self) -> str:
        name = current_peer().identity.name
        if not self.store.clients.touch(name):
            raise NotFound(f"client {name} is not enrolled: call Hello first")
        return name

    @domain_errors
    async def PullTask(self, request, context):  # type: ignore[no-untyped-def]
        name = self._enrolled()
        if len(request.skip_task_ids) > MAX_SKIP_IDS:
            raise LimitExceeded(f"at most {MAX_SKIP_IDS} skip_task_ids")
        skip = list(request.skip_task_ids)
        remaining = context.time_remaining() or 0.0
        budget_s = max(0.0, min(request.wait_ms, self.limits.max_pull_wait_ms) / 1000.0)
        budget_s = min(budget_s, max(0.0, remaining - 0.5))  # answer before the caller's deadline
        loop = asyncio.get_running_loop()
        until = loop.time() + budget_s
        event = self.engine.task_event(name)
        while True:
            event.clear()
            run = self.store.runs.active()
            if run is not None:
                row = self.store.runs.next_open_task(name, run.run_id, skip)
                if row is not None:
                    self.store.runs.mark_delivered(row.task.task_id)
                    return federation_pb2.PullTaskResponse(task=serde.task_to_proto(row.task))
            left = until - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                break
        latest = self.store.runs.latest()
        state = latest.state if latest else "none"
        return federation_pb2.PullTaskResponse(idle=federation_pb2.Idle(
            retry_after_ms=500, run_finished=state in _TERMINAL, run_state=state))

    @domain_errors
    async def SubmitScores(self, request, context):  # type: ignore[no-untyped-def]
        if len(request.scores) > self.limits.max_score_items:
            raise LimitExceeded(f"{len(request.scores)} scores exceed the limit of {self.limits.max_score_items}")
        scores = serde.scores_from_proto(request.scores)
        sub = Submission(envelope=self._envelope(request, PayloadKind.SCORES),
                         payload_sha256=signing.scores_digest(scores), payload=request.SerializeToString(),
                         scores=scores)
        return self._ack(self.admission.accept(current_peer(), sub))

    @domain_errors
    async def ReportLedger(self, request, context):  # type: ignore[no-untyped-def]
        head = serde.ledger_head_from_proto(request.head)
        sub = Submission(envelope=self._envelope(request, PayloadKind.LEDGER_HEAD),
                         payload_sha256=signing.ledger_head_digest(head), payload=request.SerializeToString(),
                         ledger_head=head)
        return self._ack(self.admission.accept(current_peer(), sub))

    @domain_errors
    async def FinishTask(self, request, context):  # type: ignore[no-untyped-def]
        which = request.WhichOneof("outcome")
        if which == "report":
            report = serde.report_from_proto(request.report)
            env = self._envelope(request, PayloadKind.TASK_REPORT)
            sub = Submission(envelope=env, payload_sha256=signing.task_report_digest(report),
                             payload=request.SerializeToString())
        elif which == "decline":
            decline = serde.decline_from_proto(request.decline)
            env = self._envelope(request, PayloadKind.DECLINE)
            sub = Submission(envelope=env, payload_sha256=signing.decline_digest(decline),
                             payload=request.SerializeToString(), decline=decline)
        else:
            raise InvalidSubmission("FinishTask needs a report or a decline")
        return self._ack(self.admission.accept(current_peer(), sub))

    @domain_errors
    async def UploadUpdate(self, request_iterator, context):  # type: ignore[no-untyped-def]
        peer = current_peer()
        first = await self._first(request_iterator)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidSubmission("an upload starts with its header")
        header = first.header
        env = self._envelope(header, PayloadKind.UPDATE)
        manifest = serde.manifest_from_proto(header.manifest)
        digest = signing.manifest_digest(manifest)
        dup = self.admission.duplicate_of(peer, env, digest)
        if dup is not None:
            return self._ack(dup)
        if len(manifest.chunk_sha256) > self.limits.max_chunks_per_stream:
            raise LimitExceeded(f"{len(manifest.chunk_sha256)} chunks exceed the limit of "
                                f"{self.limits.max_chunks_per_stream}")
        if manifest.total_bytes > self.limits.max_stream_bytes:
            raise LimitExceeded(f"{manifest.total_bytes} bytes exceed the limit of {self.limits.max_stream_bytes}")
        if not manifest.chunk_sha256:
            raise InvalidSubmission("an upload carries at least one chunk")
        row = self.admission.precheck(peer, env)  # refuse before storing a single chunk
        self._check_groups(peer.identity.name, manifest)
        name = peer.identity.name
        pending = self._pending_bytes.get(name, 0)
        if pending + manifest.total_bytes > self.limits.max_pending_upload_bytes:
            # Bytes stored but not (yet) accepted are capped per client (issue 23 item 6).
            raise LimitExceeded(f"{name} has {pending} bytes of uploads in flight; this one ({manifest.total_bytes}) "
                                f"would pass the limit of {self.limits.max_pending_upload_bytes}")
        session = self.accumulator.begin(upload_id=signing.envelope_digest(env).hex(), run_id=env.run_id,
                                         round_=env.round, attempt=row.task.attempt, manifest=manifest)
        self._pending_bytes[name] = pending + manifest.total_bytes
        try:
            await self._receive(request_iterator, manifest, session)
            sub = Submission(envelope=env, payload_sha256=digest,
                             payload=serde.contribution_to_proto(
                                 SignedContribution(env, manifest, peer.cert_pem)).SerializeToString())
            ack = self.admission.accept(peer, sub)
        except BaseException:
            # Disconnect, bad chunk or refusal: nothing of this upload stays in the sum.
            # Synchronous on purpose: it must finish even while the call is being cancelled.
            self.accumulator.rollback(session)
            raise
        finally:
            left = self._pending_bytes.get(name, 0) - manifest.total_bytes
            if left > 0:
                self._pending_bytes[name] = left
            else:
                self._pending_bytes.pop(name, None)
        if ack.duplicate:
            # The same signed upload was streamed twice at once and the other copy won: this
            # copy's chunks must not count a second time.
            self.accumulator.rollback(session)
        else:
            self.accumulator.complete(session)
        return self._ack(ack)

    async def _first(self, request_iterator):  # type: ignore[no-untyped-def]
        """A stream's first message, within ``first_message_s``: an idle stream must not
        hold a slot while it decides what to send (issue 23 item 4)."""
        try:
            return await asyncio.wait_for(anext(aiter(request_iterator), None), self.limits.first_message_s)
        except TimeoutError:
            raise StreamTimeout(f"no first message within {self.limits.first_message_s:g} s") from None

    def _check_groups(self, client: str, manifest: UpdateManifest) -> None:
        """Every section must be a group this client may join: its stack's backbone and
        block shape are the ones the client declared (and the federation's, if sealed)."""
        declared = self.store.clients.capabilities(client) or Capabilities()
        for section in parse_encoding(manifest.encoding).sections:
            try:
                key = GroupKey.parse(section.name)
            except ValueError as exc:
                raise InvalidSubmission(str(exc)) from exc
            kind = same_kind_family_kind(key.family)
            if key.family != ATTENTION_FAMILY and (kind is None or kind != kind_of(declared.modalities)):
                # MLP adapters and heads are averaged only among clients of one kind (FedCola):
                # a client of another kind must not reach into that kind's mean.
                raise InvalidSubmission(f"group {section.name}: {client} may upload attention adapters and its "
                                        f"own kind's MLP adapters and head only")
            if not key.declared_by(declared.backbone_sha256, declared.block_shape):
                raise InvalidSubmission(
                    f"group {section.name} is for backbone {key.backbone}, shape {key.shape}; {client} declared "
                    f"backbone {declared.backbone_sha256[:12] or 'random'}, shape {declared.block_shape or '(none)'}")

    async def _receive(self, request_iterator, manifest, session) -> None:  # type: ignore[no-untyped-def]
        received, total = 0, 0
        async for msg in request_iterator:
            if msg.WhichOneof("part") != "chunk":
                raise InvalidSubmission("only chunks may follow the header")
            if received >= len(manifest.chunk_sha256):
                raise LimitExceeded(f"more chunks than the {len(manifest.chunk_sha256)} the manifest announces")
            chunk = serde.chunk_from_proto(msg.chunk)
            if len(chunk.data) > self.limits.max_chunk_bytes:
                raise LimitExceeded(f"chunk {chunk.index} is larger than {self.limits.max_chunk_bytes} bytes")
            chunking.check_chunk(chunk, expected_index=received, expected_sha256=manifest.chunk_sha256[received])
            total += len(chunk.data)
            if total > manifest.total_bytes:
                raise LimitExceeded("chunks carry more bytes than the manifest announces")
            # Validated, kept under its digest (the key holder may ask for it), added to the sum.
            await asyncio.to_thread(self.accumulator.add_chunk, session, received, chunk.data, chunk.sha256)
            received += 1
        if received != len(manifest.chunk_sha256) or total != manifest.total_bytes:
            raise InvalidSubmission(f"upload ended after {received} of {len(manifest.chunk_sha256)} chunks")

    @domain_errors
    async def DownloadAggregate(self, request, context) -> AsyncIterator[federation_pb2.DownloadAggregateResponse]:  # type: ignore[no-untyped-def, override]
        self._enrolled()
        found = self.store.submissions.aggregate(request.run_id, request.round, request.group)
        if found is None:
            raise NotFound(f"no aggregate {request.group!r} for run {request.run_id!r} round {request.round}")
        encoding, digests, contributors = found
        yield federation_pb2.DownloadAggregateResponse(header=federation_pb2.AggregateHeader(
            run_id=request.run_id, round=request.round, group=request.group, encoding=encoding,
            chunk_sha256=digests, contributors=contributors))
        for index, digest in enumerate(digests):
            data = await asyncio.to_thread(self.objects.get, digest)
            chunk = TensorChunk(name=request.group, dtype="bytes", shape=(), index=index, data=data, sha256=digest)
            yield federation_pb2.DownloadAggregateResponse(chunk=serde.chunk_to_proto(chunk))

    @domain_errors
    async def ScoreSession(self, request_iterator, context) -> AsyncIterator[federation_pb2.ScoreSessionResponse]:  # type: ignore[no-untyped-def, override]
        peer = current_peer()
        first = await self._first(request_iterator)  # decoded (or refused) before anything else
        name = self._enrolled()
        if first is None or first.WhichOneof("part") != "open":
            raise InvalidSubmission("a score session starts with its open message")
        row = self.store.runs.task(first.open.task_id)
        if row is None or row.client != name or row.task.kind is not TaskKind.ALIGN:
            raise UnknownTask(f"task {first.open.task_id!r} is not an ALIGN task of {name}")
        if row.state != "open":
            raise TaskClosed(f"task {row.task.task_id} is {row.state}")
        session = self.sessions.attach(name, row.task)
        reader = asyncio.create_task(self._read_step_scores(request_iterator, peer, session))
        try:
            async for out in session.outgoing():
                if isinstance(out, str):
                    yield federation_pb2.ScoreSessionResponse(end=federation_pb2.SessionEnd(reason=out))
                    return
                yield serde.score_batch_to_proto(out)
        finally:
            reader.cancel()
            self.sessions.detach(session)

    async def _read_step_scores(self, request_iterator, peer, session) -> None:  # type: ignore[no-untyped-def]
        """Each answer is verified before it reaches its step; a bad one fails that step
        for this client only (it is left out of the step's fusion), never another step.

        Cheap checks first, on the event loop; the costly ones (decoding the scores,
        digesting, the signature) off it, and only for an answer a step is waiting for
        (issue 23 item 5: a flood of answers to no pending step once slowed every other
        client's calls 50-fold). A client may send no more answers than it was asked for;
        every message re-checks the task's state (and, in the interceptor, revocation)."""
        try:
            async for msg in request_iterator:
                if msg.WhichOneof("part") != "scores":
                    self.sessions.end([session.client], "only step scores may follow the open message")
                    return
                session.received += 1
                if session.received > session.asked:
                    self.sessions.end([session.client], f"more answers ({session.received}) than steps asked "
                                                        f"({session.asked}): session ended")
                    return
                step = msg.scores.step
                if not session.is_pending(step):
                    session.dropped += 1  # late, repeated or never asked: dropped unverified
                    continue
                row = self.store.runs.task(session.task.task_id)
                if row is None or row.state != "open":
                    self.sessions.end([session.client], f"task {session.task.task_id} is no longer open")
                    return
                if len(msg.scores.scores) > self.limits.max_score_items:
                    self.sessions.deliver(session, step, error=ValueError("too many scores"))
                    continue
                try:
                    answer = await asyncio.to_thread(self._verified_answer, peer, msg.scores, session.task)
                    if answer.envelope.nonce in session.nonces:
                        raise InvalidSubmission("nonce already used in this session: replayed answer refused")
                except (ValueError, InvalidSubmission) as exc:  # SignatureError is a ValueError
                    self.sessions.deliver(session, step, error=ValueError(f"refused: {exc}"))
                    continue
                session.nonces.add(answer.envelope.nonce)
                self.sessions.deliver(session, answer.step, answer.scores)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client's stream broke: its session ends
            self.sessions.end([session.client], f"stream failed: {type(exc).__name__}")

    def _verified_answer(self, peer, proto, task):  # type: ignore[no-untyped-def]
        """Decode and verify one step's answer (on a worker thread: no store access)."""
        answer = serde.step_scores_from_proto(proto)
        self.admission.check_step_scores(peer, answer.envelope, task=task,
                                         payload_sha256=signing.step_scores_digest(answer.step, answer.scores))
        return answer

    @domain_errors
    async def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        self._enrolled()
        status = self.engine.status()
        return federation_pb2.HeartbeatResponse(server_time_ms=now_ms(), run_id=status.run_id,
                                                run_state=status.state, round=status.round)

    @staticmethod
    def _envelope(request, kind: PayloadKind):  # type: ignore[no-untyped-def]
        if not request.HasField("envelope"):
            raise InvalidSubmission("submission carries no signed envelope")
        env = serde.envelope_from_proto(request.envelope)
        if env.payload_kind is not kind:
            raise InvalidSubmission(f"envelope declares {env.payload_kind.name}, this RPC carries {kind.name}")
        return env

    @staticmethod
    def _ack(ack):  # type: ignore[no-untyped-def]
        return common_pb2.SubmitResponse(submission_id=ack.submission_id, duplicate=ack.duplicate)


