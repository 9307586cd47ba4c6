"""Protobuf <-> domain dataclasses. Generated types stop here.

Every ``*_from_proto`` validates what the wire may get wrong (unknown enum values,
missing oneofs) and raises :class:`fedsecure.errors.InvalidSubmission` or
``ValueError`` with a message naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from fedsecure.errors import InvalidSubmission
from fedsecure.proto.v1 import admin_pb2, common_pb2, federation_pb2, keyholder_pb2
from fedsecure.transport.metrics import RpcStats, ServerMetrics
from fedsecure.types import (
    MAX_ABS_SCORE,
    AlignSpec,
    Capabilities,
    ClientInfo,
    Decline,
    DeclineReason,
    DecryptCommit,
    DecryptReceipt,
    Envelope,
    LedgerHead,
    Modality,
    PayloadKind,
    PersonaliseSpec,
    PhaseConfig,
    ReportLedgerSpec,
    RunConfig,
    RunStatus,
    Score,
    ScoreBatch,
    ScoreItem,
    ScoreSpec,
    SignedContribution,
    SignedRevocations,
    StepScores,
    Task,
    TaskKind,
    TaskReport,
    TaskSpec,
    TensorChunk,
    TrainSpec,
    UpdateManifest,
)


# --- integer ranges --------------------------------------------------------------------

# Every integer the server or key holder stores must fit SQLite's signed 64-bit INTEGER
# (and Python's sqlite3 raises OverflowError past it). Unsigned 64-bit wire fields can
# carry up to 2^64 - 1, so they are checked here, once, for every request.
INT64_MAX = 2**63 - 1
_UNSIGNED_64 = frozenset({FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64})


def check_integer_ranges(msg: Message) -> None:
    """Raise :class:`InvalidSubmission` naming the first unsigned 64-bit field (at any depth,
    in repeated fields and map values too) whose value exceeds ``INT64_MAX``."""
    _check_ranges(msg, msg.DESCRIPTOR.name)


def _check_ranges(msg: Message, path: str) -> None:
    for field, value in msg.ListFields():
        if field.message_type is not None and not _holds_unsigned_64(field.message_type):
            continue  # e.g. 100,000 scores: nothing in them can be out of range
        where = f"{path}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                _check_value(value_field, item, f"{where}[{key!r}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                _check_value(field, item, f"{where}[{i}]")
        else:
            _check_value(field, value, where)


_UNSIGNED_64_INSIDE: dict[str, bool] = {}


def _holds_unsigned_64(desc: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a message type holds an unsigned 64-bit field at any depth (cached)."""
    known = _UNSIGNED_64_INSIDE.get(desc.full_name)
    if known is not None:
        return known
    found = any(f.type in _UNSIGNED_64 or (f.message_type is not None and f.message_type.full_name not in seen
                                           and _holds_unsigned_64(f.message_type, seen | {desc.full_name}))
                for f in desc.fields)
    _UNSIGNED_64_INSIDE[desc.full_name] = found
    return found


def _check_value(field: FieldDescriptor, value: object, where: str) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _check_ranges(value, where)  # type: ignore[arg-type]
    elif field.type in _UNSIGNED_64 and value > INT64_MAX:  # type: ignore[operator]
        raise InvalidSubmission(f"{where}: {value} is out of range (at most {INT64_MAX})")


def _enum(cls: type, value: int, field: str):  # type: ignore[no-untyped-def]
    try:
        return cls(value)
    except ValueError as exc:
        raise InvalidSubmission(f"{field}: unknown value {value}") from exc


# --- envelope, chunks -------------------------------------------------------------

def envelope_to_proto(env: Envelope) -> common_pb2.SignedEnvelope:
    """Domain envelope -> wire."""
    return common_pb2.SignedEnvelope(
        client_id=env.client_id, run_id=env.run_id, round=env.round, task_id=env.task_id,
        nonce=env.nonce, timestamp_ms=env.timestamp_ms, payload_kind=int(env.payload_kind),
        payload_sha256=env.payload_sha256, signature=env.signature,
    )


