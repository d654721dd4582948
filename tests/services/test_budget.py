"""The per-key token bucket (pure, with a fake clock)."""

from __future__ import annotations

from api.services.budget import RateLimiter


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


def test_a_cost_is_spent_whole_or_not_at_all() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=100, clock=clock)
    assert limiter.take("a", 60) == 0
    assert limiter.remaining("a") == 40
    # 60 more do not fit: nothing is spent, and the wait is for the 20 missing points.
    assert limiter.take("a", 60) == 2
    assert limiter.remaining("a") == 40
    clock.now += 2
    assert limiter.take("a", 60) == 0
    assert limiter.remaining("a") == 0


def test_more_than_a_full_bucket_waits_for_a_full_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=100, clock=clock)
    limiter.take("a", 100)
    assert limiter.take("a", 500) == 10
