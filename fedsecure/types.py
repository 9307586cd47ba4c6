"""Domain types: small frozen dataclasses the whole code base works on.

Generated protobuf classes stop at :mod:`fedsecure.serde`; everything else passes
these around. Enumerations mirror the wire enums one to one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Modality(enum.IntEnum):
    """What a client can train on or judge (docs/design.md §5)."""

    IMAGE = 1
    TEXT = 2
    IMAGE_TEXT = 3


class TaskKind(enum.IntEnum):
    """The kinds of work a round hands out."""

    TRAIN = 1
    SCORE = 2
    PERSONALISE = 3
    REPORT_LEDGER = 4
    ALIGN = 5


class PayloadKind(enum.IntEnum):
    """What a signed envelope vouches for (part of the signed bytes)."""

    SCORES = 1
    UPDATE = 2
    LEDGER_HEAD = 3
    TASK_REPORT = 4
    DECLINE = 5
    STEP_SCORES = 6


class DeclineReason(enum.IntEnum):
    """Why a client refuses a task."""

    BUDGET_EXHAUSTED = 1
    UNSUPPORTED_TASK = 2
    NO_DATA = 3
    INTERNAL_ERROR = 4


class Role(str, enum.Enum):
    """A participant's role, written into its certificate at provisioning."""

    SERVER = "server"
    KEYHOLDER = "keyholder"
    CLIENT = "client"
    ADMIN = "admin"


@dataclass(frozen=True)
class Envelope:
    """Binds a submission to (client, run, round, task, nonce) and its payload digest."""

    client_id: str
    run_id: str
    round: int
    task_id: str
    nonce: bytes
    timestamp_ms: int
    payload_kind: PayloadKind
    payload_sha256: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class TensorChunk:
    """One piece of a named tensor or ciphertext stream, with its own digest."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    index: int
    data: bytes
    sha256: bytes


@dataclass(frozen=True)
class Capabilities:
    """What a client declares at Hello: modalities, sample counts, and the backbone and
    block shape of its reward model (which aggregation groups it can join)."""

    modalities: tuple[Modality, ...] = ()
    sample_counts: tuple[tuple[str, int], ...] = ()
    backbone_sha256: str = ""
    block_shape: str = ""


@dataclass(frozen=True)
class TrainSpec:
    """Parameters of a local (DP) training task."""

    local_steps: int = 0
    learning_rate: float = 0.0
    batch_size: int = 0
    planned_rounds: int = 0
    download_groups: tuple[str, ...] = ()
    aux_groups: tuple[str, ...] = ()
    compensation: tuple[tuple[str, float], ...] = ()
    upload_group: str = ""
    weight_total: float = 0.0


@dataclass(frozen=True)
class ScoreItem:
    """One (image, question, completion) triple to score."""

    item_id: str
    prompt_id: str = ""
    image_png: bytes = b""
    question: str = ""
    completion: str = ""


@dataclass(frozen=True)
class ScoreSpec:
    """The items of a scoring task."""

    items: tuple[ScoreItem, ...] = ()
    download_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class PersonaliseSpec:
    """Parameters of the TAP personalisation task: compare the federation's versions
    (``download_groups`` of ``source_run_id``'s round ``source_round``; empty/0: the
    task's own run and round) with the personal ones, replace by margin, distil."""

    replace_margin: float = 0.0
    distill_steps: int = 0
    distill_weight: float = 0.0
    temperature: float = 1.0
    download_groups: tuple[str, ...] = ()
    source_run_id: str = ""
    source_round: int = 0


@dataclass(frozen=True)
class ReportLedgerSpec:
    """A request to report the privacy-ledger head (no parameters)."""


@dataclass(frozen=True)
class AlignSpec:
    """The ALIGN stage: open one score session for this task and answer each step's
    batch within ``step_deadline_ms``; at most ``steps`` batches this round."""

    steps: int = 0
    step_deadline_ms: int = 30_000
    download_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoreBatch:
    """One ALIGN step's items for one client, and when the server stops waiting."""

    step: int
    items: tuple[ScoreItem, ...]
    deadline_unix_ms: int = 0


@dataclass(frozen=True)
class StepScores:
    """A client's signed answer to one step's batch (the envelope signs step and scores)."""

    step: int
    envelope: Envelope
    scores: tuple[Score, ...]


TaskSpec = TrainSpec | ScoreSpec | PersonaliseSpec | ReportLedgerSpec | AlignSpec

SPEC_OF_KIND: dict[TaskKind, type] = {
    TaskKind.TRAIN: TrainSpec,
    TaskKind.SCORE: ScoreSpec,
    TaskKind.PERSONALISE: PersonaliseSpec,
    TaskKind.REPORT_LEDGER: ReportLedgerSpec,
    TaskKind.ALIGN: AlignSpec,
}


@dataclass(frozen=True)
class Task:
    """A unit of work for one client in one phase of one round."""

    run_id: str
    round: int
    task_id: str
    kind: TaskKind
    deadline_unix_ms: int
    attempt: int
    spec: TaskSpec


@dataclass(frozen=True)
class LedgerHead:
    """The newest entry of a client's privacy ledger (seq 0 = empty ledger)."""

    seq: int = 0
    entry_sha256: bytes = b""
    epsilon: float = 0.0
    delta: float = 0.0
    epsilon_budget: float = 0.0


@dataclass(frozen=True)
class Score:
    """A reward score for one item."""

    item_id: str
    value: float


MAX_ABS_SCORE = 1e6
"""The largest score magnitude accepted from a client. Scores are standardised per client
before fusion, so no honest scale needs more; a larger one (1e39 passes a float64 finiteness
check and becomes inf in float32) is refused when decoded (issue 23 item 2)."""


@dataclass(frozen=True)
class TaskReport:
    """Metrics a client reports when it finishes a train or personalise task."""

    metrics: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Decline:
    """A client's typed refusal of a task."""

    reason: DeclineReason
    detail: str = ""


@dataclass(frozen=True)
class UpdateManifest:
    """What a client commits to for one streamed update: group, weight, chunk digests."""

    group: str
    weight: float
    encoding: str
    chunk_sha256: tuple[bytes, ...]
    total_bytes: int


@dataclass(frozen=True)
class SignedContribution:
    """An accepted encrypted update as the key holder sees it: the client's signed
    envelope and manifest, and the client's certificate to verify them with."""

    envelope: Envelope
    manifest: UpdateManifest
    certificate_pem: bytes


@dataclass(frozen=True)
class DecryptCommit:
    """The server's commitment before the key holder challenges it: which signed
    contributions it summed for (run, round, group), and the sum's chunk digests."""

    run_id: str
    round: int
    group: str
    contributions: tuple[SignedContribution, ...]
    aggregate_chunk_sha256: tuple[bytes, ...]
    total_weight: float


@dataclass(frozen=True)
class DecryptReceipt:
    """The key holder's signed acknowledgement of one logged decryption."""

    log_seq: int
    log_entry_sha256: bytes
    signature: bytes
    entry_json: str = ""                # the log entry itself (canonical JSON), for the server to check
    keyholder_certificate: bytes = b""  # PEM of the key holder that signed it


@dataclass(frozen=True)
class SignedRevocations:
    """A signed revocation list for the key holder: "as of ``issued_ms``, these clients
    are revoked". Signed by an admin certificate (``signer_certificate``, PEM) or, when
    that is empty, by the consortium CA itself."""

    issued_ms: int
    names: tuple[str, ...]
    reason: str = ""
    signer_certificate: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True)