def envelope_from_proto(msg: common_pb2.SignedEnvelope) -> Envelope:
    """Wire -> domain envelope; raises InvalidSubmission on an unknown payload kind."""
    return Envelope(
        client_id=msg.client_id, run_id=msg.run_id, round=msg.round, task_id=msg.task_id,
        nonce=msg.nonce, timestamp_ms=msg.timestamp_ms,
        payload_kind=_enum(PayloadKind, msg.payload_kind, "envelope.payload_kind"),
        payload_sha256=msg.payload_sha256, signature=msg.signature,
    )


def chunk_to_proto(c: TensorChunk) -> common_pb2.TensorChunk:
    """Domain chunk -> wire."""
    return common_pb2.TensorChunk(name=c.name, dtype=c.dtype, shape=list(c.shape), index=c.index,
                                  data=c.data, sha256=c.sha256)


def chunk_from_proto(msg: common_pb2.TensorChunk) -> TensorChunk:
    """Wire -> domain chunk (digest checked by the receiver, not here)."""
    return TensorChunk(name=msg.name, dtype=msg.dtype, shape=tuple(msg.shape), index=msg.index,
                       data=msg.data, sha256=msg.sha256)


# --- capabilities, ledger head, payloads ---------------------------------------------

def capabilities_to_proto(c: Capabilities) -> common_pb2.Capabilities:
    """Domain capabilities -> wire."""
    return common_pb2.Capabilities(modalities=[int(m) for m in c.modalities], sample_counts=dict(c.sample_counts),
                                   backbone_sha256=c.backbone_sha256, block_shape=c.block_shape)


def capabilities_from_proto(msg: common_pb2.Capabilities) -> Capabilities:
    """Wire -> domain capabilities (sample counts sorted for a stable value)."""
    return Capabilities(
        modalities=tuple(_enum(Modality, m, "capabilities.modalities") for m in msg.modalities),
        sample_counts=tuple(sorted(msg.sample_counts.items())),
        backbone_sha256=msg.backbone_sha256, block_shape=msg.block_shape,
    )


def ledger_head_to_proto(h: LedgerHead) -> common_pb2.LedgerHead:
    """Domain ledger head -> wire."""
    return common_pb2.LedgerHead(seq=h.seq, entry_sha256=h.entry_sha256, epsilon=h.epsilon,
                                 delta=h.delta, epsilon_budget=h.epsilon_budget)


def ledger_head_from_proto(msg: common_pb2.LedgerHead) -> LedgerHead:
    """Wire -> domain ledger head."""
    return LedgerHead(seq=msg.seq, entry_sha256=msg.entry_sha256, epsilon=msg.epsilon,
                      delta=msg.delta, epsilon_budget=msg.epsilon_budget)


def scores_to_proto(scores: tuple[Score, ...]) -> list[common_pb2.Score]:
    """Domain scores -> wire."""
    return [common_pb2.Score(item_id=s.item_id, value=s.value) for s in scores]


def scores_from_proto(msgs) -> tuple[Score, ...]:  # type: ignore[no-untyped-def]
    """Wire -> domain scores; a non-finite value or one beyond ``MAX_ABS_SCORE`` is refused
    here, where it enters (fail closed: ValueError, the answer is refused whole)."""
    out = []
    for m in msgs:
        if not (math.isfinite(m.value) and abs(m.value) <= MAX_ABS_SCORE):
            raise ValueError(f"score for item {m.item_id[:64]!r} is not a finite number of magnitude at most "
                             f"{MAX_ABS_SCORE:g}")
        out.append(Score(item_id=m.item_id, value=m.value))
    return tuple(out)


def report_to_proto(r: TaskReport) -> common_pb2.TaskReport:
    """Domain task report -> wire."""
    return common_pb2.TaskReport(metrics=dict(r.metrics))


def report_from_proto(msg: common_pb2.TaskReport) -> TaskReport:
    """Wire -> domain task report."""
    return TaskReport(metrics=tuple(sorted(msg.metrics.items())))


def decline_to_proto(d: Decline) -> common_pb2.Decline:
    """Domain decline -> wire."""
    return common_pb2.Decline(reason=int(d.reason), detail=d.detail)


