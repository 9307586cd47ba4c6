"""The metrics interceptor over real gRPC on loopback: each call's final status and a
latency are recorded per method, refusals included; percentiles by the nearest rank."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from fedsecure.transport.metrics import MetricsInterceptor, RpcRecorder, percentile


def test_percentile_nearest_rank_known_answers() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def test_window_bounds_the_latencies_kept() -> None:
    rec = RpcRecorder(window=3)
    for ms in (1000, 1, 2, 3):
        rec.record("/s/M", ms / 1000, "OK")
    stats = rec.snapshot().rpc("M")
    assert stats is not None and stats.calls == 4 and stats.max_ms == pytest.approx(3.0)
    with pytest.raises(ValueError):
        RpcRecorder(window=0)


async def _serve_and_call(recorder: RpcRecorder) -> None:
    async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.02)
        return request

    async def refused(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")
        return b""

    async def broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise ZeroDivisionError

    async def stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        for i in range(3):
            yield bytes([i])

    handlers = {"Ok": grpc.unary_unary_rpc_method_handler(ok), "Refused": grpc.unary_unary_rpc_method_handler(refused),
                "Broken": grpc.unary_unary_rpc_method_handler(broken),
                "Stream": grpc.unary_stream_rpc_method_handler(stream)}
    server = grpc.aio.server(interceptors=[MetricsInterceptor(recorder)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.S", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for _ in range(3):
                assert await ch.unary_unary("/t.S/Ok")(b"x", timeout=5) == b"x"
            for name in ("Refused", "Broken"):
                with pytest.raises(grpc.aio.AioRpcError):
                    await ch.unary_unary(f"/t.S/{name}")(b"x", timeout=5)
            assert [m async for m in ch.unary_stream("/t.S/Stream")(b"x", timeout=5)] == [b"\x00", b"\x01", b"\x02"]
    finally:
        await server.stop(0)


def test_interceptor_records_status_and_latency_per_method() -> None:
    recorder = RpcRecorder()
    asyncio.run(_serve_and_call(recorder))
    snap = recorder.snapshot()
    ok, refused, broken, stream = (snap.rpc(n) for n in ("Ok", "Refused", "Broken", "Stream"))
    assert ok is not None and ok.calls == 3 and ok.codes == (("OK", 3),) and ok.errors == 0
    assert 20.0 <= ok.p50_ms <= ok.p99_ms <= ok.max_ms < 5000
    assert refused is not None and refused.codes == (("INVALID_ARGUMENT", 1),) and refused.errors == 1
    assert broken is not None and broken.codes == (("UNKNOWN", 1),)
    assert stream is not None and stream.codes == (("OK", 1),)
    assert snap.rss_bytes > 10 * 2**20 and snap.open_fds > 0 and snap.uptime_ms >= 0