class SubmitAck:
    """The server's acknowledgement of a submission."""

    submission_id: str
    duplicate: bool = False


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of a round: the task kind handed out and its deadline."""

    kind: TaskKind
    deadline_s: int


@dataclass(frozen=True)
class RunConfig:
    """How a run proceeds: rounds, sampling, quorum and phases."""

    rounds: int = 3
    sample_rate: float = 1.0
    quorum: int = 2
    min_clients: int = 2
    phases: tuple[PhaseConfig, ...] = (PhaseConfig(TaskKind.REPORT_LEDGER, 60),)
    max_attempts: int = 3
    enroll_timeout_s: int = 120

    def __post_init__(self) -> None:
        # Invariants checked up front so a bad config fails at StartRun, not mid-run.
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.quorum < 1:
            raise ValueError(f"quorum must be >= 1, got {self.quorum}")
        if self.min_clients < self.quorum:
            raise ValueError(f"min_clients ({self.min_clients}) must be >= quorum ({self.quorum})")
        if not self.phases:
            raise ValueError("a run needs at least one phase")
        for phase in self.phases:
            if phase.deadline_s < 1:
                raise ValueError(f"phase {phase.kind.name} deadline must be >= 1 s")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.enroll_timeout_s < 1:
            raise ValueError(f"enroll_timeout_s must be >= 1, got {self.enroll_timeout_s}")


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of the run for operators."""

    run_id: str = ""
    state: str = ""
    round: int = 0
    attempt: int = 0
    phase: TaskKind | None = None
    config: RunConfig = field(default_factory=RunConfig)
    tasks_open: int = 0
    tasks_done: int = 0
    rounds_closed: int = 0
    detail: str = ""


@dataclass(frozen=True)
class ClientInfo:
    """An enrolled client as the server's registry knows it."""

    name: str
    state: str
    capabilities: Capabilities = Capabilities()
    last_seen_ms: int = 0
    ledger_head: LedgerHead = LedgerHead()
    sdk_version: str = ""
