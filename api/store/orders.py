"""Order documents: insert with an idempotency key, guarded status changes, keyset pages.

An order document::

    {_id: ObjectId, branch, status, totalFen, currency, items: [...],
     customer: {name, phone}, idempotencyKey, requestHash,
     createdAt, updatedAt, expiresAt, statusHistory: [{status, at, reason}],
     version, outbox: [{id, type, at}]}

``version`` counts the order's writes (1 at creation). ``outbox`` holds the
webhook events not yet handed to the webhook service: every write that changes
the status pushes its event in the same conditional update, so an event exists
exactly when its change does (api/services/webhooks.py takes them out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from api.domain.order import OrderStatus, sources_of
from api.domain.webhooks import order_entry
from api.telemetry import metrics

Document = dict[str, Any]
NEWEST_FIRST = [("createdAt", DESCENDING), ("_id", DESCENDING)]
# What reads for the API leave out: the audit trail grows with every status
# change and the idempotency fields are never shown, so they would only cost
# decoding. An exclusion keeps any field added to the GraphQL type later.
ORDER_FIELDS: Document = {
    "statusHistory": 0,
    "requestHash": 0,
    "idempotencyKey": 0,
    "outbox": 0,
}


@dataclass(frozen=True, slots=True)
class OrderQuery:
    branches: Sequence[str] | None = None
    statuses: Sequence[OrderStatus] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    customer_phone_digest: str | None = None

    def to_filter(self) -> Document:
        query: Document = {}
        if self.branches is not None:
            query["branch"] = _one_or_in(list(self.branches))
        if self.statuses is not None:
            query["status"] = _one_or_in([status.value for status in self.statuses])
        created: Document = {}
        if self.created_after is not None:
            created["$gt"] = self.created_after
        if self.created_before is not None:
            created["$lt"] = self.created_before
        if created:
            query["createdAt"] = created
        if self.customer_phone_digest is not None:
            query["customer.phoneDigest"] = self.customer_phone_digest
        return query


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ends: the sort key of its last order."""

    created_at: datetime
    order_id: ObjectId


def _one_or_in(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"$in": values}


def after_position(position: Position) -> Document:
    """Orders strictly older than ``position`` in (createdAt desc, _id desc) order."""
    return {
        "$or": [
            {"createdAt": {"$lt": position.created_at}},
            {"createdAt": position.created_at, "_id": {"$lt": position.order_id}},
        ]
    }


# Told (kind, document id) after a write left a webhook event on the document.
EventRecorded = Callable[[str, ObjectId], None]


class OrderRepository:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection
        self.recorded: EventRecorded | None = None

    def _recorded(self, order_id: ObjectId) -> None:
        if self.recorded is not None:
            self.recorded("order", order_id)

    async def insert_once(self, order: Document) -> tuple[Document, bool]:
        """Insert ``order`` unless its (branch, idempotencyKey) exists.

        Returns the stored order and whether this call created it. Concurrent
        calls with the same key create one order: the unique index decides.
        The insert carries the order's ``order.created`` event.
        """
        created = order_entry(OrderStatus(order["status"]), order["createdAt"])
        order = {**order, "version": 1, "outbox": [created] if created else []}
        try:
            await self.collection.insert_one(order)
        except DuplicateKeyError:
            existing = await self.by_idempotency_key(order["branch"], order["idempotencyKey"])
            if existing is None:
                raise
            return existing, False
        self._recorded(order["_id"])
        metrics.recorder().order(order["branch"], "created")
        return order, True

    async def by_idempotency_key(self, branch: str, key: str) -> Document | None:
        return await self.collection.find_one({"branch": branch, "idempotencyKey": key})

    async def get(self, order_id: ObjectId, projection: Document | None = None) -> Document | None:
        return await self.collection.find_one({"_id": order_id}, projection)

    async def get_many(self, order_ids: Sequence[ObjectId]) -> list[Document]:
        return await self.collection.find({"_id": {"$in": list(order_ids)}}).to_list()

    async def move(
        self,
        order_id: ObjectId,
        target: OrderStatus,
        now: datetime,
        *,
        reason: str,
        extra_guard: Document | None = None,
        extra_set: Document | None = None,
    ) -> Document | None:
        """Move the order to ``target`` if its current status allows it.

        The guard is the set of statuses the domain allows ``target`` from, so
        of two racing writers only one applies; the loser gets None.
        """
        guard: Document = {
            "_id": order_id,
            "status": {"$in": [s.value for s in sources_of(target)]},
        }
        if extra_guard:
            guard.update(extra_guard)
        push: Document = {"statusHistory": {"status": target.value, "at": now, "reason": reason}}
        if (entry := order_entry(target, now)) is not None:
            push["outbox"] = entry
        moved = await self.collection.find_one_and_update(
            guard,
            {
                "$set": {"status": target.value, "updatedAt": now, **(extra_set or {})},
                "$push": push,
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if moved is not None and "outbox" in push:
            self._recorded(order_id)
        if moved is not None:
            metrics.recorder().order(moved["branch"], target.value.lower())
        return moved

    async def page(
        self,
        query: OrderQuery,
        after: Position | None,
        limit: int,
        projection: Document | None = None,
    ) -> list[Document]:
        """Up to ``limit`` orders newest first, strictly after ``after``."""
        conditions = query.to_filter()
        if after is not None:
            # One flat document with a plain range on createdAt beside the
            # tie-break, so the range bounds the index scan. No hint: MongoDB
            # picks the branch index itself, and SecantusDB 0.7.0b3 runs a
            # hinted scan several times slower than its own plan (docs/performance.md).
            created = {**conditions.get("createdAt", {}), "$lte": after.created_at}
            conditions = {**conditions, "createdAt": created, **after_position(after)}
        cursor = self.collection.find(conditions, projection).sort(NEWEST_FIRST).limit(limit)
        return await cursor.to_list()

    async def count(self, query: OrderQuery) -> int:
        return await self.collection.count_documents(query.to_filter())

    async def due_for_expiry(self, now: datetime, limit: int) -> list[Document]:
        return (
            await self.collection.find(
                {"status": OrderStatus.PENDING_PAYMENT.value, "expiresAt": {"$lte": now}},
                {"_id": 1, "branch": 1, "expiresAt": 1},
            )
            .sort("expiresAt", 1)
            .limit(limit)
            .to_list()
        )
