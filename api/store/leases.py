"""Leases: a named piece of background work held by one process at a time, cluster-wide.

A lease document is ``{_id: name, owner, acquiredAt, expiresAt}``. Taking it is
one conditional upsert on ``_id`` (free, expired, or already ours), so two
processes racing for it cannot both win: the loser's upsert collides with the
winner's document on the unique ``_id`` and is refused. A holder renews it
while it works and releases it when done; a holder that dies leaves it to
expire, and the next taker finds it free. No index beyond ``_id``; the
collection holds one small document per job name (the bill reconciliation of
a day, the daily scheduled pass, and the periodic sweeps of api/services/jobs.py).

A periodic sweep also keeps ``doneAt``, when its last run finished:
:meth:`Leases.acquire_due` takes the lease only once it is free *and* the last
run finished at least ``every`` ago, and :meth:`Leases.finish` frees it and
stamps ``doneAt``; so N processes that each look every few seconds run the
sweep once per interval between them, one at a time. A holder that died never
stamps ``doneAt``, so its sweep is due again as soon as its lease expires.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

Document = dict[str, Any]


class Leases:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection

    async def acquire(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        """Take (or extend) the lease ``name`` for ``owner`` until ``now + ttl``; False if held."""
        try:
            await self.collection.update_one(
                {"_id": name, "$or": [{"owner": owner}, {"expiresAt": {"$lte": now}}]},
                {"$set": {"owner": owner, "acquiredAt": now, "expiresAt": now + ttl}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        return True

    async def acquire_due(
        self, name: str, owner: str, ttl: timedelta, now: datetime, every: timedelta
    ) -> bool:
        """Take the free lease ``name`` if its last run finished ``every`` ago (or never ran)."""
        try:
            await self.collection.update_one(
                {
                    "_id": name,
                    "$and": [
                        {"$or": [{"owner": owner}, {"expiresAt": {"$lte": now}}]},
                        {"$or": [{"doneAt": None}, {"doneAt": {"$lte": now - every}}]},
                    ],
                },
                {"$set": {"owner": owner, "acquiredAt": now, "expiresAt": now + ttl}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        return True

    async def finish(self, name: str, owner: str, now: datetime) -> bool:
        """Free the lease and record that its run finished at ``now``; False if not held."""
        result = await self.collection.update_one(
            {"_id": name, "owner": owner}, {"$set": {"expiresAt": now, "doneAt": now}}
        )
        return result.matched_count == 1

    async def renew(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        """Push the lease's end to ``now + ttl``; False when ``owner`` no longer holds it."""
        result = await self.collection.update_one(
            {"_id": name, "owner": owner}, {"$set": {"expiresAt": now + ttl}}
        )
        return result.matched_count == 1

    async def release(self, name: str, owner: str) -> None:
        await self.collection.delete_one({"_id": name, "owner": owner})

    async def holder(self, name: str, now: datetime) -> str | None:
        """Who holds the lease now (None: free or expired)."""
        doc = await self.collection.find_one({"_id": name, "expiresAt": {"$gt": now}})
        return None if doc is None else str(doc["owner"])
