from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_IMAGE: _ClassVar[Modality]
    MODALITY_TEXT: _ClassVar[Modality]
    MODALITY_IMAGE_TEXT: _ClassVar[Modality]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_SCORE: _ClassVar[TaskKind]
    TASK_KIND_PERSONALISE: _ClassVar[TaskKind]
    TASK_KIND_REPORT_LEDGER: _ClassVar[TaskKind]
    TASK_KIND_ALIGN: _ClassVar[TaskKind]

class PayloadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_KIND_UNSPECIFIED: _ClassVar[PayloadKind]
    PAYLOAD_KIND_SCORES: _ClassVar[PayloadKind]
    PAYLOAD_KIND_UPDATE: _ClassVar[PayloadKind]
    PAYLOAD_KIND_LEDGER_HEAD: _ClassVar[PayloadKind]
    PAYLOAD_KIND_TASK_REPORT: _ClassVar[PayloadKind]
    PAYLOAD_KIND_DECLINE: _ClassVar[PayloadKind]
    PAYLOAD_KIND_STEP_SCORES: _ClassVar[PayloadKind]

class DeclineReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECLINE_REASON_UNSPECIFIED: _ClassVar[DeclineReason]
    DECLINE_REASON_BUDGET_EXHAUSTED: _ClassVar[DeclineReason]
    DECLINE_REASON_UNSUPPORTED_TASK: _ClassVar[DeclineReason]
    DECLINE_REASON_NO_DATA: _ClassVar[DeclineReason]
    DECLINE_REASON_INTERNAL_ERROR: _ClassVar[DeclineReason]
MODALITY_UNSPECIFIED: Modality
MODALITY_IMAGE: Modality
MODALITY_TEXT: Modality
MODALITY_IMAGE_TEXT: Modality
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_SCORE: TaskKind
TASK_KIND_PERSONALISE: TaskKind
TASK_KIND_REPORT_LEDGER: TaskKind
TASK_KIND_ALIGN: TaskKind
PAYLOAD_KIND_UNSPECIFIED: PayloadKind
PAYLOAD_KIND_SCORES: PayloadKind
PAYLOAD_KIND_UPDATE: PayloadKind
PAYLOAD_KIND_LEDGER_HEAD: PayloadKind
PAYLOAD_KIND_TASK_REPORT: PayloadKind
PAYLOAD_KIND_DECLINE: PayloadKind
PAYLOAD_KIND_STEP_SCORES: PayloadKind
DECLINE_REASON_UNSPECIFIED: DeclineReason
DECLINE_REASON_BUDGET_EXHAUSTED: DeclineReason
DECLINE_REASON_UNSUPPORTED_TASK: DeclineReason
DECLINE_REASON_NO_DATA: DeclineReason
DECLINE_REASON_INTERNAL_ERROR: DeclineReason

class SignedEnvelope(_message.Message):
    __slots__ = ("client_id", "run_id", "round", "task_id", "nonce", "timestamp_ms", "payload_kind", "payload_sha256", "signature")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    run_id: str
    round: int
    task_id: str
    nonce: bytes
    timestamp_ms: int
    payload_kind: PayloadKind
    payload_sha256: bytes
    signature: bytes
    def __init__(self, client_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., payload_kind: _Optional[_Union[PayloadKind, str]] = ..., payload_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "index", "data", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    index: int
    data: bytes
    sha256: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("modalities", "sample_counts", "backbone_sha256", "block_shape")
    class SampleCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_SHA256_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SHAPE_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedScalarFieldContainer[Modality]
    sample_counts: _containers.ScalarMap[str, int]
    backbone_sha256: str
    block_shape: str
    def __init__(self, modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., sample_counts: _Optional[_Mapping[str, int]] = ..., backbone_sha256: _Optional[str] = ..., block_shape: _Optional[str] = ...) -> None: ...

class TrainSpec(_message.Message):
    __slots__ = ("local_steps", "learning_rate", "batch_size", "planned_rounds", "download_groups", "aux_groups", "compensation", "upload_group", "weight_total")
    class CompensationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PLANNED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_GROUPS_FIELD_NUMBER: _ClassVar[int]
    AUX_GROUPS_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_GROUP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    local_steps: int
    learning_rate: float
    batch_size: int
    planned_rounds: int
    download_groups: _containers.RepeatedScalarFieldContainer[str]
    aux_groups: _containers.RepeatedScalarFieldContainer[str]
    compensation: _containers.ScalarMap[str, float]
    upload_group: str
    weight_total: float
    def __init__(self, local_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., planned_rounds: _Optional[int] = ..., download_groups: _Optional[_Iterable[str]] = ..., aux_groups: _Optional[_Iterable[str]] = ..., compensation: _Optional[_Mapping[str, float]] = ..., upload_group: _Optional[str] = ..., weight_total: _Optional[float] = ...) -> None: ...

class ScoreItem(_message.Message):
    __slots__ = ("item_id", "prompt_id", "image_png", "question", "completion")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    prompt_id: str
    image_png: bytes
    question: str
    completion: str
    def __init__(self, item_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., image_png: _Optional[bytes] = ..., question: _Optional[str] = ..., completion: _Optional[str] = ...) -> None: ...

class ScoreSpec(_message.Message):
    __slots__ = ("items", "download_groups")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_GROUPS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    download_groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., download_groups: _Optional[_Iterable[str]] = ...) -> None: ...

