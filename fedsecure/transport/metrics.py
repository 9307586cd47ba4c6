"""Server-side RPC metrics: latency and final status per method, measured in an
interceptor, plus the process's resident memory and open file descriptors.

Why server-side: a load generator on the same cores inflates client-side latencies with
its own scheduling; what an operator needs is how long the server took. The interceptor
sits outermost, so the time includes authentication and refusals (a flood refused with
RESOURCE_EXHAUSTED is counted, with its code). Latencies are kept in a bounded window per
method (memory stays flat however long the server runs); counts are totals.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

WINDOW = 20_000
"""Latencies kept per method for the percentiles (the newest calls)."""


@dataclass(frozen=True)
class RpcStats:
    """One method's totals and latency percentiles (milliseconds, over the window)."""

    method: str
    calls: int
    codes: tuple[tuple[str, int], ...]
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def errors(self) -> int:
        """Calls that ended in anything but OK."""
        return sum(n for code, n in self.codes if code != "OK")


@dataclass(frozen=True)
class ServerMetrics:
    """A snapshot of every method's stats and the process's resources."""

    rpcs: tuple[RpcStats, ...]
    rss_bytes: int
    open_fds: int
    uptime_ms: int

    def rpc(self, method_name: str) -> RpcStats | None:
        """The stats of the method whose name ends with ``method_name`` (e.g. "PullTask")."""
        return next((r for r in self.rpcs if r.method.rsplit("/", 1)[-1] == method_name), None)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ascending values by the nearest-rank rule; 0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-q * len(sorted_values) // 1)))  # ceil(q * n), at least 1
    return sorted_values[min(rank, len(sorted_values)) - 1]


def process_resources() -> tuple[int, int]:
    """(resident bytes, open file descriptors) of this process; on systems without
    /proc, the peak resident size and 0."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return rss, len(os.listdir("/proc/self/fd"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 0


class RpcRecorder:
    """Thread-safe per-method counts and latency windows."""

    def __init__(self, *, window: int = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._window = window
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._latency: dict[str, deque[float]] = {}
        self._codes: dict[str, dict[str, int]] = {}

    def record(self, method: str, seconds: float, code: str) -> None:
        """Count one finished call."""
        with self._lock:
            self._latency.setdefault(method, deque(maxlen=self._window)).append(seconds * 1000.0)
            codes = self._codes.setdefault(method, {})
            codes[code] = codes.get(code, 0) + 1

    def snapshot(self) -> ServerMetrics:
        """Every method's stats now, with the process's resources."""
        with self._lock:
            data = {m: (sorted(lat), dict(self._codes[m])) for m, lat in self._latency.items()}
        rpcs = tuple(RpcStats(method=m, calls=sum(codes.values()), codes=tuple(sorted(codes.items())),
                              p50_ms=percentile(lat, 0.5), p99_ms=percentile(lat, 0.99), max_ms=lat[-1])
                     for m, (lat, codes) in sorted(data.items()))
        rss, fds = process_resources()
        return ServerMetrics(rpcs=rpcs, rss_bytes=rss, open_fds=fds,
                             uptime_ms=int((self._clock() - self._started) * 1000))


def _code_of(context: Any, failed: bool) -> str:
    # grpc.aio reports the code set by abort/set_code (a StatusCode, or its number in
    # some versions); None when the handler set none.
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every call from arrival to its last message and records its final status.
    Put it first in the server's interceptors so that refusals by later ones count."""

    def __init__(self, recorder: RpcRecorder) -> None:
        self.recorder = recorder

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _timed(handler, handler_call_details.method, self.recorder)


def _timed(handler: grpc.RpcMethodHandler, method: str, recorder: RpcRecorder) -> grpc.RpcMethodHandler:
    des, ser = handler.request_deserializer, handler.response_serializer

    def finish(context: Any, start: float, failed: bool) -> None:
        recorder.record(method, time.perf_counter() - start, _code_of(context, failed))

    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def single(request: Any, context: Any) -> Any:
            start, failed = time.perf_counter(), True
            try:
                response = await inner(request, context)
                failed = False
                return response
            finally:
                finish(context, start, failed)

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(single, des, ser)
    inner_stream = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: Any) -> Any:
        start, failed = time.perf_counter(), True
        try:
            async for item in inner_stream(request, context):
                yield item
            failed = False
        finally:
            finish(context, start, failed)

    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make(streaming, des, ser)
