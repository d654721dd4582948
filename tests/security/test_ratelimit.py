"""The per-key token bucket (pure, with a fake clock)."""

from __future__ import annotations

from api.security.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_steady_rate_then_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=5, clock=clock)
    assert [limiter.take("a") for _ in range(5)] == [0] * 5
    assert limiter.take("a") == 1
    assert limiter.take("b") == 0  # keys do not share a bucket
    clock.now += 0.5
    assert limiter.take("a") == 0
    assert limiter.take("a") == 1


def test_slow_refill_gives_a_longer_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.1, burst=1, clock=clock)
    assert limiter.take("a") == 0
    assert limiter.take("a") == 10


def test_idle_buckets_are_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    for key in range(100):
        limiter.take(str(key))
    clock.now += 10
    limiter.take("x")
    assert len(limiter._buckets) == 1