def decline_from_proto(msg: common_pb2.Decline) -> Decline:
    """Wire -> domain decline."""
    return Decline(reason=_enum(DeclineReason, msg.reason, "decline.reason"), detail=msg.detail)


def manifest_to_proto(m: UpdateManifest) -> common_pb2.UpdateManifest:
    """Domain manifest -> wire."""
    return common_pb2.UpdateManifest(group=m.group, weight=m.weight, encoding=m.encoding,
                                     chunk_sha256=list(m.chunk_sha256), total_bytes=m.total_bytes)


def manifest_from_proto(msg: common_pb2.UpdateManifest) -> UpdateManifest:
    """Wire -> domain manifest."""
    return UpdateManifest(group=msg.group, weight=msg.weight, encoding=msg.encoding,
                          chunk_sha256=tuple(msg.chunk_sha256), total_bytes=msg.total_bytes)


# --- tasks --------------------------------------------------------------------------

def task_to_proto(t: Task) -> common_pb2.Task:
    """Domain task -> wire (the spec goes into the oneof matching its kind)."""
    msg = common_pb2.Task(run_id=t.run_id, round=t.round, task_id=t.task_id, kind=int(t.kind),
                          deadline_unix_ms=t.deadline_unix_ms, attempt=t.attempt)
    s = t.spec
    if isinstance(s, TrainSpec):
        msg.train.CopyFrom(common_pb2.TrainSpec(
            local_steps=s.local_steps, learning_rate=s.learning_rate, batch_size=s.batch_size,
            planned_rounds=s.planned_rounds, download_groups=list(s.download_groups),
            aux_groups=list(s.aux_groups), compensation=dict(s.compensation), upload_group=s.upload_group,
            weight_total=s.weight_total))
    elif isinstance(s, ScoreSpec):
        msg.score.CopyFrom(common_pb2.ScoreSpec(items=items_to_proto(s.items),
                                                download_groups=list(s.download_groups)))
    elif isinstance(s, PersonaliseSpec):
        msg.personalise.CopyFrom(common_pb2.PersonaliseSpec(
            replace_margin=s.replace_margin, distill_steps=s.distill_steps, distill_weight=s.distill_weight,
            temperature=s.temperature, download_groups=list(s.download_groups), source_run_id=s.source_run_id,
            source_round=s.source_round))
    elif isinstance(s, ReportLedgerSpec):
        msg.report_ledger.SetInParent()
    elif isinstance(s, AlignSpec):
        msg.align.CopyFrom(common_pb2.AlignSpec(steps=s.steps, step_deadline_ms=s.step_deadline_ms,
                                                download_groups=list(s.download_groups)))
    else:
        raise TypeError(f"unknown task spec {type(s).__name__}")
    return msg


def task_from_proto(msg: common_pb2.Task) -> Task:
    """Wire -> domain task; the oneof must match the declared kind."""
    kind = _enum(TaskKind, msg.kind, "task.kind")
    which = msg.WhichOneof("spec")
    expected = {TaskKind.TRAIN: "train", TaskKind.SCORE: "score", TaskKind.PERSONALISE: "personalise",
                TaskKind.REPORT_LEDGER: "report_ledger", TaskKind.ALIGN: "align"}[kind]
    if which != expected:
        raise ValueError(f"task {msg.task_id}: kind {kind.name} carries spec {which!r}")
    spec: TaskSpec
    if kind is TaskKind.TRAIN:
        t = msg.train
        spec = TrainSpec(local_steps=t.local_steps, learning_rate=t.learning_rate, batch_size=t.batch_size,
                         planned_rounds=t.planned_rounds, download_groups=tuple(t.download_groups),
                         aux_groups=tuple(t.aux_groups), compensation=tuple(sorted(t.compensation.items())),
                         upload_group=t.upload_group, weight_total=t.weight_total)
    elif kind is TaskKind.SCORE:
        spec = ScoreSpec(items=items_from_proto(msg.score.items), download_groups=tuple(msg.score.download_groups))
    elif kind is TaskKind.PERSONALISE:
        p = msg.personalise
        spec = PersonaliseSpec(replace_margin=p.replace_margin, distill_steps=p.distill_steps,
                               distill_weight=p.distill_weight, temperature=p.temperature,
                               download_groups=tuple(p.download_groups), source_run_id=p.source_run_id,
                               source_round=p.source_round)
    elif kind is TaskKind.ALIGN:
        a = msg.align
        spec = AlignSpec(steps=a.steps, step_deadline_ms=a.step_deadline_ms, download_groups=tuple(a.download_groups))
    else:
        spec = ReportLedgerSpec()
    return Task(run_id=msg.run_id, round=msg.round, task_id=msg.task_id, kind=kind,
                deadline_unix_ms=msg.deadline_unix_ms, attempt=msg.attempt, spec=spec)


