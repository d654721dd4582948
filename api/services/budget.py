"""Token buckets: an API key's query-cost budget, and failed logins per address.

A request spends 1 point when it arrives and its query cost once it is
validated (api/schema/limits.py), so the budget counts work, not requests.

``SharedBudget`` keeps the buckets in the store (api/store/rate_limits.py), so
every API process on one store spends from the same bucket: three processes
grant a key its limit once, not three times. The store call is bounded by
its own short timeout; when the store fails or is slow, the budget falls back
to a ``RateLimiter`` in the process's memory for a while (fails open, bounded:
each process then grants at most the limit itself), logs one line when it
falls back and one when the store answers again, and counts both in
``BudgetCounters`` (docs/security.md, Rate limits across processes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pymongo
from pymongo.errors import PyMongoError

from api.store.rate_limits import BucketState, RateBuckets

log = logging.getLogger("branchpay.ratelimit")

# Keys known to be short of a point, at most: past it the knowledge is dropped.
KNOWN_SHORT_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Spend:
    """The answer to one spend: ``wait`` whole seconds (0: spent), the whole points left.

    ``short_for`` is the exact time until the bucket holds one point again (0
    when it holds one): until then any request of the key would be refused.
    """

    wait: int
    remaining: int
    short_for: float

    @classmethod
    def of(cls, tokens: float, granted: bool, amount: int, rate: float, burst: int) -> Spend:
        """From the points in the bucket after the spend (or the refusal)."""
        # More than a full bucket is never granted; the wait is to a full bucket.
        missing = min(amount, burst) - tokens
        wait = 0 if granted else max(1, math.ceil(missing / rate - 1e-9))
        # Float arithmetic may leave 13.999999 of 14 points.
        return cls(wait, int(tokens + 1e-9), max(0.0, (1 - tokens) / rate))

    @classmethod
    def from_bucket(cls, state: BucketState, amount: int, rate: float, burst: int) -> Spend:
        ahead = max(0.0, state.full_at - state.at) / 1000.0
        return cls.of(burst - ahead * rate, state.granted, amount, rate, burst)


@dataclass(slots=True)
class Charge:
    """What one HTTP request owes its key: 1 point on arrival, paid with its cost if it runs.

    So a GraphQL request makes one store round trip for the budget: RequestLimits
    spends ``1 + cost`` at once and marks the charge paid; a request that ends
    without running (malformed, refused by a limit) pays its 1 point as it ends
    (api/web/gate.py).
    """

    key: str
    paid: bool = False


@dataclass(slots=True)
class BudgetCounters:
    """How the budget decided, since the process started (for a metrics endpoint to expose).

    ``store_failures``: store calls that failed or took longer than the timeout;
    ``local_spends``: spends decided by the process's own bucket because the
    store had failed (each such decision counts once).
    """

    store_failures: int = 0
    local_spends: int = 0


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

    def spend(self, key: str, amount: int = 1) -> Spend:
        wait = self.take(key, amount)
        return Spend.of(self._buckets[key].tokens, not wait, amount, self.rate, self.burst)

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


class SharedBudget:
    """A budget in the store for every API process, this process's own while the store fails.

    ``attach`` gives it the store's buckets (the app's lifespan); until then,
    and for ``fallback_seconds`` after a store call failed or took longer than
    ``timeout``, spends are decided by a ``RateLimiter`` of the same rate and
    burst in this process's memory: the budget fails open, but each process
    still grants no more than the limit.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        name: str = "budget",
        timeout: float = 0.5,
        fallback_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = RateLimiter(rate, burst, clock)
        self.rate = rate
        self.burst = burst
        self.name = name
        self.timeout = timeout
        self.fallback_seconds = fallback_seconds
        self.clock = clock
        self.counters = BudgetCounters()
        self._buckets: RateBuckets | None = None
        self._local_until = 0.0
        self._degraded = False
        self._short: dict[str, float] = {}

    def attach(self, buckets: RateBuckets | None) -> None:
        self._buckets = buckets

    def wait_known(self, key: str) -> int:
        """The whole seconds ``key`` must wait, as far as this process knows without asking.

        The last answer the store (or the local bucket) gave for the key: a
        bucket short of a point stays short at least that long, whatever other
        processes do, so a refusal from it is always right.
        """
        until = self._short.get(key)
        if until is None:
            return 0
        left = until - self.clock()
        if left <= 0:
            del self._short[key]
            return 0
        return max(1, math.ceil(left))

    async def take(self, key: str, amount: int = 1) -> Spend:
        """Spend ``amount`` points of ``key``'s bucket whole, or none (``wait`` says how long)."""
        if amount < 0:
            raise ValueError("a request cannot cost less than nothing")
        buckets = self._buckets
        if buckets is None:
            return self._learn(key, self.local.spend(key, amount))
        if self.clock() < self._local_until:
            self.counters.local_spends += 1
            return self._learn(key, self.local.spend(key, amount))
        try:
            with pymongo.timeout(self.timeout):
                state = await buckets.spend(key, amount, self.rate, self.burst)
        except PyMongoError as error:
            self._failed(error)
            self.counters.local_spends += 1
            return self._learn(key, self.local.spend(key, amount))
        if self._degraded:
            self._degraded = False
            log.warning("rate limit %s: the store answers again; the budget is shared", self.name)
        return self._learn(key, Spend.from_bucket(state, amount, self.rate, self.burst))

    def _failed(self, error: PyMongoError) -> None:
        self.counters.store_failures += 1
        self._local_until = self.clock() + self.fallback_seconds
        if self._degraded:
            return
        self._degraded = True
        # No traceback and no driver message: it names the store's address.
        log.warning(
            "rate limit %s: the store failed or took over %g s (%s); each process keeps "
            "its own budget until it answers again (asked every %g s)",
            self.name,
            self.timeout,
            type(error).__name__,
            self.fallback_seconds,
        )

    def _learn(self, key: str, spend: Spend) -> Spend:
        if spend.short_for <= 0:
            self._short.pop(key, None)
            return spend
        if len(self._short) >= KNOWN_SHORT_MAX:
            now = self.clock()
            self._short = {k: until for k, until in self._short.items() if until > now}
            if len(self._short) >= KNOWN_SHORT_MAX:
                self._short.clear()
        self._short[key] = self.clock() + spend.short_for
        return spend