class PersonaliseSpec(_message.Message):
    __slots__ = ("replace_margin", "distill_steps", "distill_weight", "temperature", "download_groups", "source_run_id", "source_round")
    REPLACE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    DISTILL_STEPS_FIELD_NUMBER: _ClassVar[int]
    DISTILL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_GROUPS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ROUND_FIELD_NUMBER: _ClassVar[int]
    replace_margin: float
    distill_steps: int
    distill_weight: float
    temperature: float
    download_groups: _containers.RepeatedScalarFieldContainer[str]
    source_run_id: str
    source_round: int
    def __init__(self, replace_margin: _Optional[float] = ..., distill_steps: _Optional[int] = ..., distill_weight: _Optional[float] = ..., temperature: _Optional[float] = ..., download_groups: _Optional[_Iterable[str]] = ..., source_run_id: _Optional[str] = ..., source_round: _Optional[int] = ...) -> None: ...

class ReportLedgerSpec(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AlignSpec(_message.Message):
    __slots__ = ("steps", "step_deadline_ms", "download_groups")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_GROUPS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    step_deadline_ms: int
    download_groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, steps: _Optional[int] = ..., step_deadline_ms: _Optional[int] = ..., download_groups: _Optional[_Iterable[str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("run_id", "round", "task_id", "kind", "deadline_unix_ms", "attempt", "train", "score", "personalise", "report_ledger", "align")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PERSONALISE_FIELD_NUMBER: _ClassVar[int]
    REPORT_LEDGER_FIELD_NUMBER: _ClassVar[int]
    ALIGN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    task_id: str
    kind: TaskKind
    deadline_unix_ms: int
    attempt: int
    train: TrainSpec
    score: ScoreSpec
    personalise: PersonaliseSpec
    report_ledger: ReportLedgerSpec
    align: AlignSpec
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., deadline_unix_ms: _Optional[int] = ..., attempt: _Optional[int] = ..., train: _Optional[_Union[TrainSpec, _Mapping]] = ..., score: _Optional[_Union[ScoreSpec, _Mapping]] = ..., personalise: _Optional[_Union[PersonaliseSpec, _Mapping]] = ..., report_ledger: _Optional[_Union[ReportLedgerSpec, _Mapping]] = ..., align: _Optional[_Union[AlignSpec, _Mapping]] = ...) -> None: ...

class LedgerHead(_message.Message):
    __slots__ = ("seq", "entry_sha256", "epsilon", "delta", "epsilon_budget")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ENTRY_SHA256_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    seq: int
    entry_sha256: bytes
    epsilon: float
    delta: float
    epsilon_budget: float
    def __init__(self, seq: _Optional[int] = ..., entry_sha256: _Optional[bytes] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., epsilon_budget: _Optional[float] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("item_id", "value")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    value: float
    def __init__(self, item_id: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("metrics",)
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Decline(_message.Message):
    __slots__ = ("reason", "detail")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    reason: DeclineReason
    detail: str
    def __init__(self, reason: _Optional[_Union[DeclineReason, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class UpdateManifest(_message.Message):
    __slots__ = ("group", "weight", "encoding", "chunk_sha256", "total_bytes")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    group: str
    weight: float
    encoding: str
    chunk_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    total_bytes: int
    def __init__(self, group: _Optional[str] = ..., weight: _Optional[float] = ..., encoding: _Optional[str] = ..., chunk_sha256: _Optional[_Iterable[bytes]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("submission_id", "duplicate")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    duplicate: bool
    def __init__(self, submission_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...