def items_to_proto(items: Sequence[ScoreItem]) -> list[common_pb2.ScoreItem]:
    """Domain score items -> wire."""
    return [common_pb2.ScoreItem(item_id=i.item_id, prompt_id=i.prompt_id, image_png=i.image_png,
                                 question=i.question, completion=i.completion) for i in items]


def items_from_proto(msgs) -> tuple[ScoreItem, ...]:  # type: ignore[no-untyped-def]
    """Wire -> domain score items."""
    return tuple(ScoreItem(item_id=i.item_id, prompt_id=i.prompt_id, image_png=i.image_png, question=i.question,
                           completion=i.completion) for i in msgs)


# --- the ALIGN stage's score session ----------------------------------------------------

def score_batch_to_proto(b: ScoreBatch) -> federation_pb2.ScoreSessionResponse:
    """Domain batch -> the session message that carries it."""
    return federation_pb2.ScoreSessionResponse(batch=federation_pb2.ScoreBatch(
        step=b.step, items=items_to_proto(b.items), deadline_unix_ms=b.deadline_unix_ms))


def score_batch_from_proto(msg: federation_pb2.ScoreBatch) -> ScoreBatch:
    """Wire -> domain batch."""
    return ScoreBatch(step=msg.step, items=items_from_proto(msg.items), deadline_unix_ms=msg.deadline_unix_ms)


def step_scores_to_proto(s: StepScores) -> federation_pb2.ScoreSessionRequest:
    """Domain step answer -> the session message that carries it."""
    return federation_pb2.ScoreSessionRequest(scores=federation_pb2.StepScores(
        step=s.step, envelope=envelope_to_proto(s.envelope), scores=scores_to_proto(s.scores)))


def step_scores_from_proto(msg: federation_pb2.StepScores) -> StepScores:
    """Wire -> domain step answer (the envelope is required)."""
    if not msg.HasField("envelope"):
        raise ValueError("step scores carry no signed envelope")
    return StepScores(step=msg.step, envelope=envelope_from_proto(msg.envelope), scores=scores_from_proto(msg.scores))


# --- admin ----------------------------------------------------------------------------

def run_config_to_proto(c: RunConfig) -> admin_pb2.RunConfig:
    """Domain run config -> wire."""
    return admin_pb2.RunConfig(
        rounds=c.rounds, sample_rate=c.sample_rate, quorum=c.quorum, min_clients=c.min_clients,
        phases=[admin_pb2.PhaseConfig(kind=int(p.kind), deadline_s=p.deadline_s) for p in c.phases],
        max_attempts=c.max_attempts, enroll_timeout_s=c.enroll_timeout_s)


def run_config_from_proto(msg: admin_pb2.RunConfig) -> RunConfig:
    """Wire -> domain run config; RunConfig's own checks raise ValueError on bad values."""
    return RunConfig(
        rounds=msg.rounds, sample_rate=msg.sample_rate, quorum=msg.quorum, min_clients=msg.min_clients,
        phases=tuple(PhaseConfig(kind=_enum(TaskKind, p.kind, "phase.kind"), deadline_s=p.deadline_s)
                     for p in msg.phases),
        max_attempts=msg.max_attempts, enroll_timeout_s=msg.enroll_timeout_s)


