"""The change hub against the real store: one stream per collection, fan-out, a bounded queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from api.store.changes import ChangeHub, Opened, SubscriberTooSlow, Watched


async def next_change(subscription: Any) -> Any:
    return await asyncio.wait_for(subscription.next(), 10)


async def test_changes_reach_the_subscribers_of_their_document_and_a_slow_one_is_dropped(
    mongo_uri: str, db_name: str
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    orders = client[db_name]["orders"]
    await orders.insert_many([{"_id": 1, "n": 0}, {"_id": 2, "n": 0}])
    hub = ChangeHub(client[db_name], {"orders": Watched()}, limit=2)
    try:
        with (
            hub.subscribe("orders", 1) as first,
            hub.subscribe("orders", 1) as second,
            hub.subscribe("orders", 2) as other,
            hub.subscribe("orders") as everyone,
        ):
            for subscription in (first, second, other, everyone):
                assert await next_change(subscription) == Opened(gap=False)
            await orders.update_one({"_id": 1}, {"$set": {"n": 1}})
            for subscription in (first, second, everyone):
                change = await next_change(subscription)
                assert change["documentKey"] == {"_id": 1}
                assert change["fullDocument"] == {"_id": 1, "n": 1}
            # `second` stops reading; two more changes fill its queue, a third overflows it.
            for n in (2, 3, 4):
                await orders.update_one({"_id": 1}, {"$set": {"n": n}})
                assert (await next_change(first))["fullDocument"]["n"] == n
                assert (await next_change(everyone))["fullDocument"]["n"] == n
            with pytest.raises(SubscriberTooSlow, match="more than 2 changes"):
                await next_change(second)
            assert hub.subscribers("orders") == 3
            # Nothing of document 1 reached the subscriber of document 2.
            await orders.update_one({"_id": 2}, {"$set": {"n": 1}})
            assert (await next_change(other))["documentKey"] == {"_id": 2}
            assert (await next_change(everyone))["documentKey"] == {"_id": 2}
        assert hub.subscribers("orders") == 0
    finally:
        await hub.aclose()
        await client.drop_database(db_name)
        await client.close()
