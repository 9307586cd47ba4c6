from fedsecure.proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HelloRequest(_message.Message):
    __slots__ = ("sdk_version", "capabilities", "ledger_head")
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEAD_FIELD_NUMBER: _ClassVar[int]
    sdk_version: str
    capabilities: _common_pb2.Capabilities
    ledger_head: _common_pb2.LedgerHead
    def __init__(self, sdk_version: _Optional[str] = ..., capabilities: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., ledger_head: _Optional[_Union[_common_pb2.LedgerHead, _Mapping]] = ...) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("client_id", "server_version", "run_id", "heartbeat_interval_ms", "max_chunk_bytes", "max_chunks", "server_time_ms")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    server_version: str
    run_id: str
    heartbeat_interval_ms: int
    max_chunk_bytes: int
    max_chunks: int
    server_time_ms: int
    def __init__(self, client_id: _Optional[str] = ..., server_version: _Optional[str] = ..., run_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., max_chunks: _Optional[int] = ..., server_time_ms: _Optional[int] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("wait_ms", "skip_task_ids")
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    SKIP_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    wait_ms: int
    skip_task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, wait_ms: _Optional[int] = ..., skip_task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Idle(_message.Message):
    __slots__ = ("retry_after_ms", "run_finished", "run_state")
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    retry_after_ms: int
    run_finished: bool
    run_state: str
    def __init__(self, retry_after_ms: _Optional[int] = ..., run_finished: _Optional[bool] = ..., run_state: _Optional[str] = ...) -> None: ...

class PullTaskResponse(_message.Message):
    __slots__ = ("task", "idle")
    TASK_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    idle: Idle
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., idle: _Optional[_Union[Idle, _Mapping]] = ...) -> None: ...

class SubmitScoresRequest(_message.Message):
    __slots__ = ("envelope", "scores")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    envelope: _common_pb2.SignedEnvelope
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.Score]
    def __init__(self, envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.Score, _Mapping]]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("envelope", "manifest")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    envelope: _common_pb2.SignedEnvelope
    manifest: _common_pb2.UpdateManifest
    def __init__(self, envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ..., manifest: _Optional[_Union[_common_pb2.UpdateManifest, _Mapping]] = ...) -> None: ...

class UploadUpdateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class DownloadAggregateRequest(_message.Message):
    __slots__ = ("run_id", "round", "group")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    group: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., group: _Optional[str] = ...) -> None: ...

class AggregateHeader(_message.Message):
    __slots__ = ("run_id", "round", "group", "encoding", "chunk_sha256", "contributors")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    group: str
    encoding: str
    chunk_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    contributors: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., group: _Optional[str] = ..., encoding: _Optional[str] = ..., chunk_sha256: _Optional[_Iterable[bytes]] = ..., contributors: _Optional[int] = ...) -> None: ...

class DownloadAggregateResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AggregateHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[AggregateHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class ReportLedgerRequest(_message.Message):
    __slots__ = ("envelope", "head")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    envelope: _common_pb2.SignedEnvelope
    head: _common_pb2.LedgerHead
    def __init__(self, envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ..., head: _Optional[_Union[_common_pb2.LedgerHead, _Mapping]] = ...) -> None: ...

class FinishTaskRequest(_message.Message):
    __slots__ = ("envelope", "report", "decline")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    envelope: _common_pb2.SignedEnvelope
    report: _common_pb2.TaskReport
    decline: _common_pb2.Decline
    def __init__(self, envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ..., report: _Optional[_Union[_common_pb2.TaskReport, _Mapping]] = ..., decline: _Optional[_Union[_common_pb2.Decline, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_time_ms", "run_id", "run_state", "round")
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    server_time_ms: int
    run_id: str
    run_state: str
    round: int
    def __init__(self, server_time_ms: _Optional[int] = ..., run_id: _Optional[str] = ..., run_state: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class ScoreSessionOpen(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class StepScores(_message.Message):
    __slots__ = ("step", "envelope", "scores")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    step: int
    envelope: _common_pb2.SignedEnvelope
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.Score]
    def __init__(self, step: _Optional[int] = ..., envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.Score, _Mapping]]] = ...) -> None: ...

class ScoreSessionRequest(_message.Message):
    __slots__ = ("open", "scores")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    open: ScoreSessionOpen
    scores: StepScores
    def __init__(self, open: _Optional[_Union[ScoreSessionOpen, _Mapping]] = ..., scores: _Optional[_Union[StepScores, _Mapping]] = ...) -> None: ...

class ScoreBatch(_message.Message):
    __slots__ = ("step", "items", "deadline_unix_ms")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    step: int
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoreItem]
    deadline_unix_ms: int
    def __init__(self, step: _Optional[int] = ..., items: _Optional[_Iterable[_Union[_common_pb2.ScoreItem, _Mapping]]] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class SessionEnd(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ScoreSessionResponse(_message.Message):
    __slots__ = ("batch", "end")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    batch: ScoreBatch
    end: SessionEnd
    def __init__(self, batch: _Optional[_Union[ScoreBatch, _Mapping]] = ..., end: _Optional[_Union[SessionEnd, _Mapping]] = ...) -> None: ...
