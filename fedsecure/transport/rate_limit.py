"""Per-identity rate limits: one authenticated participant's flood must not starve the
others (issue 15). A token bucket per certificate identity — ``rate`` calls per second
sustained, ``burst`` at once — checked by the authentication interceptor after the
caller is known; a call over the limit is refused with RESOURCE_EXHAUSTED. Identities
are certificates the consortium CA issued, so the table is bounded by the consortium."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets keyed by identity name; ``clock`` is injectable for tests."""

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ValueError(f"rate must be positive and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def allow(self, name: str) -> bool:
        """Take one token from ``name``'s bucket; False when it is empty (refuse the call)."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[name] = (tokens, now)
                return False
            self._buckets[name] = (tokens - 1.0, now)
            return True