def run_status_to_proto(s: RunStatus) -> admin_pb2.RunStatus:
    """Domain run status -> wire."""
    return admin_pb2.RunStatus(
        run_id=s.run_id, state=s.state, round=s.round, attempt=s.attempt,
        phase=int(s.phase) if s.phase is not None else 0, config=run_config_to_proto(s.config),
        tasks_open=s.tasks_open, tasks_done=s.tasks_done, rounds_closed=s.rounds_closed, detail=s.detail)


def run_status_from_proto(msg: admin_pb2.RunStatus) -> RunStatus:
    """Wire -> domain run status (a status with no run carries the default config)."""
    config = run_config_from_proto(msg.config) if msg.config.rounds else RunConfig()
    return RunStatus(
        run_id=msg.run_id, state=msg.state, round=msg.round, attempt=msg.attempt,
        phase=_enum(TaskKind, msg.phase, "run.phase") if msg.phase else None, config=config,
        tasks_open=msg.tasks_open, tasks_done=msg.tasks_done, rounds_closed=msg.rounds_closed, detail=msg.detail)


def ledger_heads_export_to_proto(heads: Mapping[str, Sequence[LedgerHead]]) -> admin_pb2.ExportLedgerHeadsResponse:
    """Every client's reported heads -> wire (clients sorted)."""
    return admin_pb2.ExportLedgerHeadsResponse(clients=[
        admin_pb2.ClientLedgerHeads(client=c, heads=[ledger_head_to_proto(h) for h in heads[c]]) for c in sorted(heads)])


def ledger_heads_export_from_proto(msg: admin_pb2.ExportLedgerHeadsResponse) -> dict[str, list[LedgerHead]]:
    """Wire -> every client's reported heads."""
    return {c.client: [ledger_head_from_proto(h) for h in c.heads] for c in msg.clients}


def client_info_to_proto(c: ClientInfo) -> admin_pb2.ClientInfo:
    """Domain client info -> wire."""
    return admin_pb2.ClientInfo(name=c.name, state=c.state, capabilities=capabilities_to_proto(c.capabilities),
                                last_seen_ms=c.last_seen_ms, ledger_head=ledger_head_to_proto(c.ledger_head),
                                sdk_version=c.sdk_version)


def client_info_from_proto(msg: admin_pb2.ClientInfo) -> ClientInfo:
    """Wire -> domain client info."""
    return ClientInfo(name=msg.name, state=msg.state, capabilities=capabilities_from_proto(msg.capabilities),
                      last_seen_ms=msg.last_seen_ms, ledger_head=ledger_head_from_proto(msg.ledger_head),
                      sdk_version=msg.sdk_version)


def metrics_to_proto(m: ServerMetrics) -> admin_pb2.MetricsResponse:
    """Domain server metrics -> wire."""
    return admin_pb2.MetricsResponse(
        rpcs=[admin_pb2.RpcMetrics(method=r.method, calls=r.calls, p50_ms=r.p50_ms, p99_ms=r.p99_ms, max_ms=r.max_ms,
                                   codes=[admin_pb2.StatusCount(code=c, calls=n) for c, n in r.codes])
              for r in m.rpcs],
        rss_bytes=m.rss_bytes, open_fds=m.open_fds, uptime_ms=m.uptime_ms)


def metrics_from_proto(msg: admin_pb2.MetricsResponse) -> ServerMetrics:
    """Wire -> domain server metrics."""
    return ServerMetrics(
        rpcs=tuple(RpcStats(method=r.method, calls=r.calls, codes=tuple((c.code, c.calls) for c in r.codes),
                            p50_ms=r.p50_ms, p99_ms=r.p99_ms, max_ms=r.max_ms) for r in msg.rpcs),
        rss_bytes=msg.rss_bytes, open_fds=msg.open_fds, uptime_ms=msg.uptime_ms)


# --- stored forms (the server keeps accepted submissions as their wire bytes) ----------

def task_to_bytes(t: Task) -> bytes:
    """A task's stored form (protobuf bytes, never pickle)."""
    return task_to_proto(t).SerializeToString()


def task_from_bytes(data: bytes) -> Task:
    """Inverse of :func:`task_to_bytes`."""
    msg = common_pb2.Task()
    msg.ParseFromString(data)
    return task_from_proto(msg)


