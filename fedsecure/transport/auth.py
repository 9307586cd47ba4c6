"""Server-side authentication and authorisation, as a grpc.aio interceptor.

mTLS (require_client_auth) already refuses peers without a certificate from the
consortium CA at the handshake. This interceptor then, for every call:
1. reads the verified peer certificate and its role URI (never a request field);
2. refuses revoked certificates (UNAUTHENTICATED: the credential is no longer valid);
3. refuses roles the method does not admit (PERMISSION_DENIED);
4. refuses calls without a deadline (INVALID_ARGUMENT): every RPC must be bounded;
5. refuses an identity's calls beyond its rate limit (RESOURCE_EXHAUSTED), when one is set:
   one participant's flood cannot starve the others (:mod:`fedsecure.transport.rate_limit`);
   and beyond the calls it may hold open at once (:mod:`fedsecure.transport.call_guard`);
   each call then runs under a server-side time limit and ends when its identity is revoked,
   and every message of a request stream re-checks revocation;
6. refuses requests that do not decode or carry out-of-range integers (INVALID_ARGUMENT,
   a generic message: :mod:`fedsecure.transport.decoding`).
Servicers read the caller from :func:`current_peer`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from fedsecure.crypto import pki
from fedsecure.errors import CallRevoked, CertificateError, LimitExceeded
from fedsecure.transport import decoding
from fedsecure.transport.call_guard import CallGuard, Ticket, bounded
from fedsecure.transport.limits import DEFAULT_LIMITS, Limits
from fedsecure.transport.rate_limit import RateLimiter
from fedsecure.types import Role



@dataclass(frozen=True)
class Peer:
    """The authenticated caller: identity from its certificate and its public key."""

    identity: pki.Identity
    public_key: Any
    cert_pem: bytes


_peer: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("fedsecure_peer", default=None)

RevocationCheck = Callable[[pki.Identity], bool]


def current_peer() -> Peer:
    """The authenticated caller of the RPC being served; raises if none (fail closed)."""
    peer = _peer.get()
    if peer is None:
        raise PermissionError("no authenticated peer for this call")
    return peer


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Maps the peer certificate to (identity, role) and enforces per-service roles,
    rate and concurrency limits, server-side time limits and revocation of open calls."""

    def __init__(self, *, ca_cert: x509.Certificate, service_roles: Mapping[str, frozenset[Role]],
                 is_revoked: RevocationCheck, rate_limiter: RateLimiter | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self._ca = ca_cert
        self._limiter = rate_limiter
        self._service_roles = dict(service_roles)
        self._is_revoked = is_revoked
        self._cache: dict[bytes, Peer] = {}
        self.limits = limits
        self.guard = CallGuard(per_identity=limits.max_calls_per_identity, client_calls=limits.max_client_calls)

    def end_calls(self, name: str) -> int:
        """End every open call of identity ``name`` (after revoking it); returns how many."""
        return self.guard.revoke(name)

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.lstrip("/")
        service = method.rsplit("/", 1)[0]
        # A method's own entry ("pkg.Service/Method") overrides its service's. Fail closed:
        # a service nobody listed admits nobody.
        allowed = self._service_roles.get(method, self._service_roles.get(service, frozenset()))
        return _wrap(handler, lambda ctx: self._authorise(ctx, allowed, handler_call_details.method), self)

    async def _authorise(self, context: grpc.aio.ServicerContext, allowed: frozenset[Role], method: str) -> Ticket:
        if context.time_remaining() is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: calls without a deadline are refused")
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        pem = pems[0]
        peer = self._cache.get(pem)
        if peer is None:
            try:
                cert = pki.load_certificate(pem)
                peer = Peer(pki.verify_issued_by(cert, self._ca), cert.public_key(), pem)
            except CertificateError as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"certificate refused: {exc}")
            self._cache[pem] = peer
        ident = peer.identity
        if self._is_revoked(ident):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"certificate of {ident.name} is revoked")
        if ident.role not in allowed:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"role {ident.role.value} may not call {method}")
        if self._limiter is not None and not self._limiter.allow(ident.name):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{ident.name}: more than {self._limiter.rate:g} calls per second; slow down")
        try:
            ticket = self.guard.enter(ident.name, is_client=ident.role is Role.CLIENT)
        except LimitExceeded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        _peer.set(peer)
        return ticket

    def still_valid(self, ticket: Ticket) -> None:
        """Raise :class:`CallRevoked` if ``ticket``'s identity was revoked (checked on
        every streamed message: fail closed, never one message more)."""
        peer = _peer.get()
        if ticket.revoked.is_set() or (peer is not None and self._is_revoked(peer.identity)):
            raise CallRevoked(f"the credential of {ticket.name} was revoked; its open calls are ended")


def _wrap(handler: grpc.RpcMethodHandler, authorise: Callable[[Any], Awaitable[Ticket]],
          auth: AuthInterceptor) -> grpc.RpcMethodHandler:
    # The caller is authorised first, then its request is looked at: an unauthenticated
    # caller learns nothing from how its bytes parse (decoding.py explains the marker).
    des, ser = decoding.safe_deserializer(handler.request_deserializer), handler.response_serializer
    guard, limits = auth.guard, auth.limits

    async def admit(request: Any, context: grpc.aio.ServicerContext) -> Ticket:
        ticket = await authorise(context)
        if isinstance(request, decoding.Undecodable):
            guard.leave(ticket)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return ticket

    async def refuse(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, CallRevoked):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))

    def checked(requests: Any, ticket: Ticket) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            async for request in decoding.checked_stream(requests):
                auth.still_valid(ticket)
                yield request
        return gen()

    async def streamed(items: AsyncIterator[Any], ticket: Ticket, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[Any]:
        # Each response is awaited under the call's server-side limit and its revocation.
        until = asyncio.get_running_loop().time() + limits.max_stream_call_s
        try:
            while True:
                done, item = await bounded(_next(items), ticket, until - asyncio.get_running_loop().time())
                if done:
                    return
                yield item
        except (CallRevoked, TimeoutError) as exc:
            await refuse(context, exc)
        finally:
            guard.leave(ticket)

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request, context):  # type: ignore[no-untyped-def]
            ticket = await admit(request, context)
            try:
                return await bounded(inner_uu(request, context), ticket, limits.max_unary_call_s)
            except (CallRevoked, TimeoutError) as exc:
                await refuse(context, exc)
            finally:
                guard.leave(ticket)

        return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request, context):  # type: ignore[no-untyped-def]
            ticket = await admit(request, context)
            async for item in streamed(inner_us(request, context), ticket, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator, context):  # type: ignore[no-untyped-def]
            ticket = await authorise(context)
            try:
                return await bounded(inner_su(checked(request_iterator, ticket), context), ticket,
                                     limits.max_stream_call_s)
            except (CallRevoked, TimeoutError) as exc:
                await refuse(context, exc)
            finally:
                guard.leave(ticket)

        return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator, context):  # type: ignore[no-untyped-def]
        ticket = await authorise(context)
        async for item in streamed(inner_ss(checked(request_iterator, ticket), context), ticket, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)


async def _next(items: AsyncIterator[Any]) -> tuple[bool, Any]:
    """(True, None) at the end of ``items``, else (False, the next item)."""
    try:
        return False, await anext(items)
    except StopAsyncIteration:
        return True, None
