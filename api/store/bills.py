"""Bill reconciliation's documents: reconciliations, discrepancies, bill marks.

``reconciliations``: one per (branch, provider, bill date), ``_id``
``"{branch}:{provider}:{YYYY-MM-DD}"``; a re-run replaces it. ``discrepancies``:
``_id`` ``"{reconciliationId}:{KIND}:{outTradeNo}:{outRefundNo}"``, so a re-run
upserts the same ids and never makes a second set; each records the run that
last found it (``seenBy``), and one still open that a run did not find again is
closed as CLEARED. A resolved discrepancy stays resolved. ``bill_marks``:
``_id`` ``"{branch}:{provider}:{kind}:{outTradeNo}:{outRefundNo}"`` with the
``billDate`` that billed a record near a day boundary (api/domain/bills.py).

The reads of our side go to ``payments``: the attempts of a batch of bill
lines in one query, and the paid attempts and succeeded refund lines of a day
window, streamed (indexes branch_provider_paid, branch_provider_refund_updated).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

Document = dict[str, Any]

# What matching and resolving read of a payment; not its outbox or event ids.
_PAYMENT_FIELDS = {"outbox": 0, "eventIds": 0}


class BillRepository:
    def __init__(
        self,
        reconciliations: AsyncCollection[Document],
        discrepancies: AsyncCollection[Document],
        marks: AsyncCollection[Document],
        payments: AsyncCollection[Document],
    ) -> None:
        self.reconciliations = reconciliations
        self.discrepancies = discrepancies
        self.marks = marks
        self.payments = payments

    # --- our side ---------------------------------------------------------------------

    async def attempts(
        self, branch: str, provider: str, out_trade_nos: Sequence[str]
    ) -> dict[str, Document]:
        """The attempts of a batch of bill lines by outTradeNo, in one query."""
        if not out_trade_nos:
            return {}
        # Exactly the unique index's fields (branch, outTradeNo): SecantusDB plans a
        # third equality (provider) as a collection scan, so it is checked here.
        cursor = self.payments.find(
            {"branch": branch, "outTradeNo": {"$in": list(out_trade_nos)}},
            _PAYMENT_FIELDS,
        )
        return {doc["outTradeNo"]: doc async for doc in cursor if doc.get("provider") == provider}

    async def paid_between(
        self, branch: str, provider: str, start: datetime, end: datetime
    ) -> AsyncIterator[Document]:
        """Attempts paid (``paidAt``) in [start, end), streamed."""
        cursor = self.payments.find(
            {"branch": branch, "provider": provider, "paidAt": {"$gte": start, "$lt": end}},
            {"outTradeNo": 1, "providerTradeNo": 1, "amountFen": 1, "status": 1, "paidAt": 1},
            batch_size=1000,
        )
        async for doc in cursor:
            yield doc

    async def refunded_between(
        self, branch: str, provider: str, start: datetime, end: datetime
    ) -> AsyncIterator[Document]:
        """Attempts with a refund line that succeeded in [start, end), streamed."""
        cursor = self.payments.find(
            {
                "branch": branch,
                "provider": provider,
                "refunds": {
                    "$elemMatch": {"status": "SUCCEEDED", "updatedAt": {"$gte": start, "$lt": end}}
                },
            },
            {"outTradeNo": 1, "providerTradeNo": 1, "refunds": 1},
            batch_size=1000,
        )
        async for doc in cursor:
            yield doc

    # --- bill marks -------------------------------------------------------------------

    async def add_marks(
        self, branch: str, mark_ids: Sequence[str], bill_date: date, now: datetime
    ) -> None:
        """Mark the branch's lines as billed on ``bill_date``.

        The filter names the branch: an upsert on a sharded cluster must carry
        the whole shard key, (branch, _id) here (docs/deployment.md).
        """
        if not mark_ids:
            return
        await self.marks.bulk_write(
            [
                UpdateOne(
                    {"branch": branch, "_id": mark},
                    {"$set": {"billDate": bill_date.isoformat(), "at": now}},
                    upsert=True,
                )
                for mark in mark_ids
            ],
            ordered=False,
        )

    async def marked_on_other_days(self, mark_ids: Sequence[str], bill_date: date) -> set[str]:
        """Which of ``mark_ids`` another day's bill has billed."""
        if not mark_ids:
            return set()
        cursor = self.marks.find(
            {"_id": {"$in": list(mark_ids)}, "billDate": {"$ne": bill_date.isoformat()}}, {"_id": 1}
        )
        return {str(doc["_id"]) async for doc in cursor}

    # --- discrepancies ----------------------------------------------------------------

    async def record_discrepancies(self, found: Sequence[Document], run: str) -> None:
        """Upsert what a run found: new ones open (or APPLIED), known ones keep their state.

        Each document of ``found`` carries ``_id``, the descriptive fields, and
        ``detectedAt``, ``open`` and ``resolution`` for when it is new.
        """
        if not found:
            return
        writes = []
        for doc in found:
            fixed = {"open", "resolution", "detectedAt", "_id"}
            described = {k: v for k, v in doc.items() if k not in fixed}
            writes.append(
                UpdateOne(
                    # The whole shard key (branch, _id), as an upsert on a sharded cluster needs.
                    {"branch": doc["branch"], "_id": doc["_id"]},
                    {
                        "$set": {**described, "seenBy": run},
                        "$setOnInsert": {
                            "detectedAt": doc["detectedAt"],
                            "open": doc["open"],
                            "resolution": doc["resolution"],
                        },
                    },
                    upsert=True,
                )
            )
        await self.discrepancies.bulk_write(writes, ordered=False)

    async def close_applied(self, discrepancy_ids: Sequence[str], resolution: Document) -> None:
        """Close open ones whose cause a run resolved (a missed notification applied)."""
        if discrepancy_ids:
            await self.discrepancies.update_many(
                {"_id": {"$in": list(discrepancy_ids)}, "open": True},
                {"$set": {"open": False, "resolution": resolution}},
            )

    async def clear_vanished(self, reconciliation_id: str, run: str, resolution: Document) -> int:
        """Close the open discrepancies of the reconciliation that run ``run`` did not find."""
        result = await self.discrepancies.update_many(
            {"reconciliationId": reconciliation_id, "open": True, "seenBy": {"$ne": run}},
            {"$set": {"open": False, "resolution": resolution}},
        )
        return result.modified_count

    async def count_by_kind(self, reconciliation_id: str) -> dict[str, int]:
        """The reconciliation's discrepancies by kind, open or resolved, not those CLEARED."""
        cursor = await self.discrepancies.aggregate(
            [
                {
                    "$match": {
                        "reconciliationId": reconciliation_id,
                        "resolution.how": {"$ne": "CLEARED"},
                    }
                },
                {"$group": {"_id": "$kind", "n": {"$sum": 1}}},
            ]
        )
        return {str(doc["_id"]): int(doc["n"]) async for doc in cursor}

    async def open_by_kind(self) -> dict[str, int]:
        """Every open discrepancy, of every reconciliation, counted by kind (for the metrics)."""
        cursor = await self.discrepancies.aggregate(
            [{"$match": {"open": True}}, {"$group": {"_id": "$kind", "n": {"$sum": 1}}}]
        )
        return {str(doc["_id"]): int(doc["n"]) async for doc in cursor}

    async def count_open(self, reconciliation_id: str) -> int:
        return await self.discrepancies.count_documents(
            {"reconciliationId": reconciliation_id, "open": True}
        )

    async def discrepancy(self, discrepancy_id: str) -> Document | None:
        return await self.discrepancies.find_one({"_id": discrepancy_id})

    async def discrepancies_page(
        self,
        reconciliation_id: str,
        *,
        first: int,
        after: str | None,
        kind: str | None,
        open_only: bool | None,
    ) -> tuple[list[Document], bool]:
        """A page of the reconciliation's discrepancies by ``_id``, and whether more follow."""
        query: Document = {"reconciliationId": reconciliation_id}
        if open_only is not None:
            query["open"] = open_only
        if kind is not None:
            query["kind"] = kind
        if after is not None:
            query["_id"] = {"$gt": after}
        cursor = self.discrepancies.find(query).sort("_id", ASCENDING).limit(first + 1)
        docs = await cursor.to_list()
        return docs[:first], len(docs) > first

    async def resolve(self, discrepancy_id: str, resolution: Document) -> Document | None:
        """Close an open discrepancy with ``resolution``; None when it is not open (any more)."""
        return await self.discrepancies.find_one_and_update(
            {"_id": discrepancy_id, "open": True},
            {"$set": {"open": False, "resolution": resolution}},
            return_document=ReturnDocument.AFTER,
        )

    # --- reconciliations --------------------------------------------------------------

    async def save(self, reconciliation: Document) -> None:
        await self.reconciliations.replace_one(
            {"_id": reconciliation["_id"]}, reconciliation, upsert=True
        )

    async def reconciliation(self, reconciliation_id: str) -> Document | None:
        return await self.reconciliations.find_one({"_id": reconciliation_id})

    async def set_open_count(self, reconciliation_id: str, count: int) -> None:
        await self.reconciliations.update_one(
            {"_id": reconciliation_id}, {"$set": {"openDiscrepancies": count}}
        )

    async def between(
        self, branches: Sequence[str], provider: str | None, from_day: date, to_day: date
    ) -> list[Document]:
        """Reconciliations of the branches from ``from_day`` to ``to_day`` (both included)."""
        if not branches:
            return []
        query: Document = {
            "branch": {"$in": list(branches)},
            "billDate": {"$gte": from_day.isoformat(), "$lte": to_day.isoformat()},
        }
        if provider is not None:
            query["provider"] = provider
        cursor = self.reconciliations.find(query).sort(
            [("branch", ASCENDING), ("billDate", DESCENDING), ("provider", ASCENDING)]
        )
        return await cursor.to_list()
