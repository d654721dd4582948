"""Expiry closes open attempts first; a success that arrives after expiry is refunded.

The service's expiry job runs every 0.2 s here; a test moves an order's
``expiresAt`` into the past and awaits the outcome on the order's subscription.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.services.conftest import CANCEL_ORDER, PayService, object_id, order_feed


def expire_now(service: PayService, order: dict[str, Any]) -> None:
    service.db.orders.update_one(
        {"_id": object_id(order["id"])},
        {"$set": {"expiresAt": datetime.now(UTC) - timedelta(seconds=1)}},
    )


async def test_open_attempts_are_closed_at_the_platform_before_the_order_expires(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(expiry_interval_seconds=0.2)
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]

    async with order_feed(service.client, order["id"]) as feed:
        await feed.next()
        expire_now(service, order)
        assert await feed.statuses_until("EXPIRED") == ["EXPIRED"]

    assert service.gateway.attempts[payment["outTradeNo"]].status == "CLOSED"
    assert service.order(order["id"])["payments"][0]["status"] == "CLOSED"
    assert service.start_payment(order["id"])["userErrors"][0]["code"] == "ORDER_NOT_PAYABLE"


async def test_an_attempt_paid_while_its_notification_is_missing_pays_the_order_instead(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(expiry_interval_seconds=0.2)
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    service.settle(payment["outTradeNo"])  # paid at the platform, not delivered

    async with order_feed(service.client, order["id"]) as feed:
        await feed.next()
        expire_now(service, order)
        # The close is refused (already paid); the query finds the success.
        assert await feed.statuses_until("PAID") == ["PAID"]

    assert service.order(order["id"])["payments"][0]["status"] == "SUCCEEDED"
    assert "EXPIRED" not in [e["status"] for e in service.order_doc(order["id"])["statusHistory"]]


async def test_a_success_that_arrives_after_expiry_is_recorded_and_refunded(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(expiry_interval_seconds=0.2)
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    no = payment["outTradeNo"]
    async with order_feed(service.client, order["id"]) as feed:
        await feed.next()
        expire_now(service, order)
        await feed.statuses_until("EXPIRED")

    # The platform took the payer's money after all (a close that raced the payer).
    service.gateway.attempts[no].status = "SUCCEEDED"
    late = service.event(no, "payment.succeeded", 5900)
    assert service.deliver(late).status_code == 200
    assert service.deliver(late).status_code == 200

    seen = service.order(order["id"])
    assert seen["status"] == "EXPIRED"
    assert seen["payments"][0]["status"] == "REFUNDED"
    assert [r["outRefundNo"] for r in seen["payments"][0]["refunds"]] == [no + "AR"]
    assert service.gateway.attempts[no].refunded_fen == 5900


def test_cancelling_closes_open_attempts_and_a_later_success_is_refunded(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    no = payment["outTradeNo"]

    cancelled = service.client.data(CANCEL_ORDER, {"input": {"orderId": order["id"]}})

    assert cancelled["cancelOrder"]["order"]["status"] == "CANCELLED"
    assert service.gateway.attempts[no].status == "CLOSED"
    assert service.order(order["id"])["payments"][0]["status"] == "CLOSED"
    service.gateway.attempts[no].status = "SUCCEEDED"
    assert service.deliver(service.event(no, "payment.succeeded", 5900)).status_code == 200
    seen = service.order(order["id"])
    assert seen["status"] == "CANCELLED"
    assert seen["payments"][0]["status"] == "REFUNDED"
