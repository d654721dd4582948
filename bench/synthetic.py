"""The synthetic order set: orders of the six demo branches, priced from the demo catalogs.

Every order is a function of its index and the set's ``base`` time, so the
load generator can name a random existing order (``order_id(base, i)``)
without reading the store. Customers are stored as the order service stores
them (masked, encrypted and fingerprinted with the bench's PII key). Orders
are spread over the 30 days before ``base``; about half were paid and have
one payment attempt.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

from api.dev.seed import DEMO_BRANCHES, demo_catalog
from api.domain.order import OrderStatus, RequestedItem, price_order
from api.domain.pii import PiiVault, protect_customer

Document = dict[str, Any]

BRANCHES: tuple[str, ...] = tuple(DEMO_BRANCHES)
SPAN_MS = 30 * 24 * 3600 * 1000
# Indices go into the last three bytes of an ObjectId.
MAX_ORDERS = 2**24 - 1
# Bumped whenever the stored shape changes: a set of another format is reloaded.
FORMAT = 2
ORDER_TAG = b"bench"
PAYMENT_TAG = b"bpay"
# Odd multiplier: spreads consecutive indices over the whole span without collisions
# in practice, so the newest-first order is unrelated to insertion order.
SPREAD = 2654435761
STATUS_WEIGHTS: tuple[tuple[OrderStatus, int], ...] = (
    (OrderStatus.PAID, 40),
    (OrderStatus.PENDING_PAYMENT, 15),
    (OrderStatus.EXPIRED, 20),
    (OrderStatus.CANCELLED, 15),
    (OrderStatus.REFUNDED, 5),
    (OrderStatus.PARTIALLY_REFUNDED, 5),
)
PAYMENT_STATUS = {
    OrderStatus.PAID: "SUCCEEDED",
    OrderStatus.REFUNDED: "REFUNDED",
    OrderStatus.PARTIALLY_REFUNDED: "PARTIALLY_REFUNDED",
}
# Synthetic unpaid orders never fall due, so the API's expiry job leaves the
# set as loaded however long after loading it is reused.
PENDING_LIFETIME = timedelta(days=3650)
SURNAMES = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu")


def created_at(base: datetime, index: int) -> datetime:
    return base - timedelta(milliseconds=(index * SPREAD) % SPAN_MS)


def order_id(base: datetime, index: int) -> ObjectId:
    seconds = int(created_at(base, index).timestamp())
    return ObjectId(struct.pack(">I", seconds) + ORDER_TAG + index.to_bytes(3, "big"))


def branch_of(index: int) -> str:
    return BRANCHES[index % len(BRANCHES)]


def _item_pool(branch: str, rng: random.Random, size: int = 64) -> list[Document]:
    """Priced item lists of one to three lines, as createOrder would store them."""
    catalog = demo_catalog(branch)
    by_id = {offering["_id"]: offering for offering in catalog}
    pool: list[Document] = []
    while len(pool) < size:
        offerings = rng.sample(catalog, rng.randint(1, 3))
        if sum(o["kind"] == "NUMBER" for o in offerings) > 1:
            continue
        requested = [
            RequestedItem(
                o["_id"],
                1 if o["kind"] in ("NUMBER", "HANDSET") else rng.randint(1, 3),
                {g["name"]: rng.choice(g["choices"])["value"] for g in o["options"]},
            )
            for o in offerings
        ]
        priced, problems = price_order(branch, requested, by_id)
        if priced is None or problems:
            continue
        pool.append({"items": priced.items, "totalFen": priced.total_fen})
    return pool


class OrderSet:
    """Generates the orders (and their payments) of one synthetic set."""

    def __init__(self, base: datetime, vault: PiiVault, seed: str = "bench") -> None:
        self.base = base
        self.vault = vault
        rng = random.Random(seed)
        self.pools = {branch: _item_pool(branch, rng) for branch in BRANCHES}
        self.statuses = [status for status, _ in STATUS_WEIGHTS]
        self.weights = [weight for _, weight in STATUS_WEIGHTS]

    def batch(self, start: int, stop: int) -> tuple[list[Document], list[Document]]:
        """Orders ``start`` to ``stop - 1`` and the payments of those that were paid."""
        orders: list[Document] = []
        payments: list[Document] = []
        for index in range(start, stop):
            order, payment = self.order(index)
            orders.append(order)
            if payment is not None:
                payments.append(payment)
        return orders, payments

    def order(self, index: int) -> tuple[Document, Document | None]:
        rng = random.Random(index)
        branch = branch_of(index)
        priced = rng.choice(self.pools[branch])
        status = rng.choices(self.statuses, self.weights)[0]
        created = created_at(self.base, index)
        _id = order_id(self.base, index)
        settled = created + timedelta(minutes=rng.randint(1, 20))
        ttl = PENDING_LIFETIME if status is OrderStatus.PENDING_PAYMENT else timedelta(minutes=30)
        key = f"bench-{index:08d}"
        order: Document = {
            "_id": _id,
            "branch": branch,
            "status": status.value,
            "totalFen": priced["totalFen"],
            "currency": "CNY",
            "items": priced["items"],
            "customer": protect_customer(
                self.vault,
                f"{rng.choice(SURNAMES)} {chr(65 + index % 26)}.",
                f"13{rng.randrange(10**9):09d}",
                None,
            ),
            "idempotencyKey": key,
            "requestHash": f"{index:064x}",
            "createdAt": created,
            "updatedAt": created if status is OrderStatus.PENDING_PAYMENT else settled,
            "expiresAt": created + ttl,
            "statusHistory": [{"status": status.value, "at": settled, "reason": "synthetic"}],
        }
        payment_status = PAYMENT_STATUS.get(status)
        if payment_status is None:
            return order, None
        refunds = []
        if status is not OrderStatus.PAID:
            refunded = (
                priced["totalFen"]
                if status is OrderStatus.REFUNDED
                else max(1, priced["totalFen"] // 2)
            )
            refunds.append(
                {
                    "outRefundNo": f"BR{index:010d}",
                    "amountFen": refunded,
                    "status": "SUCCEEDED",
                    "reason": "synthetic",
                    "providerRefundNo": f"SBR{index:012d}",
                    "createdAt": settled,
                    "updatedAt": settled,
                }
            )
        payment: Document = {
            "_id": ObjectId(
                struct.pack(">I", int(created.timestamp())) + PAYMENT_TAG + index.to_bytes(4, "big")
            ),
            "orderId": _id,
            "branch": branch,
            "provider": "sandbox",
            "method": "QR_CODE",
            "status": payment_status,
            "amountFen": priced["totalFen"],
            "currency": "CNY",
            "outTradeNo": f"BP{index:010d}",
            "providerTradeNo": f"SBX{index:012d}",
            "refunds": refunds,
            "refundedFen": sum(refund["amountFen"] for refund in refunds),
            "reservedFen": 0,
            "flagged": None,
            "eventIds": [],
            "version": 1 + len(refunds),
            "createdAt": created,
            "updatedAt": settled,
        }
        return order, payment


def batches(total: int, start: int, size: int) -> Iterator[tuple[int, int]]:
    for first in range(start, total, size):
        yield first, min(first + size, total)
