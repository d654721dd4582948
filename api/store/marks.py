"""Providers' durable marks (``Provider.marks``) in the store, one document per mark.

The document's ``_id`` is ``<provider>:<key>``: adding is one upsert, idempotent
and atomic on any MongoDB, and needs no index beyond ``_id``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.asynchronous.collection import AsyncCollection

from api.store.database import Document

COLLECTION = "provider_marks"


class StoreMarks:
    """The marks of provider ``provider``, shared by every process on this store."""

    def __init__(self, collection: AsyncCollection[Document], provider: str) -> None:
        self._collection = collection
        self._provider = provider

    def _id(self, key: str) -> str:
        return f"{self._provider}:{key}"

    async def add(self, key: str) -> None:
        await self._collection.update_one(
            {"_id": self._id(key)},
            {"$setOnInsert": {"provider": self._provider, "at": datetime.now(UTC)}},
            upsert=True,
        )

    async def has(self, key: str) -> bool:
        return await self._collection.find_one({"_id": self._id(key)}, {"_id": 1}) is not None
