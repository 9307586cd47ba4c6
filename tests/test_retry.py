"""Backoff is jittered, bounded, and retries only transient failures."""

from __future__ import annotations

import grpc
import pytest

from fedsecure.transport.retry import Backoff, call_with_retry


class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_delays_are_bounded_and_stop() -> None:
    b = Backoff(initial_s=0.1, max_delay_s=1.0, max_elapsed_s=5.0)
    delays = list(b.delays())
    assert delays and all(0 <= d <= 1.0 for d in delays)
    assert sum(delays) <= 5.0
    assert len({round(d, 6) for d in delays}) > 1  # jittered, not lock-step


def test_retries_transient_then_succeeds() -> None:
    calls, slept = [], []

    def fn() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _Err(grpc.StatusCode.UNAVAILABLE)
        return "ok"

    assert call_with_retry(fn, backoff=Backoff(), sleep=slept.append) == "ok"
    assert len(calls) == 3 and len(slept) == 2


def test_does_not_retry_a_refusal() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        raise _Err(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(grpc.RpcError):
        call_with_retry(fn, backoff=Backoff(), sleep=lambda s: None)
    assert len(calls) == 1


def test_gives_up_when_time_runs_out() -> None:
    def fn() -> None:
        raise _Err(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError):
        call_with_retry(fn, backoff=Backoff(initial_s=0.5, max_elapsed_s=2.0), sleep=lambda s: None)
