"""The order service: creates orders priced from the catalog, cancels and expires them.

Resolvers call this; it validates with the pure domain rules, then writes
through the store. Nothing is written when a request is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from api.domain.order import (
    OrderStatus,
    RequestedItem,
    check_customer,
    check_idempotency_key,
    price_order,
)
from api.domain.pii import PiiVault, protect_customer
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import BRANCH_CODE, CANCEL_REASON, quoted
from api.store import Store
from api.telemetry import context

Document = dict[str, Any]
log = logging.getLogger("branchpay.orders")

OrderHook = Callable[[str, Mapping[str, Any]], None]
# Closes the order's open payment attempts at their platforms; True when none stays open.
CloseAttempts = Callable[[Mapping[str, Any]], Awaitable[bool]]
# An order whose attempts cannot be closed (platform down) waits this long past
# expiresAt before it expires anyway; a success that arrives later is refunded.
CLOSE_GRACE = timedelta(hours=1)


def _request_hash(
    vault: PiiVault, branch: str, items: Sequence[RequestedItem], customer: Mapping[str, str | None]
) -> str:
    # Keyed, because the request holds personal data a plain hash would let anyone guess.
    canonical = json.dumps(
        {
            "branch": branch,
            "items": [
                {**asdict(item), "options": dict(sorted(item.options.items()))} for item in items
            ],
            "customer": dict(customer),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return vault.fingerprint(canonical, "order request")


class OrderService:
    def __init__(
        self,
        store: Store,
        *,
        vault: PiiVault,
        branch_exists: Callable[[str], bool],
        ttl: timedelta,
        on_event: OrderHook | None = None,
        close_attempts: CloseAttempts | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.vault = vault
        self.branch_exists = branch_exists
        self.ttl = ttl
        self.on_event = on_event
        self.close_attempts = close_attempts
        self.clock = clock

    async def create(
        self,
        branch: str,
        items: Sequence[RequestedItem],
        customer_name: str,
        customer_phone: str,
        idempotency_key: str,
        *,
        visible: Callable[[str], bool],
        customer_id_card: str | None = None,
    ) -> tuple[Document | None, list[Problem]]:
        """Create the order, or return the one already created with this key.

        A branch the caller may not see is refused exactly like one that does not exist.
        """
        problems = check_idempotency_key(idempotency_key)
        if not (self.branch_exists(branch) and visible(branch)):
            problems.append(
                Problem(
                    ("branch",),
                    f"no branch {quoted(branch, BRANCH_CODE)}",
                    UserErrorCode.UNKNOWN_BRANCH,
                )
            )
        customer, customer_problems = check_customer(
            customer_name, customer_phone, customer_id_card
        )
        problems.extend(customer_problems)
        if problems or customer is None:
            return None, problems
        context.bind(branch=branch)
        request_hash = _request_hash(
            self.vault,
            branch,
            items,
            {"name": customer.name, "phone": customer.phone, "idCard": customer.id_card},
        )
        existing = await self.store.orders.by_idempotency_key(branch, idempotency_key)
        if existing is not None:
            context.bind(order_id=str(existing["_id"]))
            return self._repeat(existing, request_hash)
        offering_ids = sorted({item.offering_id for item in items})
        offerings = {o["_id"]: o for o in await self.store.catalog.get_many(offering_ids)}
        priced, problems = price_order(branch, items, offerings)
        if priced is None:
            return None, problems
        now = self.clock()
        now = now.replace(microsecond=(now.microsecond // 1000) * 1000)  # BSON keeps milliseconds
        order: Document = {
            "_id": ObjectId(),
            "branch": branch,
            "status": OrderStatus.PENDING_PAYMENT.value,
            "totalFen": priced.total_fen,
            "currency": priced.currency,
            "items": priced.items,
            "customer": protect_customer(
                self.vault, customer.name, customer.phone, customer.id_card
            ),
            "idempotencyKey": idempotency_key,
            "requestHash": request_hash,
            "createdAt": now,
            "updatedAt": now,
            "expiresAt": now + self.ttl,
            "statusHistory": [
                {"status": OrderStatus.PENDING_PAYMENT.value, "at": now, "reason": "created"}
            ],
        }
        stored, created = await self.store.orders.insert_once(order)
        context.bind(order_id=str(stored["_id"]))
        if not created:
            return self._repeat(stored, request_hash)
        self._emit("order_created", stored)
        return stored, []

    @staticmethod
    def _repeat(existing: Document, request_hash: str) -> tuple[Document | None, list[Problem]]:
        if existing.get("requestHash") != request_hash:
            return None, [
                Problem(
                    ("idempotencyKey",),
                    "this idempotencyKey was already used for a different order",
                    UserErrorCode.IDEMPOTENCY_KEY_REUSED,
                )
            ]
        return existing, []

    async def cancel(
        self, order: Document, reason: str | None
    ) -> tuple[Document | None, list[Problem]]:
        """Cancel an unpaid order; cancelling a cancelled order returns it unchanged."""
        context.bind(branch=order["branch"], order_id=str(order["_id"]))
        if reason is not None and (why := CANCEL_REASON.problem(reason, "reason")) is not None:
            return None, [Problem(("reason",), why, UserErrorCode.INVALID_REASON)]
        if order["status"] == OrderStatus.CANCELLED.value:
            return order, []
        if self.close_attempts is not None and order["status"] == OrderStatus.PENDING_PAYMENT.value:
            # Best effort: an attempt paid in spite of this is refunded automatically.
            await self.close_attempts(order)
        moved = await self.store.orders.move(
            order["_id"], OrderStatus.CANCELLED, self.clock(), reason=reason or "cancelled"
        )
        if moved is None:
            current = await self.store.orders.get(order["_id"])
            if current is not None and current["status"] == OrderStatus.CANCELLED.value:
                return current, []
            status = current["status"] if current else order["status"]
            return None, [
                Problem(
                    ("orderId",),
                    f"only an order awaiting payment can be cancelled; this one is {status}",
                    UserErrorCode.ORDER_NOT_CANCELLABLE,
                )
            ]
        return moved, []

    async def expire_due(self, batch: int = 200) -> int:
        """Move unpaid orders past ``expiresAt`` to EXPIRED; returns how many moved."""
        now = self.clock()
        moved = 0
        for due in await self.store.orders.due_for_expiry(now, batch):
            if (
                self.close_attempts is not None
                and not await self.close_attempts(due)
                and now < due["expiresAt"] + CLOSE_GRACE
            ):
                log.warning("order %s: open attempts not closed yet; expiry retried", due["_id"])
                continue
            order = await self.store.orders.move(
                due["_id"],
                OrderStatus.EXPIRED,
                now,
                reason="payment time ran out",
                extra_guard={"expiresAt": {"$lte": now}},
            )
            if order is not None:
                moved += 1
                self._emit("order_expired", order)
        return moved

    def _emit(self, hook: str, order: Mapping[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(hook, order)
        except Exception:
            log.exception("a %s listener failed; the order is stored regardless", hook)
