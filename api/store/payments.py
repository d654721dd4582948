"""Payment attempts, the provider events applied to them, and refund requests.

A payment document (one attempt to pay an order through one provider)::

    {_id: ObjectId, orderId, branch, provider, method, status, amountFen, currency,
     outTradeNo, providerTradeNo, returnUrl, refunds: [{outRefundNo, amountFen, status,
     reason, providerRefundNo, createdAt, updatedAt}], refundedFen, reservedFen,
     flagged: {reason, at} | null, eventIds: [...], version, createdAt, updatedAt,
     paidAt (when the platform says it was paid; set once, when newly paid),
     outbox: [{id, type, at, refund?}]}

Every change of a payment is written with ``find_one_and_update`` guarded on
``version``: a writer that lost a race reads again and re-decides, so the
domain's rules always see the document they change. The same write pushes the
webhook events of what it changes (a status leaving PENDING, a refund line
settling) onto ``outbox``, so a change and its event exist together or not at all.

A ``payment_events`` document stores one verified provider fact under
``_id = "{provider}:{branch}:{event_id}"``; inserting it is the exactly-once
gate (the unique ``_id`` and ``(branch, _id)``, the latter enforced across the
shards of a sharded cluster). ``outTradeNo`` is unique within its branch. Every
lookup of either names the branch, so a sharded cluster asks the one shard that
holds it (docs/deployment.md). A ``refunds`` document is one ``refundPayment``
request, unique per (branch, idempotencyKey), with ``_id`` = its ``outRefundNo``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from api.domain.payment import (
    PAID,
    Attempt,
    PaymentStatus,
    RefundLine,
    RefundStatus,
    ReversalState,
)
from api.domain.webhooks import payment_entries
from api.telemetry import metrics

Document = dict[str, Any]

_SETTLED = {
    PaymentStatus.FAILED.value: "failed",
    PaymentStatus.CLOSED.value: "closed",
}
_PAID = {status.value for status in PAID}


def _count_changes(previous: Document, written: Document) -> None:
    """Count what one won write changed: the attempt settling, refund lines added or settling."""
    record = metrics.recorder()
    if not record.enabled:
        return
    before, after = previous.get("status"), written.get("status")
    if after != before:
        if after in _PAID and before not in _PAID:
            record.attempt(written, "succeeded")
        elif (event := _SETTLED.get(str(after))) is not None:
            record.attempt(written, event)
    lines = {r["outRefundNo"]: r.get("status") for r in previous.get("refunds", [])}
    for refund in written.get("refunds", ()):
        status = refund.get("status")
        was = lines.get(refund["outRefundNo"])
        if refund["outRefundNo"] not in lines:
            record.refund(written, "started")
        if status != was and status != RefundStatus.PENDING.value:
            record.refund(written, str(status).lower())


def attempt_of(doc: Document) -> Attempt:
    """The domain's view of a stored payment."""
    flagged = doc.get("flagged")
    return Attempt(
        status=PaymentStatus(doc["status"]),
        amount_fen=int(doc["amountFen"]),
        currency=doc["currency"],
        refunds=tuple(
            RefundLine(
                out_refund_no=r["outRefundNo"],
                amount_fen=int(r["amountFen"]),
                status=RefundStatus(r["status"]),
                created_at=r["createdAt"],
                updated_at=r.get("updatedAt", r["createdAt"]),
                reason=r.get("reason"),
                provider_refund_no=r.get("providerRefundNo"),
            )
            for r in doc.get("refunds", [])
        ),
        flagged=flagged["reason"] if flagged else None,
        reversal=ReversalState(doc["reversal"]) if doc.get("reversal") else None,
        out_trade_no=doc.get("outTradeNo", ""),
    )


def attempt_fields(attempt: Attempt, previous: Document, now: datetime) -> Document:
    """The stored fields that carry ``attempt``."""
    flagged = previous.get("flagged")
    if attempt.flagged and not flagged:
        flagged = {"reason": attempt.flagged, "at": now}
    return {
        "status": attempt.status.value,
        "refunds": [
            {
                "outRefundNo": r.out_refund_no,
                "amountFen": r.amount_fen,
                "status": r.status.value,
                "reason": r.reason,
                "providerRefundNo": r.provider_refund_no,
                "createdAt": r.created_at,
                "updatedAt": r.updated_at,
            }
            for r in attempt.refunds
        ],
        "refundedFen": attempt.refunded_fen,
        "reservedFen": attempt.reserved_fen,
        "flagged": flagged,
        "reversal": attempt.reversal.value if attempt.reversal else None,
    }


