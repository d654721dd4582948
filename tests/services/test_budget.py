"""The token buckets: the process's own (pure, with a fake clock) and the store's, shared."""

from __future__ import annotations

import logging

import pytest

from api.dev.devdb import free_port
from api.services.budget import BudgetCounters, RateLimiter, SharedBudget, Spend
from api.store import Store
from api.store.rate_limits import BucketState


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


# The shared budget: its arithmetic, the store's buckets, and the fall-back.


def test_a_spend_from_the_stores_bucket_says_the_points_left_and_the_wait() -> None:
    # 5 points at 2 a second: 2.5 s ahead of now leaves none; 1 s ahead leaves 3.
    empty = BucketState(granted=False, at=10_000.0, full_at=12_500.0)
    assert Spend.from_bucket(empty, 1, 2, 5) == Spend(wait=1, remaining=0, short_for=0.5)
    assert Spend.from_bucket(empty, 4, 2, 5).wait == 2
    # More than the burst waits for a full bucket, never longer.
    assert Spend.from_bucket(empty, 50, 2, 5).wait == 3
    three = BucketState(granted=True, at=10_000.0, full_at=11_000.0)
    assert Spend.from_bucket(three, 2, 2, 5) == Spend(wait=0, remaining=3, short_for=0.0)
    # A bucket full since before now holds the burst, no more.
    full = BucketState(granted=True, at=10_000.0, full_at=4_000.0)
    assert Spend.from_bucket(full, 0, 2, 5).remaining == 5


def test_float_arithmetic_does_not_lose_a_point() -> None:
    # 7 points at 3 a second are 2333.33 ms: 14 of 21 points are left, not 13.
    state = BucketState(granted=True, at=0.0, full_at=7 * 1000.0 / 3)
    assert Spend.from_bucket(state, 7, 3, 21).remaining == 14


async def test_two_processes_spend_from_one_bucket_in_the_store(
    mongo_uri: str, db_name: str
) -> None:
    # 5 points, regained at one per 1,000 s: nothing comes back during the test.
    first, second = Store.connect(mongo_uri, db_name), Store.connect(mongo_uri, db_name)
    try:
        await first.ensure_indexes()
        one = SharedBudget(0.001, 5)
        other = SharedBudget(0.001, 5)
        one.attach(first.rate_limits)
        other.attach(second.rate_limits)
        assert [(await one.take("key:a", 2)).remaining for _ in range(2)] == [3, 1]
        # 2 do not fit in the 1 left: nothing is spent, on either process.
        refused = await other.take("key:a", 2)
        assert refused.wait >= 1 and refused.remaining == 1
        last = await other.take("key:a", 1)
        assert (last.wait, last.remaining) == (0, 0)
        assert (await one.take("key:a", 1)).wait >= 1
        # The refusal is known here now: no store round trip for the next request.
        assert one.wait_known("key:a") >= 1
        assert other.wait_known("key:a") >= 1
        # Other keys have buckets of their own; a bucket is one document.
        assert (await other.take("key:b", 5)).remaining == 0
        assert await first.collection("rate_limits").count_documents({}) == 2
        assert one.counters == BudgetCounters() and other.counters == BudgetCounters()
    finally:
        await first.close()
        await second.close()


async def test_a_store_that_fails_leaves_each_process_its_own_bucket_for_a_while(
    mongo_uri: str, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    # Nothing listens on this port: the driver fails at once.
    dead = Store.connect(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", db_name)
    alive = Store.connect(mongo_uri, db_name)
    budget = SharedBudget(0.001, 3, name="per-key", timeout=0.5, fallback_seconds=2, clock=clock)
    budget.attach(dead.rate_limits)
    try:
        with caplog.at_level(logging.WARNING, logger="branchpay.ratelimit"):
            # The process's own bucket decides: the limit still holds, in this process.
            waits = [(await budget.take("key:a")).wait for _ in range(4)]
            assert waits[:3] == [0, 0, 0] and waits[3] >= 1
            # Only the first spend asked the store; it is asked again after 2 s.
            assert budget.counters == BudgetCounters(store_failures=1, local_spends=4)
            clock.now += 2
            await budget.take("key:b")
            assert budget.counters == BudgetCounters(store_failures=2, local_spends=5)
            # The store answers again: shared again, from the store's own bucket.
            budget.attach(alive.rate_limits)
            clock.now += 2
            assert (await budget.take("key:a")).remaining == 2
            assert budget.counters == BudgetCounters(store_failures=2, local_spends=5)
        lines = [r.getMessage() for r in caplog.records if r.name == "branchpay.ratelimit"]
        assert len(lines) == 2, lines
        assert "per-key" in lines[0] and "own budget" in lines[0]
        assert "answers again" in lines[1]
        assert all("127.0.0.1" not in line for line in lines)
    finally:
        await dead.close()
        await alive.close()
