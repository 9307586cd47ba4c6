"""Request decoding that fails cleanly: bytes that do not parse, or integers that do not
fit what the services store, are refused with INVALID_ARGUMENT and a generic message.

gRPC calls a method's request deserializer before any servicer code runs; if it raises,
grpc answers UNKNOWN or INTERNAL with the exception's class name (an information leak
and the wrong status for bad input). So the deserializer here never raises: it returns
an :class:`Undecodable` marker, and the handler wrapper refuses the call once the caller
is authenticated (:mod:`fedsecure.transport.auth`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from fedsecure import serde
from fedsecure.errors import InvalidSubmission


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request message that could not be decoded; ``reason`` is safe to
    send back (it names a message type or field, never an exception class)."""

    reason: str


def safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a generated ``FromString``: parse, range-check, and never raise."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def decode(data: bytes) -> Any:
        try:
            msg = deserialize(data)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's bad input
            return Undecodable(f"request could not be decoded as {name}")
        if isinstance(msg, Message):
            try:
                serde.check_integer_ranges(msg)
            except InvalidSubmission as exc:
                return Undecodable(str(exc))
        return msg

    return decode


def refuse_undecodable(request: Any) -> None:
    """Raise :class:`InvalidSubmission` if ``request`` could not be decoded."""
    if isinstance(request, Undecodable):
        raise InvalidSubmission(request.reason)


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pass a request stream through, raising :class:`InvalidSubmission` at the first
    message that could not be decoded."""
    async for request in requests:
        refuse_undecodable(request)
        yield request
