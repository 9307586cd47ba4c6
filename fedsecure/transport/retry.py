"""Jittered exponential backoff for outbound calls (clients, server -> key holder)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")

# Codes worth retrying: the peer is away or slow, not saying "no". RESOURCE_EXHAUSTED
# is a refusal here (an upload over the limits), so it is not retried.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_jitter = random.SystemRandom()


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff, bounded in both delay and total time."""

    initial_s: float = 0.2
    max_delay_s: float = 5.0
    multiplier: float = 2.0
    max_elapsed_s: float = 300.0

    def delays(self) -> Iterator[float]:
        """Successive sleep times; stops when ``max_elapsed_s`` would be exceeded."""
        ceiling, spent = self.initial_s, 0.0
        while True:
            delay = _jitter.uniform(0.0, ceiling)
            if spent + delay > self.max_elapsed_s:
                return
            spent += delay
            yield delay
            ceiling = min(self.max_delay_s, ceiling * self.multiplier)


def call_with_retry(
    fn: Callable[[], T],
    *,
    backoff: Backoff,
    on_retry: Callable[[grpc.RpcError, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds or fails with a non-retryable code or time runs out.

    Only safe for idempotent calls: every fedsecure submission is (same signed bytes,
    counted once), which is why a resend after a lost reply is harmless.
    """
    delays = backoff.delays()
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)
