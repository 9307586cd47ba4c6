"""Typed exceptions shared by the client SDK and the server.

Each is rooted in the stdlib type a caller would naturally catch, so generic code
keeps working while servicers can map each one to exactly one gRPC status code.
"""

from __future__ import annotations


class FedsecureError(Exception):
    """Base class for every error this package raises on purpose."""


class KitError(FedsecureError, ValueError):
    """A participant kit is missing, malformed, tampered with or has unsafe permissions."""


class CertificateError(FedsecureError, ValueError):
    """A certificate does not chain to the consortium CA or carries no valid role."""


class SignatureError(FedsecureError, ValueError):
    """A signature does not verify against the claimed signer's key."""


class InvalidSubmission(FedsecureError, ValueError):
    """A submission is malformed, mis-bound (run/round/task), replayed or fails a digest."""


class UnknownTask(FedsecureError, LookupError):
    """A submission names a task that does not exist or is not the caller's."""


class TaskClosed(FedsecureError, RuntimeError):
    """A submission arrives for a task whose phase has already closed."""


class ConflictingSubmission(FedsecureError, RuntimeError):
    """A task already holds a different accepted submission."""


class LimitExceeded(FedsecureError, ValueError):
    """A stream carries more chunks or bytes than the server allows."""


class StorageFull(FedsecureError, OSError):
    """The server's object store is at its size limit or its disk is full: the upload is
    refused whole (nothing of it counts) and may be sent again once space is freed."""


class NotFound(FedsecureError, LookupError):
    """A requested object (aggregate, run, client) does not exist."""


class RunStateError(FedsecureError, RuntimeError):
    """An admin operation does not fit the run's current state."""


class PrivacyBudgetExceeded(FedsecureError, RuntimeError):
    """Training would spend more privacy budget than the client holds."""


class InvalidTaskSpec(FedsecureError, ValueError):
    """A task's parameters cannot be applied as sent (aux adapters of another layout or
    stack, compensation coefficients outside [0, 1] or inconsistent with FedCola's rule);
    refused before any training."""


class TrainingDiverged(FedsecureError, RuntimeError):
    """Local training produced non-finite parameters (a NaN or infinite gate): nothing is
    uploaded and the model is restored; the budget already charged stays in the ledger."""


class CkksError(FedsecureError, ValueError):
    """CKKS parameters, contexts or ciphertexts are unusable (bad bytes, wrong context,
    values out of range, a context that cannot do what is asked of it)."""


class CallRevoked(FedsecureError, PermissionError):
    """The caller's credential was revoked while its call was open; the call is ended."""


class StreamTimeout(FedsecureError, TimeoutError):
    """A stream did not send what it must within the server's time limit (its first
    message, or the whole call)."""


class DecryptionRefused(FedsecureError, PermissionError):
    """The key holder refuses to decrypt an aggregate; the message gives the reason."""


class PolicyLoadError(FedsecureError, ValueError):
    """A policy checkpoint is not a usable vision-language model, or its tokenizer does
    not match the model (vocabulary size, image token)."""


class PromptError(FedsecureError, ValueError):
    """A prompt cannot be given to the policy (no image for a vision-language policy,
    empty or too long a question)."""


class RewardRejected(FedsecureError, ValueError):
    """A reward function returned a non-finite value or the wrong number of values; the
    GRPO step that asked for it is skipped. ``prompt_id`` names the offending prompt
    (empty when the count itself is wrong)."""

    def __init__(self, message: str, *, prompt_id: str = "") -> None:
        super().__init__(message)
        self.prompt_id = prompt_id


class CheckpointError(FedsecureError, ValueError):
    """A training checkpoint is missing, incomplete or does not match the run resuming it."""


class StateVersionError(FedsecureError, RuntimeError):
    """Durable state (a state folder, the server's database) was written by another
    version of fedsecure; it is refused, never misread."""


class PersonalisationRefused(FedsecureError, ValueError):
    """Personalisation cannot decide or run on what this client has (a validation split
    too small, no personal model yet); nothing was replaced or charged."""
