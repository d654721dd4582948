"""Webhook endpoints, the events handed to them, and each delivery with its tries.

A ``webhook_endpoints`` document::

    {_id: "we_<hex>", url, events: [type], branches: [code], description,
     enabled, disabledReason, pausedReason, ownerKey, ownerRole,
     secrets: [{secret (sealed by the vault), createdAt, expiresAt | null}],
     failingSince | null, createdAt, updatedAt, deleted}

A ``webhook_events`` document is one event taken out of an order's or a
payment's ``outbox``, under ``_id`` = the event id, so taking it out twice
stores it once (the unique ``_id``, and ``(branch, _id)`` that a sharded
cluster enforces across its shards). A ``webhook_deliveries`` document is that event for one
endpoint, ``_id = "{eventId}:{endpointId}"`` (one per pair, whoever creates it)::

    {_id, eventId, endpointId, type, branch, body, status, tries, nextAttemptAt,
     leaseToken, attempts: [{at, status, latencyMs, response, error}], createdAt, updatedAt}

A PENDING delivery is due at ``nextAttemptAt``. A worker claims it by moving
``nextAttemptAt`` past a lease and setting a fresh ``leaseToken`` in one
conditional update, so of N processes one sends each try; a process that dies
mid-try leaves the delivery due again when the lease ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from api.domain.webhooks import DeliveryStatus
from api.telemetry import metrics

Document = dict[str, Any]
KEEP_ATTEMPTS = 30  # the newest tries kept on a delivery (replays add more)


# A try's outcome by the status it left the delivery in (still PENDING: it is retried).
_DELIVERY_OUTCOMES = {
    DeliveryStatus.SUCCEEDED.value: "succeeded",
    DeliveryStatus.FAILED.value: "failed",
}


class Outbox:
    """The webhook events an order's or a payment's writes left on the document."""

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection

    async def due(self, before: datetime, limit: int) -> list[Document]:
        """Documents holding an event recorded at or before ``before`` (index ``outbox``)."""
        return await self.collection.find({"outbox.at": {"$lte": before}}).limit(limit).to_list()

    async def holding(self, doc_id: ObjectId) -> Document | None:
        return await self.collection.find_one({"_id": doc_id, "outbox.0": {"$exists": True}})

    async def take_out(self, doc_id: ObjectId, event_id: str) -> None:
        await self.collection.update_one({"_id": doc_id}, {"$pull": {"outbox": {"id": event_id}}})


class WebhookRepository:
    def __init__(
        self,
        endpoints: AsyncCollection[Document],
        events: AsyncCollection[Document],
        deliveries: AsyncCollection[Document],
    ) -> None:
        self.endpoints = endpoints
        self.events = events
        self.deliveries = deliveries

    # --- endpoints ----------------------------------------------------------------------

    async def insert_endpoint(self, endpoint: Document) -> None:
        await self.endpoints.insert_one(endpoint)

    async def endpoint(self, endpoint_id: str) -> Document | None:
        return await self.endpoints.find_one({"_id": endpoint_id, "deleted": {"$ne": True}})

    async def endpoints_of(self, branches: Sequence[str] | None) -> list[Document]:
        """Endpoints serving any of ``branches`` (None: all), oldest first."""
        query: Document = {"deleted": {"$ne": True}}
        if branches is not None:
            query["branches"] = {"$in": list(branches)}
        return await self.endpoints.find(query).sort("createdAt", 1).to_list()

    async def subscribed(self, branch: str, event_type: str) -> list[Document]:
        """The enabled endpoints that take ``event_type`` of ``branch``."""
        return await self.endpoints.find(
            {"branches": branch, "events": event_type, "enabled": True, "deleted": {"$ne": True}}
        ).to_list()

    async def update_endpoint(self, endpoint_id: str, update: Document) -> Document | None:
        return await self.endpoints.find_one_and_update(
            {"_id": endpoint_id, "deleted": {"$ne": True}},
            update,
            return_document=ReturnDocument.AFTER,
        )

    async def failing(self, endpoint_id: str, now: datetime) -> Document | None:
        """Note a failed try: ``failingSince`` is set once, at the first failure of a run."""
        await self.endpoints.update_one(
            {"_id": endpoint_id, "failingSince": None}, {"$set": {"failingSince": now}}
        )
        return await self.endpoint(endpoint_id)

    async def succeeding(self, endpoint_id: str) -> None:
        await self.endpoints.update_one(
            {"_id": endpoint_id, "failingSince": {"$ne": None}}, {"$set": {"failingSince": None}}
        )

    async def pause(self, endpoint_id: str, reason: str, now: datetime) -> bool:
        """Pause the endpoint (its owner key is gone) unless paused; True when this call did."""
        result = await self.endpoints.update_one(
            {"_id": endpoint_id, "pausedReason": None},
            {"$set": {"pausedReason": reason, "updatedAt": now}},
        )
        return result.modified_count == 1

    async def disable(self, endpoint_id: str, reason: str, now: datetime) -> bool:
        """Disable the endpoint if it is enabled; True when this call did it."""
        result = await self.endpoints.update_one(
            {"_id": endpoint_id, "enabled": True},
            {"$set": {"enabled": False, "disabledReason": reason, "updatedAt": now}},
        )
        return result.modified_count == 1

    # --- events ---------------------------------------------------------------------------

    async def record_event(self, event: Document) -> None:
        """Store the event unless it is stored already (taken out of an outbox twice)."""
        with contextlib.suppress(DuplicateKeyError):
            await self.events.insert_one(event)

    async def event(self, event_id: str, branch: str | None = None) -> Document | None:
        """The event; with its ``branch`` a sharded cluster asks only the shard holding it."""
        query: Document = {"_id": event_id}
        if branch is not None:
            query["branch"] = branch
        return await self.events.find_one(query)

    # --- deliveries -----------------------------------------------------------------------

    async def insert_delivery(self, delivery: Document) -> bool:
        """Create the delivery unless this (event, endpoint) has one; True when created."""
        try:
            await self.deliveries.insert_one(delivery)
        except DuplicateKeyError:
            return False
        return True

    async def delivery(self, delivery_id: str, branch: str) -> Document | None:
        return await self.deliveries.find_one({"branch": branch, "_id": delivery_id})

    async def deliveries_of_event(self, event_id: str) -> list[Document]:
        return await self.deliveries.find({"eventId": event_id}).to_list()

    async def page(
        self,
        endpoint_id: str,
        *,
        status: DeliveryStatus | None,
        before: ObjectId | None,
        limit: int,
    ) -> list[Document]:
        """An endpoint's deliveries newest first (by ``seq``), strictly before ``before``."""
        query: Document = {"endpointId": endpoint_id}
        if status is not None:
            query["status"] = status.value
        if before is not None:
            query["seq"] = {"$lt": before}
        cursor = self.deliveries.find(query).sort("seq", DESCENDING).limit(limit)
        return await cursor.to_list()

    async def due_count(self, now: datetime) -> int:
        return await self.deliveries.count_documents(
            {"status": DeliveryStatus.PENDING.value, "nextAttemptAt": {"$lte": now}}
        )

    async def claim(self, now: datetime, lease: timedelta) -> Document | None:
        """Take one due delivery for ``lease``: no other process takes it until then."""
        return await self.deliveries.find_one_and_update(
            {"status": DeliveryStatus.PENDING.value, "nextAttemptAt": {"$lte": now}},
            {"$set": {"nextAttemptAt": now + lease, "leaseToken": ObjectId()}},
            sort=[("nextAttemptAt", 1)],
            return_document=ReturnDocument.AFTER,
        )

    async def finish_try(
        self, claimed: Document, attempt: Document, fields: Document, now: datetime
    ) -> bool:
        """Record a try of a delivery this process still holds; False if its lease was lost."""
        result = await self.deliveries.update_one(
            {"_id": claimed["_id"], "leaseToken": claimed["leaseToken"]},
            {
                "$set": {**fields, "updatedAt": now, "leaseToken": None},
                "$inc": {"tries": 1, "round": 1},
                "$push": {"attempts": {"$each": [attempt], "$slice": -KEEP_ATTEMPTS}},
            },
        )
        if result.modified_count != 1:
            return False
        metrics.recorder().webhook_delivery(
            _DELIVERY_OUTCOMES.get(str(fields.get("status")), "retry")
        )
        return True

    async def oldest_due(self, now: datetime) -> datetime | None:
        """When the delivery that has been due longest became due (None: none is due)."""
        oldest = await self.deliveries.find_one(
            {"status": DeliveryStatus.PENDING.value, "nextAttemptAt": {"$lte": now}},
            {"nextAttemptAt": 1},
            sort=[("nextAttemptAt", 1)],
        )
        return None if oldest is None else oldest["nextAttemptAt"]

    async def set_body(self, delivery_id: str, body: str) -> None:
        await self.deliveries.update_one({"_id": delivery_id}, {"$set": {"body": body}})

    async def forget_bodies(self, endpoint_id: str) -> None:
        """A new owner: the waiting deliveries are rendered again, as it sees the data."""
        await self.deliveries.update_many(
            {"endpointId": endpoint_id, "status": DeliveryStatus.PENDING.value},
            {"$set": {"body": None}},
        )

    async def postpone(self, claimed: Document, until: datetime) -> None:
        """Give back a claimed delivery untried (its endpoint is disabled or paused)."""
        await self.deliveries.update_one(
            {"_id": claimed["_id"], "leaseToken": claimed["leaseToken"]},
            {"$set": {"nextAttemptAt": until, "leaseToken": None}},
        )

    async def send_again(self, query: Document, now: datetime) -> int:
        """Make the matching deliveries due now, as PENDING with a fresh schedule."""
        result = await self.deliveries.update_many(
            query,
            {
                "$set": {
                    "status": DeliveryStatus.PENDING.value,
                    "nextAttemptAt": now,
                    "round": 0,
                    "leaseToken": None,
                    "updatedAt": now,
                }
            },
        )
        return result.modified_count

    async def wake(self, endpoint_id: str, now: datetime) -> None:
        """An endpoint enabled again: its waiting deliveries are due now."""
        await self.deliveries.update_many(
            {"endpointId": endpoint_id, "status": DeliveryStatus.PENDING.value},
            {"$set": {"nextAttemptAt": now}},
        )
