"""Server-side authentication and authorisation, as a grpc.aio interceptor.

mTLS (require_client_auth) already refuses peers without a certificate from the
consortium CA at the handshake. This interceptor then, for every call:
1. reads the verified peer certificate and its role URI (never a request field);
2. refuses revoked certificates (UNAUTHENTICATED: the credential is no longer valid);
3. refuses roles the method does not admit (PERMISSION_DENIED);
4. refuses calls without a deadline (INVALID_ARGUMENT): every RPC must be bounded;
5. refuses an identity's calls beyond its rate limit (RESOURCE_EXHAUSTED), when one is set:
   one participant's flood cannot starve the others (:mod:`fedsecure.transport.rate_limit`);
6. refuses requests that do not decode or carry out-of-range integers (INVALID_ARGUMENT,
   a generic message: :mod:`fedsecure.transport.decoding`).
Servicers read the caller from :func:`current_peer`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from fedsecure.crypto import pki
from fedsecure.errors import CertificateError
from fedsecure.transport import decoding
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
    """Maps the peer certificate to (identity, role) and enforces per-service roles."""

    def __init__(self, *, ca_cert: x509.Certificate, service_roles: Mapping[str, frozenset[Role]],
                 is_revoked: RevocationCheck, rate_limiter: RateLimiter | None = None) -> None:
        self._ca = ca_cert
        self._limiter = rate_limiter
        self._service_roles = dict(service_roles)
        self._is_revoked = is_revoked
        self._cache: dict[bytes, Peer] = {}

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.lstrip("/")
        service = method.rsplit("/", 1)[0]
        # A method's own entry ("pkg.Service/Method") overrides its service's. Fail closed:
        # a service nobody listed admits nobody.
        allowed = self._service_roles.get(method, self._service_roles.get(service, frozenset()))
        return _wrap(handler, lambda ctx: self._authorise(ctx, allowed, handler_call_details.method))

    async def _authorise(self, context: grpc.aio.ServicerContext, allowed: frozenset[Role], method: str) -> None:
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
        _peer.set(peer)


def _wrap(handler: grpc.RpcMethodHandler, authorise: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    # The caller is authorised first, then its request is looked at: an unauthenticated
    # caller learns nothing from how its bytes parse (decoding.py explains the marker).
    des, ser = decoding.safe_deserializer(handler.request_deserializer), handler.response_serializer

    async def admit(request: Any, context: grpc.aio.ServicerContext) -> None:
        await authorise(context)
        if isinstance(request, decoding.Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request, context):  # type: ignore[no-untyped-def]
            await admit(request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request, context):  # type: ignore[no-untyped-def]
            await admit(request, context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator, context):  # type: ignore[no-untyped-def]
            await authorise(context)
            return await inner_su(decoding.checked_stream(request_iterator), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator, context):  # type: ignore[no-untyped-def]
        await authorise(context)
        async for item in inner_ss(decoding.checked_stream(request_iterator), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)
