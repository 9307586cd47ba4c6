"""One gRPC status code per domain exception; servicers stay thin by using this."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from fedsecure.errors import (
    CallRevoked,
    ConflictingSubmission,
    DecryptionRefused,
    InvalidSubmission,
    LimitExceeded,
    StorageFull,
    StreamTimeout,
    NotFound,
    RunStateError,
    SignatureError,
    TaskClosed,
    UnknownTask,
)

log = logging.getLogger("fedsecure.server")

STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidSubmission, grpc.StatusCode.INVALID_ARGUMENT),
    (SignatureError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownTask, grpc.StatusCode.NOT_FOUND),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (TaskClosed, grpc.StatusCode.FAILED_PRECONDITION),
    (RunStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConflictingSubmission, grpc.StatusCode.ALREADY_EXISTS),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DecryptionRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (CallRevoked, grpc.StatusCode.UNAUTHENTICATED),
    (StreamTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: Exception) -> grpc.StatusCode | None:
    """The status code a domain exception maps to, or None for an unexpected error."""
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return None


def domain_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method (coroutine or async generator): map domain errors to
    their status code with the message; hide anything unexpected behind INTERNAL."""

    async def _abort(context: grpc.aio.ServicerContext, exc: Exception, name: str) -> None:
        code = status_for(exc)
        if code is None:
            log.exception("unexpected error in %s", name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
        log.info("%s refused: %s: %s", name, code.name, exc)  # type: ignore[union-attr]
        await context.abort(code, str(exc))  # type: ignore[arg-type]

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def gen_wrapper(self, request, context):  # type: ignore[no-untyped-def]
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as exc:  # noqa: BLE001 - mapped or hidden, never swallowed
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await _abort(context, exc, fn.__name__)

        return gen_wrapper

    @functools.wraps(fn)
    async def wrapper(self, request, context):  # type: ignore[no-untyped-def]
        try:
            return await fn(self, request, context)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc, fn.__name__)

    return wrapper
