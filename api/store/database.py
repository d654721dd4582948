"""The connection to MongoDB and the collections with their indexes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from api.store.audit import AuditLog
from api.store.bills import BillRepository
from api.store.catalog import CatalogRepository
from api.store.keys import KeyRing
from api.store.leases import Leases
from api.store.orders import OrderRepository
from api.store.payments import PaymentRepository
from api.store.rate_limits import COLLECTION as RATE_LIMITS
from api.store.rate_limits import RateBuckets
from api.store.webhooks import Outbox, WebhookRepository

Document = dict[str, Any]

INDEXES: dict[str, list[IndexModel]] = {
    "orders": [
        IndexModel(
            [("branch", ASCENDING), ("idempotencyKey", ASCENDING)],
            unique=True,
            name="branch_idempotency_key",
        ),
        # Keyset pagination newest first, with _id as the tie-break: one index per filter shape.
        IndexModel([("createdAt", DESCENDING), ("_id", DESCENDING)], name="created"),
        IndexModel(
            [("branch", ASCENDING), ("createdAt", DESCENDING), ("_id", DESCENDING)],
            name="branch_created",
        ),
        IndexModel(
            [
                ("branch", ASCENDING),
                ("status", ASCENDING),
                ("createdAt", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="branch_status_created",
        ),
        IndexModel(
            [("status", ASCENDING), ("createdAt", DESCENDING), ("_id", DESCENDING)],
            name="status_created",
        ),
        IndexModel([("status", ASCENDING), ("expiresAt", ASCENDING)], name="status_expires"),
        # Webhook events not yet handed to the webhook service (api/store/webhooks.py).
        IndexModel([("outbox.at", ASCENDING)], name="outbox", sparse=True),
        # Orders of one mobile number, found by its keyed fingerprint (never stored in clear):
        # over all branches (ops keys) and within the branches a partner key sees.
        IndexModel(
            [("customer.phoneDigest", ASCENDING), ("createdAt", DESCENDING), ("_id", DESCENDING)],
            name="phone_created",
        ),
        IndexModel(
            [
                ("branch", ASCENDING),
                ("customer.phoneDigest", ASCENDING),
                ("createdAt", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="branch_phone_created",
        ),
    ],
    # Genuine notifications refused by the checks beyond the signature (api/store/payments.py).
    "notification_mismatches": [
        IndexModel([("receivedAt", DESCENDING)], name="received"),
        IndexModel([("branch", ASCENDING), ("receivedAt", DESCENDING)], name="branch_received"),
    ],
    "payments": [
        # A trade number is unique within its branch; notifications name the branch.
        IndexModel(
            [("branch", ASCENDING), ("outTradeNo", ASCENDING)],
            unique=True,
            name="branch_out_trade_no",
        ),
        IndexModel([("orderId", ASCENDING), ("createdAt", ASCENDING)], name="order_created"),
        # Reconciliation walks PENDING attempts (and reserved refunds) by age.
        IndexModel(
            [("branch", ASCENDING), ("status", ASCENDING), ("createdAt", ASCENDING)],
            name="branch_status_created",
        ),
        IndexModel([("status", ASCENDING), ("createdAt", ASCENDING)], name="status_created"),
        IndexModel([("reservedFen", ASCENDING), ("createdAt", ASCENDING)], name="reserved_created"),
        IndexModel(
            [("branch", ASCENDING), ("reservedFen", ASCENDING), ("createdAt", ASCENDING)],
            name="branch_reserved_created",
        ),
        IndexModel([("outbox.at", ASCENDING)], name="outbox", sparse=True),
        # Counter sales still followed (polled, or being reversed), by when they are due.
        IndexModel([("counter.nextAt", ASCENDING)], name="counter_due", sparse=True),
        # Bill reconciliation: the paid attempts and succeeded refund lines of a day window.
        IndexModel(
            [("branch", ASCENDING), ("provider", ASCENDING), ("paidAt", ASCENDING)],
            name="branch_provider_paid",
        ),
        IndexModel(
            [
                ("branch", ASCENDING),
                ("provider", ASCENDING),
                ("refunds.status", ASCENDING),
                ("refunds.updatedAt", ASCENDING),
            ],
            name="branch_provider_refund_updated",
        ),
    ],
    # _id is "{branch}:{provider}:{YYYY-MM-DD}"; discrepancies' ids start with it.
    "reconciliations": [
        IndexModel(
            [("branch", ASCENDING), ("billDate", DESCENDING), ("provider", ASCENDING)],
            name="branch_date_provider",
        ),
    ],
    "discrepancies": [
        IndexModel([("branch", ASCENDING), ("_id", ASCENDING)], unique=True, name="branch_id"),
        IndexModel(
            [
                ("reconciliationId", ASCENDING),
                ("open", ASCENDING),
                ("kind", ASCENDING),
                ("_id", ASCENDING),
            ],
            name="reconciliation_open_kind",
        ),
        IndexModel(
            [("branch", ASCENDING), ("open", ASCENDING), ("detectedAt", ASCENDING)],
            name="branch_open_detected",
        ),
    ],
    "webhook_endpoints": [
        IndexModel([("branches", ASCENDING), ("events", ASCENDING)], name="branch_event"),
    ],
    # _id is the event id; (branch, _id) is the shard key of a sharded cluster.
    "webhook_events": [
        IndexModel([("branch", ASCENDING), ("_id", ASCENDING)], unique=True, name="branch_id"),
    ],
    # _id is "{eventId}:{endpointId}": one delivery per pair, whoever creates it.
    "webhook_deliveries": [
        IndexModel([("branch", ASCENDING), ("_id", ASCENDING)], unique=True, name="branch_id"),
        IndexModel([("status", ASCENDING), ("nextAttemptAt", ASCENDING)], name="due"),
        IndexModel([("endpointId", ASCENDING), ("seq", DESCENDING)], name="endpoint_seq"),
        IndexModel(
            [("endpointId", ASCENDING), ("status", ASCENDING), ("seq", DESCENDING)],
            name="endpoint_status_seq",
        ),
        IndexModel([("eventId", ASCENDING)], name="event"),
    ],
    # _id is "{provider}:{branch}:{event_id}": inserting it is the exactly-once gate, on
    # (branch, _id), which a sharded cluster enforces across shards (docs/deployment.md).
    "payment_events": [
        IndexModel([("branch", ASCENDING), ("_id", ASCENDING)], unique=True, name="branch_id"),
        IndexModel([("paymentId", ASCENDING), ("receivedAt", ASCENDING)], name="payment"),
        # Reconciliation finishes the events stored but never applied (a process died).
        IndexModel(
            [("applied", ASCENDING), ("receivedAt", ASCENDING)],
            name="unapplied",
            partialFilterExpression={"applied": False},
        ),
    ],
    # _id is the outRefundNo; (branch, idempotencyKey) makes refundPayment idempotent.
    "refunds": [
        IndexModel(
            [("branch", ASCENDING), ("idempotencyKey", ASCENDING)],
            unique=True,
            name="branch_idempotency_key",
        ),
    ],
    # _id is "{branch}:{provider}:{kind}:{outTradeNo}:{outRefundNo}": a line billed once.
    "bill_marks": [
        IndexModel([("branch", ASCENDING), ("_id", ASCENDING)], unique=True, name="branch_id"),
    ],
    "api_keys": [IndexModel([("name", ASCENDING)], unique=True, name="name")],
    # A branch admin's page of the audit log: its branches' entries, newest first.
    "audit_log": [IndexModel([("branch", ASCENDING), ("_id", DESCENDING)], name="branch_id")],
    # _id is the bucket's key; a bucket past expireAt is full again, the same as none.
    RATE_LIMITS: [IndexModel([("expireAt", ASCENDING)], expireAfterSeconds=0, name="expire")],
    "offerings": [
        IndexModel(
            [("branch", ASCENDING), ("kind", ASCENDING), ("sort", ASCENDING)], name="branch_kind"
        ),
    ],
}


@dataclass(frozen=True, slots=True)
class StoreTimeouts:
    """How long the driver waits for the store before it reports an outage.

    Each maps to a documented PyMongo client option. Without them PyMongo waits
    30 s to select a server and forever for a reply, which is how a stopped
    store used to hang requests for 30-57 s. The per-request deadline
    (api/web/store_deadline.py) bounds a whole request's store work on top.
    """

    server_selection_seconds: float
    connect_seconds: float
    socket_seconds: float

    def client_options(self) -> dict[str, int]:
        return {
            "serverSelectionTimeoutMS": round(self.server_selection_seconds * 1000),
            "connectTimeoutMS": round(self.connect_seconds * 1000),
            "socketTimeoutMS": round(self.socket_seconds * 1000),
        }


class Store:
    """Owns the client; hands out repositories bound to one database."""

    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        self.client = client
        self.db: AsyncDatabase[Document] = client[database]
        self.orders = OrderRepository(self.db["orders"])
        self.catalog = CatalogRepository(self.db["offerings"])
        self.keys = KeyRing(self.db["api_keys"])
        self.audit = AuditLog(self.db["audit_log"])
        # A spend lost to a crash or a failover only grants a few points twice: it
        # need not wait for the journal or the replicas, and waits on every request.
        self.rate_limits = RateBuckets(
            self.db.get_collection(RATE_LIMITS, write_concern=WriteConcern(w=1, j=False))
        )
        self.payments = PaymentRepository(
            self.db["payments"],
            self.db["payment_events"],
            self.db["refunds"],
            self.db["notification_mismatches"],
        )
        self.webhooks = WebhookRepository(
            self.db["webhook_endpoints"], self.db["webhook_events"], self.db["webhook_deliveries"]
        )
        self.bills = BillRepository(
            self.db["reconciliations"],
            self.db["discrepancies"],
            self.db["bill_marks"],
            self.db["payments"],
        )
        self.leases = Leases(self.db["leases"])
        self.order_outbox = Outbox(self.db["orders"])
        self.payment_outbox = Outbox(self.db["payments"])

    @classmethod
    def connect(
        cls,
        uri: str,
        database: str,
        timeouts: StoreTimeouts | None = None,
        **client_options: Any,
    ) -> Store:
        """A store on ``uri``; ``client_options`` go to PyMongo and win over ``timeouts``.

        Without ``timeouts`` the driver's own (long) defaults apply: the
        command-line tools and the bench loader run long bulk operations that a
        short socket timeout would cut; the service passes its settings.
        """
        options = {**(timeouts.client_options() if timeouts else {}), **client_options}
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            uri, tz_aware=True, connect=False, **options
        )
        return cls(client, database)

    def on_event_recorded(self, listener: Callable[[str, ObjectId], None] | None) -> None:
        """Tell ``listener`` (kind, id) after each write that left a webhook event."""
        self.orders.recorded = listener
        self.payments.recorded = listener

    def collection(self, name: str) -> AsyncCollection[Document]:
        return self.db[name]

    async def ensure_indexes(self) -> None:
        for collection, indexes in INDEXES.items():
            await self.db[collection].create_indexes(indexes)

    async def ping(self) -> bool:
        await self.client.admin.command("ping")
        return True

    async def close(self) -> None:
        await self.client.close()
