from fedsecure.proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedRevocations(_message.Message):
    __slots__ = ("issued_ms", "names", "reason", "signer_certificate", "signature")
    ISSUED_MS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    issued_ms: int
    names: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    signer_certificate: bytes
    signature: bytes
    def __init__(self, issued_ms: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., signer_certificate: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("newly_revoked", "revoked_total")
    NEWLY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    newly_revoked: _containers.RepeatedScalarFieldContainer[str]
    revoked_total: int
    def __init__(self, newly_revoked: _Optional[_Iterable[str]] = ..., revoked_total: _Optional[int] = ...) -> None: ...

class SignedContribution(_message.Message):
    __slots__ = ("envelope", "manifest", "client_certificate")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    envelope: _common_pb2.SignedEnvelope
    manifest: _common_pb2.UpdateManifest
    client_certificate: bytes
    def __init__(self, envelope: _Optional[_Union[_common_pb2.SignedEnvelope, _Mapping]] = ..., manifest: _Optional[_Union[_common_pb2.UpdateManifest, _Mapping]] = ..., client_certificate: _Optional[bytes] = ...) -> None: ...

class DecryptCommit(_message.Message):
    __slots__ = ("run_id", "round", "group", "contributions", "aggregate_chunk_sha256", "total_weight")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    group: str
    contributions: _containers.RepeatedCompositeFieldContainer[SignedContribution]
    aggregate_chunk_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    total_weight: float
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., group: _Optional[str] = ..., contributions: _Optional[_Iterable[_Union[SignedContribution, _Mapping]]] = ..., aggregate_chunk_sha256: _Optional[_Iterable[bytes]] = ..., total_weight: _Optional[float] = ...) -> None: ...

class ContributionChunk(_message.Message):
    __slots__ = ("client_id", "chunk")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    chunk: _common_pb2.TensorChunk
    def __init__(self, client_id: _Optional[str] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("commit", "contribution_chunk", "aggregate_chunk")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_CHUNK_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    commit: DecryptCommit
    contribution_chunk: ContributionChunk
    aggregate_chunk: _common_pb2.TensorChunk
    def __init__(self, commit: _Optional[_Union[DecryptCommit, _Mapping]] = ..., contribution_chunk: _Optional[_Union[ContributionChunk, _Mapping]] = ..., aggregate_chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class ChunkChallenge(_message.Message):
    __slots__ = ("indices",)
    INDICES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...

class DecryptReceipt(_message.Message):
    __slots__ = ("log_seq", "log_entry_sha256", "signature", "entry_json", "keyholder_certificate")
    LOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    LOG_ENTRY_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    KEYHOLDER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    log_seq: int
    log_entry_sha256: bytes
    signature: bytes
    entry_json: str
    keyholder_certificate: bytes
    def __init__(self, log_seq: _Optional[int] = ..., log_entry_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., entry_json: _Optional[str] = ..., keyholder_certificate: _Optional[bytes] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("challenge", "plaintext_chunk", "receipt")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    challenge: ChunkChallenge
    plaintext_chunk: _common_pb2.TensorChunk
    receipt: DecryptReceipt
    def __init__(self, challenge: _Optional[_Union[ChunkChallenge, _Mapping]] = ..., plaintext_chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ..., receipt: _Optional[_Union[DecryptReceipt, _Mapping]] = ...) -> None: ...
