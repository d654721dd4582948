"""orderEvents over graphql-transport-ws, with changes written by a second server process.

Process A is the in-test service; process B is a separate `branchpay serve` on the
same store. Whatever B writes reaches A's subscribers through the change stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.services.conftest import (
    PayService,
    SecondProcess,
    order_feed,
)

CANCEL = """
mutation($input: CancelOrderInput!) {
  cancelOrder(input: $input) { order { status } userErrors { code } }
}
"""
START = """
mutation($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { outTradeNo } action { url } userErrors { code }
  }
}
"""


async def test_a_change_written_by_another_process_reaches_the_subscriber(
    start_payments: Callable[..., PayService],
    second_process: Callable[[PayService], SecondProcess],
) -> None:
    a = start_payments()
    b = second_process(a)
    order = a.create_order()

    async with order_feed(a.client, order["id"]) as feed:
        first = await feed.next()
        assert first is not None and first["status"] == "PENDING_PAYMENT"
        cancelled = b.client.data(
            CANCEL, {"input": {"orderId": order["id"], "reason": "changed mind"}}
        )
        assert cancelled["cancelOrder"]["order"]["status"] == "CANCELLED"
        event = await feed.next()
        assert event is not None
        assert event["status"] == "CANCELLED" and event["reason"] == "changed mind"
        assert await feed.next() is None


async def test_a_payment_through_the_other_process_is_seen_live_and_late_subscribers_get_the_state(
    start_payments: Callable[..., PayService],
    second_process: Callable[[PayService], SecondProcess],
) -> None:
    a = start_payments()
    b = second_process(a)
    order = a.create_order()

    async with order_feed(a.client, order["id"]) as feed:
        pending = await feed.next()
        assert pending is not None and pending["status"] == "PENDING_PAYMENT"
        assert pending["order"]["payments"] == []
        # B opens the attempt, so the simulator notifies B, and B writes PAID.
        started = b.client.data(
            START, {"input": {"orderId": order["id"], "provider": "sandbox", "method": "WAP"}}
        )["startPayment"]
        assert started["userErrors"] == []
        attempt = a.gateway.attempts[started["payment"]["outTradeNo"]]
        assert attempt.notify_url.startswith(b.url)
        paid = httpx.post(started["action"]["url"], data={"outcome": "success"})
        assert paid.status_code == 200
        event = await feed.next()
        assert event is not None and event["status"] == "PAID"
        # Read afresh for the event, not from what the connection saw before.
        assert event["order"]["payments"] == [{"status": "SUCCEEDED"}]

    async with order_feed(b.client, order["id"]) as late:
        event = await late.next()
        assert event is not None and event["status"] == "PAID"
        assert event["order"]["status"] == "PAID"


async def test_the_same_notification_to_two_processes_at_once_is_applied_once(
    start_payments: Callable[..., PayService],
    second_process: Callable[[PayService], SecondProcess],
) -> None:
    a = start_payments()
    b = second_process(a)
    order = a.create_order()
    payment = a.start_payment(order["id"])["payment"]
    notification = a.settle(payment["outTradeNo"])

    async with httpx.AsyncClient(timeout=30.0) as http:
        replies = await asyncio.gather(
            *(
                http.post(
                    f"{url}/notify/sandbox/zj",
                    content=notification["body"].encode(),
                    headers=notification["headers"],
                )
                for _ in range(10)
                for url in (a.url, b.url)
            )
        )

    assert [r.status_code for r in replies] == [200] * 20
    assert a.db.payment_events.count_documents({}) == 1
    history = a.order_doc(order["id"])["statusHistory"]
    assert [entry["status"] for entry in history] == ["PENDING_PAYMENT", "PAID"]


@pytest.mark.parametrize(
    ("order_id", "message", "code"),
    [
        # Order:000000000000000000000000
        ("T3JkZXI6MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAw", "no such order", "NOT_FOUND"),
        ("not-an-id", "malformed ID 'not-an-id'", "BAD_USER_INPUT"),
    ],
)
async def test_a_subscription_to_a_missing_order_ends_with_a_coded_error(
    start_payments: Callable[..., PayService], order_id: str, message: str, code: str
) -> None:
    a = start_payments()
    async with order_feed(a.client, order_id) as feed:
        reply = await feed.ws.receive_json(timeout=10)
    assert reply["type"] == "next"
    assert reply["payload"]["errors"] == [{"message": message, "extensions": {"code": code}}]


async def test_a_disconnect_closes_the_change_stream(
    start_payments: Callable[..., PayService],
) -> None:
    a = start_payments()
    order = a.create_order()
    async with order_feed(a.client, order["id"]) as feed:
        assert (await feed.next() or {}).get("status") == "PENDING_PAYMENT"
        assert "killCursors" not in a.commands
    deadline = asyncio.get_running_loop().time() + 10
    # The server closes the stream in its own thread; its only trace is the killCursors command.
    while "killCursors" not in a.commands:
        assert asyncio.get_running_loop().time() < deadline, "the change stream stayed open"
        await asyncio.sleep(0.05)
