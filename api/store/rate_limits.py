"""Rate-limit buckets in the store, so every API process spends from the same ones.

One document per bucket, ``_id`` the bucket's key (``key:<name>``,
``address:<ip>``). A bucket is kept as the time it will be full again (the
theoretical arrival time of the generic cell rate algorithm, in milliseconds
of the store's clock): spending ``n`` points moves it ``n / rate`` seconds on,
from now if it is already full, and is refused when that would put it more
than ``burst / rate`` seconds ahead. So one atomic ``findAndModify`` (an
update pipeline, upserting) spends or refuses, and reads back what the caller
needs to compute the points left and the wait; no read before the write. The
store's ``$$NOW`` is the one clock, whatever the API processes' clocks say.

``expireAt`` is the time the bucket is full again: a document past it is the
same as no document, and the TTL index deletes it, so the collection holds only
buckets spent in the last ``burst / rate`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

COLLECTION = "rate_limits"


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket right after one spend, in milliseconds of the store's clock."""

    granted: bool
    at: float  # the store's time of the spend
    full_at: float  # when the bucket will hold ``burst`` points again (<= at: full now)


class RateBuckets:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._collection = collection

    async def spend(self, key: str, amount: int, rate: float, burst: int) -> BucketState:
        """Spend ``amount`` points of ``key``'s bucket, or none when they are not all there."""
        per_point = 1000.0 / rate
        full_now = {"$max": [{"$ifNull": ["$fullAt", 0]}, "$at"]}
        document = await self._collection.find_one_and_update(
            {"_id": key},
            [
                {"$set": {"at": {"$toLong": "$$NOW"}}},
                {"$set": {"next": {"$add": [full_now, amount * per_point]}}},
                {
                    "$set": {
                        "granted": {"$lte": [{"$subtract": ["$next", "$at"]}, burst * per_point]}
                    }
                },
                {
                    "$set": {
                        "fullAt": {"$cond": ["$granted", "$next", {"$ifNull": ["$fullAt", "$at"]}]}
                    }
                },
                {"$set": {"expireAt": {"$toDate": "$fullAt"}}},
                {"$unset": "next"},
            ],
            projection={"_id": 0, "granted": 1, "at": 1, "fullAt": 1},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert document is not None  # upserted
        return BucketState(
            granted=bool(document["granted"]),
            at=float(document["at"]),
            full_at=float(document["fullAt"]),
        )
