"""Leases: one holder at a time across store clients, taken over once expired."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from api.store import Store

TTL = timedelta(seconds=30)
NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


async def test_one_holder_at_a_time_and_an_expired_lease_is_taken_over(
    mongo_uri: str, db_name: str
) -> None:
    first, second = Store.connect(mongo_uri, db_name), Store.connect(mongo_uri, db_name)
    try:
        taken = await asyncio.gather(
            *(
                store.leases.acquire("job", owner, TTL, NOW)
                for store, owner in ((first, "a"), (second, "b"), (first, "c"), (second, "d"))
            )
        )
        assert sorted(taken) == [False, False, False, True]
        holder = await first.leases.holder("job", NOW)
        assert holder in ("a", "b", "c", "d")
        other = "b" if holder != "b" else "a"
        # The holder extends its own lease; another cannot renew or release it.
        assert await second.leases.acquire("job", holder, TTL, NOW + timedelta(seconds=10))
        assert not await second.leases.renew("job", other, TTL, NOW)
        await second.leases.release("job", other)
        assert await first.leases.holder("job", NOW + timedelta(seconds=39)) == holder
        # A holder that died: its lease runs out and the next taker gets it.
        later = NOW + timedelta(seconds=41)
        assert await first.leases.holder("job", later) is None
        assert await second.leases.acquire("job", other, TTL, later)
        assert not await first.leases.renew("job", holder, TTL, later)
        await second.leases.release("job", other)
        assert await first.leases.acquire("job", holder, TTL, later)
    finally:
        await first.close()
        await second.close()


async def test_a_sweep_is_due_once_per_interval_and_again_at_once_when_its_holder_died(
    mongo_uri: str, db_name: str
) -> None:
    every = timedelta(seconds=5)
    first, second = Store.connect(mongo_uri, db_name), Store.connect(mongo_uri, db_name)
    try:
        taken = await asyncio.gather(
            first.leases.acquire_due("sweep", "a", TTL, NOW, every),
            second.leases.acquire_due("sweep", "b", TTL, NOW, every),
        )
        assert sorted(taken) == [False, True]
        holder, other = ("a", "b") if taken[0] else ("b", "a")
        assert await first.leases.finish("sweep", holder, NOW + timedelta(seconds=1))
        # Free, but its last run finished a second ago: not due for anyone yet.
        assert not await second.leases.acquire_due(
            "sweep", other, TTL, NOW + timedelta(seconds=5), every
        )
        assert not await first.leases.acquire_due(
            "sweep", holder, TTL, NOW + timedelta(seconds=5), every
        )
        due = NOW + timedelta(seconds=6)
        assert await second.leases.acquire_due("sweep", other, TTL, due, every)
        assert not await first.leases.finish("sweep", holder, due)  # no longer its lease
        # The holder dies mid-run: nobody runs it until its lease expires, then at once.
        before = due + TTL - timedelta(seconds=1)
        assert not await first.leases.acquire_due("sweep", holder, TTL, before, every)
        after = due + TTL
        assert await first.leases.acquire_due("sweep", holder, TTL, after, every)
    finally:
        await first.close()
        await second.close()
