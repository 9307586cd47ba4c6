"""Admission of client submissions: who signed it, what it is bound to, whether it is
new. Every check raises a typed error (fail closed); only a submission that passes all
of them is committed, in one transaction with its task's new state.

Rules:
- the envelope's client id is the mTLS peer's certificate name, and the signature
  verifies with that certificate's key (authenticity, docs/design.md §2);
- (run, round, task) in the envelope match the task record, and the payload kind fits
  the task kind (a submission cannot be re-targeted);
- the payload digest in the signed envelope matches the payload received;
- a submission is identified by what its signer signed (never by signature bytes): an
  identical resend is acknowledged as a duplicate and counted once, the same envelope
  with another payload is refused as tampered; a nonce reused with other bytes is a
  replay; a closed task accepts nothing new.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass

from fedsecure.crypto import signing
from fedsecure.errors import (
    ConflictingSubmission,
    InvalidSubmission,
    TaskClosed,
    UnknownTask,
)
from fedsecure.transport.auth import Peer
from fedsecure.transport.limits import Limits
from fedsecure.types import (
    Decline,
    DeclineReason,
    Envelope,
    LedgerHead,
    PayloadKind,
    Score,
    ScoreSpec,
    SubmitAck,
    Task,
    TaskKind,
)

from server.rounds.engine import RoundEngine
from server.rounds.store import Store, TaskRow, now_ms

ALLOWED_PAYLOADS: dict[TaskKind, frozenset[PayloadKind]] = {
    TaskKind.TRAIN: frozenset({PayloadKind.UPDATE, PayloadKind.TASK_REPORT, PayloadKind.DECLINE}),
    TaskKind.SCORE: frozenset({PayloadKind.SCORES, PayloadKind.DECLINE}),
    TaskKind.PERSONALISE: frozenset({PayloadKind.TASK_REPORT, PayloadKind.DECLINE}),
    TaskKind.REPORT_LEDGER: frozenset({PayloadKind.LEDGER_HEAD, PayloadKind.DECLINE}),
    # step scores travel in the task's score session (checked by check_step_scores); the
    # task itself closes with a report or a decline
    TaskKind.ALIGN: frozenset({PayloadKind.TASK_REPORT, PayloadKind.DECLINE}),
}


@dataclass(frozen=True)
class Submission:
    """A decoded submission: envelope, digest of the payload as received, and its bytes."""

    envelope: Envelope
    payload_sha256: bytes
    payload: bytes
    ledger_head: LedgerHead | None = None
    decline: Decline | None = None
    scores: tuple[Score, ...] | None = None


class Admission:
    """Verifies and records submissions for the round engine."""

    def __init__(self, store: Store, engine: RoundEngine, limits: Limits) -> None:
        self.store = store
        self.engine = engine
        self.limits = limits

    def duplicate_of(self, peer: Peer, env: Envelope, payload_sha256: bytes) -> SubmitAck | None:
        """The earlier acknowledgement if this exact signed submission was accepted.

        Checked first, so that a resend after a lost acknowledgement is answered even once
        its task closed; but only after the signature and the payload digest verify: the
        same envelope with another payload is tampering, never a duplicate."""
        self._verify_envelope(peer, env)
        if not hmac.compare_digest(payload_sha256, env.payload_sha256):
            raise InvalidSubmission("payload does not match the digest the envelope signs")
        sid = signing.envelope_digest(env).hex()
        row = self.store.submissions.get(sid)
        if row is not None and row.client == peer.identity.name:
            return SubmitAck(submission_id=sid, duplicate=True)
        return None

    @staticmethod
    def _verify_envelope(peer: Peer, env: Envelope) -> None:
        name = peer.identity.name
        if env.client_id != name:
            raise InvalidSubmission(f"envelope names client {env.client_id!r} but the caller is {name!r}")
        signing.verify(peer.public_key, signing.envelope_bytes(env), env.signature, what="submission envelope")

    def precheck(self, peer: Peer, env: Envelope) -> TaskRow:
        """Everything that can be checked before the payload arrives (streams check this
        on the header, so a bad upload is refused before any chunk is stored)."""
        name = peer.identity.name
        self._verify_envelope(peer, env)
        if abs(now_ms() - env.timestamp_ms) > self.limits.clock_skew_ms:
            raise InvalidSubmission("envelope timestamp is outside the allowed clock skew")
        if len(env.nonce) != signing.NONCE_BYTES:
            raise InvalidSubmission(f"nonce must be {signing.NONCE_BYTES} bytes")
        row = self.store.runs.task(env.task_id)
        if row is None or row.client != name:
            raise UnknownTask(f"task {env.task_id!r} is not a task of {name}")
        task = row.task
        if (env.run_id, env.round) != (task.run_id, task.round):
            raise InvalidSubmission(
                f"envelope is bound to run {env.run_id!r} round {env.round}, task {task.task_id} belongs to "
                f"run {task.run_id!r} round {task.round}")
        if env.payload_kind not in ALLOWED_PAYLOADS[task.kind]:
            raise InvalidSubmission(f"a {env.payload_kind.name} payload cannot answer a {task.kind.name} task")
        if self.store.submissions.nonce_used(name, env.nonce):
            raise InvalidSubmission("nonce already used: replayed submission refused")
        if self.store.submissions.for_task(task.task_id) is not None:
            raise ConflictingSubmission(f"task {task.task_id} already holds a different submission")
        if row.state != "open":
            raise TaskClosed(f"task {task.task_id} is {row.state}; its phase no longer accepts submissions")
        return row

    def accept(self, peer: Peer, sub: Submission) -> SubmitAck:
        """Verify and commit one submission; returns the acknowledgement."""
        env = sub.envelope
        dup = self.duplicate_of(peer, env, sub.payload_sha256)
        if dup is not None:
            return dup
        row = self.precheck(peer, env)
        if sub.scores is not None:
            self._check_scores(row, sub.scores)
        if sub.ledger_head is not None:
            self.check_ledger_head(peer.identity.name, sub.ledger_head)
        sid = signing.envelope_digest(env).hex()
        state = "declined" if env.payload_kind is PayloadKind.DECLINE else "done"
        with self.store.tx() as tx:
            self.store.submissions.insert(tx, submission_id=sid, task_id=env.task_id, client=peer.identity.name,
                                    nonce=env.nonce, payload_kind=int(env.payload_kind), payload=sub.payload)
            self.store.runs.set_task_state(tx, env.task_id, state)
            if sub.ledger_head is not None:
                self.store.submissions.insert_ledger_head(tx, peer.identity.name, sub.ledger_head)
            if sub.decline is not None and sub.decline.reason is DeclineReason.BUDGET_EXHAUSTED:
                # The client is out of privacy budget: never sample it again.
                self.store.clients.set_state(tx, peer.identity.name, "exhausted")
        self.engine.poke()
        return SubmitAck(submission_id=sid)

    def check_step_scores(self, peer: Peer, env: Envelope, *, task: Task, payload_sha256: bytes) -> None:
        """Verify one ALIGN step's signed answer in ``task``'s score session; raises
        InvalidSubmission/SignatureError, never returns False (fail closed). Bound to the
        caller, the task's run, round and task id, the payload kind, and (through the
        digest) the step and its scores; the session drops a repeated nonce."""
        self._verify_envelope(peer, env)
        if not hmac.compare_digest(payload_sha256, env.payload_sha256):
            raise InvalidSubmission("step scores do not match the digest the envelope signs")
        if env.payload_kind is not PayloadKind.STEP_SCORES:
            raise InvalidSubmission(f"envelope declares {env.payload_kind.name}, a score session carries STEP_SCORES")
        if (env.run_id, env.round, env.task_id) != (task.run_id, task.round, task.task_id):
            raise InvalidSubmission(f"step scores bound to run {env.run_id!r} round {env.round} task {env.task_id!r}, "
                                    f"the session is for task {task.task_id}")
        if abs(now_ms() - env.timestamp_ms) > self.limits.clock_skew_ms:
            raise InvalidSubmission("envelope timestamp is outside the allowed clock skew")
        if len(env.nonce) != signing.NONCE_BYTES:
            raise InvalidSubmission(f"nonce must be {signing.NONCE_BYTES} bytes")

    def _check_scores(self, row: TaskRow, scores: tuple[Score, ...]) -> None:
        spec = row.task.spec
        if not isinstance(spec, ScoreSpec):
            raise InvalidSubmission("scores can only answer a SCORE task")
        expected = [i.item_id for i in spec.items]
        got = [s.item_id for s in scores]
        if got != expected:
            raise InvalidSubmission(f"scores must answer the task's {len(expected)} items in order, got {len(got)}")
        bad = [s.item_id for s in scores if not math.isfinite(s.value)]
        if bad:
            raise InvalidSubmission(f"non-finite scores for items {bad[:5]}")

    def check_ledger_head(self, client: str, head: LedgerHead) -> None:
        """Refuse a head that rolls back or forks what the client reported before."""
        newest = self.store.submissions.ledger_head(client)
        if head.seq < newest.seq:
            raise InvalidSubmission(f"ledger rolled back: head seq {head.seq} < reported seq {newest.seq}")
        same_seq = self.store.submissions.find_ledger_head(client, head.seq)
        if same_seq is not None and not hmac.compare_digest(same_seq.entry_sha256, head.entry_sha256):
            raise InvalidSubmission(f"ledger forked: entry {head.seq} differs from the one reported before")
        if not (math.isfinite(head.epsilon) and head.epsilon >= 0):
            raise InvalidSubmission("ledger epsilon must be a finite non-negative number")
