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
