"""The audit log: an append-only record of admin actions, who did what and when.

The service only ever inserts into and reads from the ``audit_log`` collection.
In production, give branchpay's database user a role with ``insert`` and
``find`` but no ``update`` or ``remove`` on it, so not even a compromised
service can rewrite history.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

Document = dict[str, Any]


class AuditAction(enum.StrEnum):
    KEY_CREATED = "KEY_CREATED"
    KEY_REVOKED = "KEY_REVOKED"
    PROVIDER_ENABLED = "PROVIDER_ENABLED"
    PROVIDER_DISABLED = "PROVIDER_DISABLED"
    CONFIG_CHANGED = "CONFIG_CHANGED"
    REFUND_ISSUED = "REFUND_ISSUED"
    WEBHOOK_ENDPOINT_CREATED = "WEBHOOK_ENDPOINT_CREATED"
    WEBHOOK_ENDPOINT_UPDATED = "WEBHOOK_ENDPOINT_UPDATED"
    WEBHOOK_ENDPOINT_DELETED = "WEBHOOK_ENDPOINT_DELETED"
    WEBHOOK_SECRET_ROTATED = "WEBHOOK_SECRET_ROTATED"
    WEBHOOK_ENDPOINT_DISABLED = "WEBHOOK_ENDPOINT_DISABLED"
    WEBHOOK_ENDPOINT_PAUSED = "WEBHOOK_ENDPOINT_PAUSED"
    WEBHOOK_EVENT_REPLAYED = "WEBHOOK_EVENT_REPLAYED"
    WEBHOOK_DELIVERIES_RETRIED = "WEBHOOK_DELIVERIES_RETRIED"
    DISCREPANCY_RESOLVED = "DISCREPANCY_RESOLVED"


class AuditLog:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection

    async def record(
        self,
        actor: str,
        action: AuditAction,
        target: str,
        detail: Mapping[str, Any] | None = None,
        *,
        branch: str | None = None,
    ) -> Document:
        entry: Document = {
            "_id": ObjectId(),
            "at": datetime.now(UTC),
            "actor": actor,
            "action": action.value,
            "target": target,
            "branch": branch,
            "detail": dict(detail or {}),
        }
        await self.collection.insert_one(entry)
        return entry

    async def page(
        self, limit: int, before: ObjectId | None = None, branches: list[str] | None = None
    ) -> list[Document]:
        """Newest first; with ``branches``, only the entries of those branches."""
        query: Document = {} if before is None else {"_id": {"$lt": before}}
        if branches is not None:
            query["branch"] = {"$in": branches}
        return await self.collection.find(query).sort("_id", DESCENDING).limit(limit).to_list()
