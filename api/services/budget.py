"""Token buckets: an API key's query-cost budget, and failed logins per address.

One ``RateLimiter`` is shared by every request the process serves. A request
spends 1 point when it arrives and its query cost once it is validated
(api/schema/limits.py), so the budget counts work, not requests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` points per second on average, bursts of up to ``burst`` points.

    ``take(key, amount)`` spends ``amount`` points and returns 0 when the
    bucket holds them; otherwise it spends nothing and returns the whole
    seconds until it will (the Retry-After value). Buckets of keys idle long
    enough to be full again are dropped, so memory stays flat.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = clock()

    def take(self, key: str, amount: int = 1) -> int:
        if amount < 0:
            raise ValueError("a request cannot cost less than nothing")
        bucket = self._refilled(key)
        if bucket.tokens >= amount:
            bucket.tokens -= amount
            return 0
        # More than a full bucket is never granted; the wait is to a full bucket.
        missing = min(amount, self.burst) - bucket.tokens
        return max(1, math.ceil(missing / self.rate))

    def remaining(self, key: str) -> int:
        """The whole points the key may spend now."""
        return int(self._refilled(key).tokens)

    def _refilled(self, key: str) -> _Bucket:
        now = self.clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def _sweep(self, now: float) -> None:
        refill = self.burst / self.rate
        if now - self._last_sweep < refill:
            return
        self._last_sweep = now
        for key in [k for k, b in self._buckets.items() if now - b.updated >= refill]:
            del self._buckets[key]
