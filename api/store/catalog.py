"""Offering documents: what a branch sells, with prices in fen.

An offering document::

    {_id: "zj-handset-mate70", branch, kind, title, description, priceFen,
     options: [{name, choices: [{value, priceDeltaFen}]}], number?, premium?, sort, active}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection

from api.domain.order import OfferingKind

Document = dict[str, Any]


class CatalogRepository:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection

    async def for_branch(self, branch: str, kind: OfferingKind | None = None) -> list[Document]:
        query: Document = {"branch": branch, "active": True}
        if kind is not None:
            query["kind"] = kind.value
        return await self.collection.find(query).sort([("kind", 1), ("sort", 1)]).to_list()

    async def get_many(self, offering_ids: Sequence[str]) -> list[Document]:
        return await self.collection.find({"_id": {"$in": list(offering_ids)}}).to_list()

    async def is_empty(self) -> bool:
        return await self.collection.find_one({}, {"_id": 1}) is None

    async def upsert_all(self, offerings: Iterable[Document]) -> int:
        requests = [ReplaceOne({"_id": o["_id"]}, o, upsert=True) for o in offerings]
        if not requests:
            return 0
        result = await self.collection.bulk_write(requests, ordered=False)
        return result.upserted_count + result.modified_count
