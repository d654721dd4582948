"""Partner webhooks, the pure part: event types, which change is which event, the retry rules.

No I/O. The store records an event in the same conditional write as the change
that causes it (an ``outbox`` entry on the order or payment document); the
webhook service turns each entry into one delivery per subscribed endpoint.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

from api.domain.order import OrderStatus
from api.domain.payment import PaymentStatus, RefundStatus

Document = dict[str, Any]


class WebhookEventType(enum.StrEnum):
    ORDER_CREATED = "order.created"
    ORDER_PAID = "order.paid"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_EXPIRED = "order.expired"
    ORDER_REFUNDED = "order.refunded"
    ORDER_PARTIALLY_REFUNDED = "order.partially_refunded"
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_CLOSED = "payment.closed"
    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"


class DeliveryStatus(enum.StrEnum):
    PENDING = "PENDING"  # due at nextAttemptAt (or being sent under a lease)
    SUCCEEDED = "SUCCEEDED"  # the receiver answered 2xx
    FAILED = "FAILED"  # a final answer (4xx other than 429, 3xx) or the schedule ran out


ORDER_EVENTS: Mapping[OrderStatus, WebhookEventType] = {
    OrderStatus.PENDING_PAYMENT: WebhookEventType.ORDER_CREATED,
    OrderStatus.PAID: WebhookEventType.ORDER_PAID,
    OrderStatus.CANCELLED: WebhookEventType.ORDER_CANCELLED,
    OrderStatus.EXPIRED: WebhookEventType.ORDER_EXPIRED,
    OrderStatus.REFUNDED: WebhookEventType.ORDER_REFUNDED,
    OrderStatus.PARTIALLY_REFUNDED: WebhookEventType.ORDER_PARTIALLY_REFUNDED,
}

PAYMENT_EVENTS: Mapping[PaymentStatus, WebhookEventType] = {
    PaymentStatus.SUCCEEDED: WebhookEventType.PAYMENT_SUCCEEDED,
    PaymentStatus.FAILED: WebhookEventType.PAYMENT_FAILED,
    PaymentStatus.CLOSED: WebhookEventType.PAYMENT_CLOSED,
}

PAID_STATUSES = frozenset(
    {
        PaymentStatus.SUCCEEDED.value,
        PaymentStatus.PARTIALLY_REFUNDED.value,
        PaymentStatus.REFUNDED.value,
    }
)

REFUND_EVENTS: Mapping[RefundStatus, WebhookEventType] = {
    RefundStatus.SUCCEEDED: WebhookEventType.REFUND_SUCCEEDED,
    RefundStatus.FAILED: WebhookEventType.REFUND_FAILED,
}

# The pauses after the first, second, ... failed try: 8 tries over 27 h 35 min.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
JITTER = 0.1  # each pause is stretched by up to 10 %, so retries of many deliveries spread out
# An endpoint whose every try failed for this long (no success in between) is disabled.
DISABLE_AFTER = timedelta(days=3)
# A rotated-out secret keeps signing beside the new one for this long.
ROTATION_OVERLAP = timedelta(hours=24)
SECRET_PREFIX = "whsec_"


def event_entry(kind: WebhookEventType, now: datetime, **subject: str) -> Document:
    """An outbox entry: what changed, written by the very write that changes it."""
    return {"id": f"evt_{ObjectId()}", "type": kind.value, "at": now, **subject}


def order_entry(status: OrderStatus, now: datetime) -> Document | None:
    kind = ORDER_EVENTS.get(status)
    return None if kind is None else event_entry(kind, now)


def payment_entries(
    previous: Mapping[str, Any], fields: Mapping[str, Any], now: datetime
) -> list[Document]:
    """The events of one payment write: its status moving, and each refund line settling."""
    entries: list[Document] = []
    status, before_status = fields.get("status"), previous.get("status")
    if status is not None and status != before_status:
        kind = PAYMENT_EVENTS.get(PaymentStatus(status))
        if status in PAID_STATUSES and before_status not in PAID_STATUSES:
            kind = WebhookEventType.PAYMENT_SUCCEEDED  # paid, even if refunds were reported first
        if kind is not None:
            entries.append(event_entry(kind, now))
    before = {r["outRefundNo"]: r.get("status") for r in previous.get("refunds", [])}
    for refund in fields.get("refunds", ()):
        new = refund.get("status")
        if new == before.get(refund["outRefundNo"]):
            continue
        kind = REFUND_EVENTS.get(RefundStatus(new))
        if kind is not None:
            entries.append(event_entry(kind, now, refund=refund["outRefundNo"]))
    return entries


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When the next try of a delivery is due; ``scale`` shortens the clock for tests."""

    schedule: Sequence[timedelta] = RETRY_SCHEDULE
    jitter: float = JITTER
    scale: float = 1.0

    def next_try(
        self, tries: int, now: datetime, rng: random.Random | None = None
    ) -> datetime | None:
        """After ``tries`` failed tries: when to try again, or None when the schedule ran out."""
        if tries < 1 or tries > len(self.schedule):
            return None
        pause = self.schedule[tries - 1].total_seconds() * self.scale
        stretch = 1.0 + (rng or random).uniform(0.0, self.jitter)
        return now + timedelta(seconds=pause * stretch)

    @property
    def max_tries(self) -> int:
        return len(self.schedule) + 1


def is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: ``whsec_`` and base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` and base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` (Standard Webhooks)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    secrets_in_force: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> str:
    """The ``webhook-signature`` value: one signature per secret in force, space separated."""
    return " ".join(signature(s, message_id, timestamp, body) for s in secrets_in_force)