def stored_scores(payload: bytes) -> tuple[Score, ...]:
    """Scores of an accepted SubmitScores submission."""
    msg = federation_pb2.SubmitScoresRequest()
    msg.ParseFromString(payload)
    return scores_from_proto(msg.scores)


def stored_ledger_head(payload: bytes) -> LedgerHead:
    """The head of an accepted ReportLedger submission."""
    msg = federation_pb2.ReportLedgerRequest()
    msg.ParseFromString(payload)
    return ledger_head_from_proto(msg.head)


def stored_outcome(payload: bytes) -> TaskReport | Decline:
    """Report or decline of an accepted FinishTask submission."""
    msg = federation_pb2.FinishTaskRequest()
    msg.ParseFromString(payload)
    if msg.WhichOneof("outcome") == "report":
        return report_from_proto(msg.report)
    return decline_from_proto(msg.decline)


def contribution_to_proto(c: SignedContribution) -> keyholder_pb2.SignedContribution:
    """Domain signed contribution -> wire."""
    return keyholder_pb2.SignedContribution(envelope=envelope_to_proto(c.envelope),
                                            manifest=manifest_to_proto(c.manifest),
                                            client_certificate=c.certificate_pem)


def contribution_from_proto(msg: keyholder_pb2.SignedContribution) -> SignedContribution:
    """Wire -> domain signed contribution."""
    return SignedContribution(envelope=envelope_from_proto(msg.envelope), manifest=manifest_from_proto(msg.manifest),
                              certificate_pem=msg.client_certificate)


def stored_update(payload: bytes) -> SignedContribution:
    """The signed contribution of an accepted upload (stored as it will go to the key holder)."""
    msg = keyholder_pb2.SignedContribution()
    msg.ParseFromString(payload)
    return contribution_from_proto(msg)


def commit_to_proto(c: DecryptCommit) -> keyholder_pb2.DecryptCommit:
    """Domain commit -> wire."""
    return keyholder_pb2.DecryptCommit(run_id=c.run_id, round=c.round, group=c.group,
                                       contributions=[contribution_to_proto(x) for x in c.contributions],
                                       aggregate_chunk_sha256=list(c.aggregate_chunk_sha256),
                                       total_weight=c.total_weight)


def commit_from_proto(msg: keyholder_pb2.DecryptCommit) -> DecryptCommit:
    """Wire -> domain commit."""
    return DecryptCommit(run_id=msg.run_id, round=msg.round, group=msg.group,
                         contributions=tuple(contribution_from_proto(x) for x in msg.contributions),
                         aggregate_chunk_sha256=tuple(msg.aggregate_chunk_sha256), total_weight=msg.total_weight)


def receipt_to_proto(r: DecryptReceipt) -> keyholder_pb2.DecryptReceipt:
    """Domain receipt -> wire."""
    return keyholder_pb2.DecryptReceipt(log_seq=r.log_seq, log_entry_sha256=r.log_entry_sha256, signature=r.signature,
                                        entry_json=r.entry_json, keyholder_certificate=r.keyholder_certificate)


def receipt_from_proto(msg: keyholder_pb2.DecryptReceipt) -> DecryptReceipt:
    """Wire -> domain receipt."""
    return DecryptReceipt(log_seq=msg.log_seq, log_entry_sha256=msg.log_entry_sha256, signature=msg.signature,
                          entry_json=msg.entry_json, keyholder_certificate=msg.keyholder_certificate)


def revocations_to_proto(r: SignedRevocations) -> keyholder_pb2.SignedRevocations:
    """Domain revocation list -> wire."""
    return keyholder_pb2.SignedRevocations(issued_ms=r.issued_ms, names=list(r.names), reason=r.reason,
                                           signer_certificate=r.signer_certificate, signature=r.signature)


def revocations_from_proto(msg: keyholder_pb2.SignedRevocations) -> SignedRevocations:
    """Wire -> domain revocation list (names as sent: the signature covers their order)."""
    return SignedRevocations(issued_ms=msg.issued_ms, names=tuple(msg.names), reason=msg.reason,
                             signer_certificate=msg.signer_certificate, signature=msg.signature)