class PaymentRepository:
    def __init__(
        self,
        payments: AsyncCollection[Document],
        events: AsyncCollection[Document],
        refunds: AsyncCollection[Document],
        mismatches: AsyncCollection[Document] | None = None,
    ) -> None:
        self.collection = payments
        self.events = events
        self.refunds = refunds
        self.mismatches = mismatches
        self.recorded: Callable[[str, ObjectId], None] | None = None  # see OrderRepository

    async def of_orders(self, order_ids: list[ObjectId]) -> dict[ObjectId, list[Document]]:
        """The payment attempts of the orders, oldest first, in one query (index order_created)."""
        found: dict[ObjectId, list[Document]] = {order_id: [] for order_id in order_ids}
        if not order_ids:
            return found
        cursor = self.collection.find({"orderId": {"$in": order_ids}}).sort("createdAt", 1)
        for payment in await cursor.to_list():
            found[payment["orderId"]].append(payment)
        return found

    async def insert(self, payment: Document) -> None:
        await self.collection.insert_one(payment)
        metrics.recorder().attempt(payment, "started")

    async def get(self, payment_id: ObjectId) -> Document | None:
        return await self.collection.find_one({"_id": payment_id})

    async def by_out_trade_no(self, branch: str, out_trade_no: str) -> Document | None:
        """The branch's attempt with this trade number (index ``branch_out_trade_no``)."""
        return await self.collection.find_one({"branch": branch, "outTradeNo": out_trade_no})

    async def of_order(self, order_id: ObjectId) -> list[Document]:
        return await self.collection.find({"orderId": order_id}).sort("createdAt", 1).to_list()

    async def write(
        self,
        previous: Document,
        fields: Document,
        now: datetime,
        *,
        event_key: str | None = None,
    ) -> Document | None:
        """Write ``fields`` if the payment is still at ``previous``'s version; None if not.

        With ``event_key`` the write also records that event as applied, and
        does nothing when it was applied already.
        """
        guard: Document = {"_id": previous["_id"], "version": previous["version"]}
        update: Document = {
            "$set": {**fields, "updatedAt": now},
            "$inc": {"version": 1},
        }
        push: Document = {}
        if event_key is not None:
            guard["eventIds"] = {"$ne": event_key}
            push["eventIds"] = event_key
        if entries := payment_entries(previous, fields, now):
            push["outbox"] = {"$each": entries}
        if push:
            update["$push"] = push
        written = await self.collection.find_one_and_update(
            guard, update, return_document=ReturnDocument.AFTER
        )
        if written is not None and entries and self.recorded is not None:
            self.recorded("payment", previous["_id"])
        if written is not None:
            _count_changes(previous, written)
        return written

    async def pending(
        self,
        *,
        created_after: datetime | None,
        created_before: datetime,
        branch: str | None,
    ) -> list[Document]:
        """Attempts still PENDING, or with a refund still PENDING, oldest first."""
        query: Document = {
            "$or": [
                {"status": PaymentStatus.PENDING.value},
                {"reservedFen": {"$gt": 0}},
            ],
            "createdAt": {"$lte": created_before},
        }
        if created_after is not None:
            query["createdAt"]["$gte"] = created_after
        if branch is not None:
            query["branch"] = branch
        return await self.collection.find(query).sort("createdAt", 1).to_list()

    # --- counter sales (a scanned payment code): followed until settled or reversed ---

    async def follow_counter_sale(self, payment_id: ObjectId, counter: Document) -> None:
        """Start following the counter sale: ``counter`` holds nextAt and deadline."""
        await self.collection.update_one(
            {"_id": payment_id, "counter": None}, {"$set": {"counter": counter}}
        )

    async def claim_counter_sale(self, now: datetime, hold_until: datetime) -> Document | None:
        """A due counter sale, held until ``hold_until`` so no other process takes it meanwhile.

        The claim is one conditional write on ``counter.nextAt`` (index counter_due):
        of N processes looking at once, one gets each sale.
        """
        return await self.collection.find_one_and_update(
            {"counter.nextAt": {"$lte": now}},
            {"$set": {"counter.nextAt": hold_until}, "$inc": {"counter.claims": 1}},
            sort=[("counter.nextAt", 1)],
            return_document=ReturnDocument.AFTER,
        )

    async def schedule_counter_sale(
        self, payment_id: ObjectId, claims: int, fields: Document
    ) -> bool:
        """Set the followed sale's next step, if this process still holds its claim."""
        result = await self.collection.update_one(
            {"_id": payment_id, "counter.claims": claims},
            {"$set": {f"counter.{k}": v for k, v in fields.items()}},
        )
        return result.modified_count == 1

    async def step_counter_sale_now(self, payment_id: ObjectId, now: datetime) -> None:
        """Make the counter sale due at once (followed from now if it was not)."""
        moved = await self.collection.update_one(
            {"_id": payment_id, "counter": {"$type": "object"}}, {"$set": {"counter.nextAt": now}}
        )
        if moved.matched_count == 0:
            await self.follow_counter_sale(
                payment_id,
                {"nextAt": now, "deadline": now, "polls": 0, "reverseTries": 0, "claims": 0},
            )

    async def stop_following(self, payment_id: ObjectId) -> None:
        await self.collection.update_one({"_id": payment_id}, {"$unset": {"counter": ""}})

    async def record_mismatch(self, record: Document) -> bool:
        """Keep a refused genuine notification once (its ``_id`` names the delivery)."""
        assert self.mismatches is not None, "the store binds the mismatches collection"
        try:
            await self.mismatches.insert_one(record)
        except DuplicateKeyError:
            return False
        return True

    async def mismatches_of(self, branches: list[str] | None, limit: int) -> list[Document]:
        assert self.mismatches is not None, "the store binds the mismatches collection"
        query: Document = {} if branches is None else {"branch": {"$in": branches}}
        return await self.mismatches.find(query).sort("receivedAt", -1).limit(limit).to_list()

    async def open_of_order(self, order_id: ObjectId) -> list[Document]:
        return await self.collection.find(
            {"orderId": order_id, "status": PaymentStatus.PENDING.value}
        ).to_list()

    # --- provider events --------------------------------------------------------------

    async def record_event(self, event: Document) -> bool:
        """Store the event; False when an event with its ``_id`` exists (a re-delivery)."""
        try:
            await self.events.insert_one(event)
        except DuplicateKeyError:
            return False
        return True

    async def event(self, branch: str, key: str) -> Document | None:
        return await self.events.find_one({"branch": branch, "_id": key})

    async def mark_event_applied(self, branch: str, key: str, note: str, now: datetime) -> None:
        await self.events.update_one(
            {"branch": branch, "_id": key, "applied": False},
            {"$set": {"applied": True, "outcome": note, "appliedAt": now}},
        )

    async def unapplied_events(self, *, received_before: datetime) -> list[Document]:
        return (
            await self.events.find({"applied": False, "receivedAt": {"$lte": received_before}})
            .sort("receivedAt", 1)
            .to_list()
        )

    async def events_of(self, payment_id: ObjectId) -> list[Document]:
        return await self.events.find({"paymentId": payment_id}).sort("receivedAt", 1).to_list()

    # --- refund requests ----------------------------------------------------------------

    async def insert_refund_once(self, refund: Document) -> tuple[Document, bool]:
        """Insert the request unless its (branch, idempotencyKey) exists; (stored, created)."""
        try:
            await self.refunds.insert_one(refund)
        except DuplicateKeyError:
            existing = await self.refunds.find_one(
                {"branch": refund["branch"], "idempotencyKey": refund["idempotencyKey"]}
            )
            if existing is None:
                raise
            return existing, False
        return refund, True

    async def finish_refund(self, out_refund_no: str, fields: Document) -> Document | None:
        return await self.refunds.find_one_and_update(
            {"_id": out_refund_no},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )

    async def refund_request(self, out_refund_no: str) -> Document | None:
        return await self.refunds.find_one({"_id": out_refund_no})

    async def forget_refund_request(self, out_refund_no: str) -> None:
        """Drop a request that was refused before anything was reserved for it."""
        await self.refunds.delete_one({"_id": out_refund_no})
