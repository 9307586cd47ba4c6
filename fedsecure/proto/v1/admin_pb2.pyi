from fedsecure.proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PhaseConfig(_message.Message):
    __slots__ = ("kind", "deadline_s")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.TaskKind
    deadline_s: int
    def __init__(self, kind: _Optional[_Union[_common_pb2.TaskKind, str]] = ..., deadline_s: _Optional[int] = ...) -> None: ...

class RunConfig(_message.Message):
    __slots__ = ("rounds", "sample_rate", "quorum", "min_clients", "phases", "max_attempts", "enroll_timeout_s")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ENROLL_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    sample_rate: float
    quorum: int
    min_clients: int
    phases: _containers.RepeatedCompositeFieldContainer[PhaseConfig]
    max_attempts: int
    enroll_timeout_s: int
    def __init__(self, rounds: _Optional[int] = ..., sample_rate: _Optional[float] = ..., quorum: _Optional[int] = ..., min_clients: _Optional[int] = ..., phases: _Optional[_Iterable[_Union[PhaseConfig, _Mapping]]] = ..., max_attempts: _Optional[int] = ..., enroll_timeout_s: _Optional[int] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run_id", "state", "round", "attempt", "phase", "config", "tasks_open", "tasks_done", "rounds_closed", "detail")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TASKS_OPEN_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_CLOSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: str
    round: int
    attempt: int
    phase: _common_pb2.TaskKind
    config: RunConfig
    tasks_open: int
    tasks_done: int
    rounds_closed: int
    detail: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., phase: _Optional[_Union[_common_pb2.TaskKind, str]] = ..., config: _Optional[_Union[RunConfig, _Mapping]] = ..., tasks_open: _Optional[int] = ..., tasks_done: _Optional[int] = ..., rounds_closed: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("server_version", "run", "clients_enrolled", "clients_revoked")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_ENROLLED_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    run: RunStatus
    clients_enrolled: int
    clients_revoked: int
    def __init__(self, server_version: _Optional[str] = ..., run: _Optional[_Union[RunStatus, _Mapping]] = ..., clients_enrolled: _Optional[int] = ..., clients_revoked: _Optional[int] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: RunConfig
    def __init__(self, config: _Optional[_Union[RunConfig, _Mapping]] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: RunStatus
    def __init__(self, run: _Optional[_Union[RunStatus, _Mapping]] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StopRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: RunStatus
    def __init__(self, run: _Optional[_Union[RunStatus, _Mapping]] = ...) -> None: ...

class ClientInfo(_message.Message):
    __slots__ = ("name", "state", "capabilities", "last_seen_ms", "ledger_head", "sdk_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEAD_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    capabilities: _common_pb2.Capabilities
    last_seen_ms: int
    ledger_head: _common_pb2.LedgerHead
    sdk_version: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., capabilities: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., last_seen_ms: _Optional[int] = ..., ledger_head: _Optional[_Union[_common_pb2.LedgerHead, _Mapping]] = ..., sdk_version: _Optional[str] = ...) -> None: ...

class ListClientsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListClientsResponse(_message.Message):
    __slots__ = ("clients",)
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedCompositeFieldContainer[ClientInfo]
    def __init__(self, clients: _Optional[_Iterable[_Union[ClientInfo, _Mapping]]] = ...) -> None: ...

class RevokeClientRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeClientResponse(_message.Message):
    __slots__ = ("newly_revoked",)
    NEWLY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    newly_revoked: bool
    def __init__(self, newly_revoked: _Optional[bool] = ...) -> None: ...

class ExportLedgerHeadsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientLedgerHeads(_message.Message):
    __slots__ = ("client", "heads")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    client: str
    heads: _containers.RepeatedCompositeFieldContainer[_common_pb2.LedgerHead]
    def __init__(self, client: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[_common_pb2.LedgerHead, _Mapping]]] = ...) -> None: ...

class ExportLedgerHeadsResponse(_message.Message):
    __slots__ = ("clients",)
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedCompositeFieldContainer[ClientLedgerHeads]
    def __init__(self, clients: _Optional[_Iterable[_Union[ClientLedgerHeads, _Mapping]]] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusCount(_message.Message):
    __slots__ = ("code", "calls")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    code: str
    calls: int
    def __init__(self, code: _Optional[str] = ..., calls: _Optional[int] = ...) -> None: ...

class RpcMetrics(_message.Message):
    __slots__ = ("method", "calls", "codes", "p50_ms", "p99_ms", "max_ms")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    method: str
    calls: int
    codes: _containers.RepeatedCompositeFieldContainer[StatusCount]
    p50_ms: float
    p99_ms: float
    max_ms: float
    def __init__(self, method: _Optional[str] = ..., calls: _Optional[int] = ..., codes: _Optional[_Iterable[_Union[StatusCount, _Mapping]]] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("rpcs", "rss_bytes", "open_fds", "uptime_ms")
    RPCS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPEN_FDS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    rpcs: _containers.RepeatedCompositeFieldContainer[RpcMetrics]
    rss_bytes: int
    open_fds: int
    uptime_ms: int
    def __init__(self, rpcs: _Optional[_Iterable[_Union[RpcMetrics, _Mapping]]] = ..., rss_bytes: _Optional[int] = ..., open_fds: _Optional[int] = ..., uptime_ms: _Optional[int] = ...) -> None: ...
