"""orderEvents over graphql-transport-ws, with changes written by a second server process.

Process A is the in-test service; process B is a separate `branchpay serve` on the
same store. Whatever B writes reaches A's subscribers through the change stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from pymongo import UpdateOne, monitoring

from tests.services.conftest import (
    PayService,
    SecondProcess,
    object_id,
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


class Streams(monitoring.CommandListener):
    """The change streams the app opens (aggregates starting with $changeStream), by collection."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pipeline = event.command.get("pipeline") or [{}]
        if event.command_name == "aggregate" and "$changeStream" in pipeline[0]:
            self.opened.append(event.command["aggregate"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def open_cursors(service: PayService) -> int:
    """The store's own count of its open cursors (serverStatus metrics.cursor.open.total)."""
    status = service.db.client.admin.command("serverStatus")
    return int(status["metrics"]["cursor"]["open"]["total"])


LIVE = "subscription($id: ID!) { orderEvents(orderId: $id) { status } }"
QUIET = {"webhook_delivery": False, "webhook_poll_seconds": 3600, "expiry_interval_seconds": 3600}


async def test_a_thousand_subscriptions_on_one_process_hold_one_server_cursor(
    start_payments: Callable[..., PayService],
) -> None:
    streams = Streams()
    # A budget refilled slower than the suite's default keeps the key's bucket in the store
    # for the whole test (a bucket full again expires at once: api/store/rate_limits.py).
    a = start_payments(
        listeners=(streams,),
        ws_max_subscriptions_per_key=1000,
        rate_limit_per_second=1000.0,
        **QUIET,
    )
    orders = [a.create_order()["id"] for _ in range(10)]
    # Before any subscription: the keys' stream (the key cache) is the only one open.
    before = min(open_cursors(a) for _ in range(3))
    sockets, per_socket = 50, 20  # ws_max_operations_per_connection is 20
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=60.0))
        opened = []
        for _ in range(sockets):
            ws = await stack.enter_async_context(
                aconnect_ws(f"{a.url}/graphql", http, subprotocols=["graphql-transport-ws"])
            )
            await ws.send_json(
                {"type": "connection_init", "payload": {"Authorization": f"Bearer {a.client.key}"}}
            )
            assert (await ws.receive_json(timeout=30))["type"] == "connection_ack"
            opened.append(ws)
        # Socket after socket, so that 1,000 first reads do not queue for the pool at once.
        firsts: list[str] = []
        for n, ws in enumerate(opened):
            for op in range(per_socket):
                order_id = orders[(n * per_socket + op) % len(orders)]
                await ws.send_json(
                    {
                        "id": f"{op}:{order_id}",
                        "type": "subscribe",
                        "payload": {"query": LIVE, "variables": {"id": order_id}},
                    }
                )
            for _ in range(per_socket):
                message = await ws.receive_json(timeout=60)
                assert message["type"] == "next" and not message["payload"].get("errors"), message
                firsts.append(message["payload"]["data"]["orderEvents"]["status"])
        assert firsts == ["PENDING_PAYMENT"] * 1000
        assert streams.opened.count("orders") == 1
        assert min(open_cursors(a) for _ in range(3)) == before + 1
        print(f"\n1,000 subscriptions: {before} open cursors before, {before + 1} with them")

        # A change reaches the 100 subscribers of its order, and only them.
        cancelled = orders[3]
        done = a.client.data(CANCEL, {"input": {"orderId": cancelled, "reason": "changed mind"}})
        assert done["cancelOrder"]["order"]["status"] == "CANCELLED"

        async def until_complete(ws: AsyncWebSocketSession) -> list[tuple[str, str]]:
            # Each socket follows every order twice.
            got: list[tuple[str, str]] = []
            while len([kind for kind, _ in got if kind == "complete"]) < 2:
                message = await ws.receive_json(timeout=60)
                got.append((message["type"], message["id"]))
            return got

        for ws in opened:
            received = await until_complete(ws)
            assert all(op_id.endswith(cancelled) for _, op_id in received), received
            assert sorted(kind for kind, _ in received) == ["complete", "complete", "next", "next"]


async def test_a_subscriber_that_falls_behind_is_ended_with_a_coded_error(
    start_payments: Callable[..., PayService],
) -> None:
    a = start_payments(ws_subscription_queue_events=1, **QUIET)
    order = a.create_order()
    async with order_feed(a.client, order["id"]) as feed:
        first = await feed.next()
        assert first is not None and first["status"] == "PENDING_PAYMENT"
        # Another process writes to the order in bursts of one bulk write each:
        # the stream hands the process a batch of changes at once, more than a
        # queue of one holds. On a loaded machine the stream may still take a
        # burst change by change and keep up, so a few bursts are allowed; a hub
        # that never drops a subscriber fails here.
        order_id = object_id(order["id"])
        message = None
        for burst in range(5):
            a.db.orders.bulk_write(
                [
                    UpdateOne({"_id": order_id}, {"$set": {"touched": burst * 200 + n}})
                    for n in range(200)
                ]
            )
            with contextlib.suppress(TimeoutError):
                message = await feed.ws.receive_json(timeout=10)
                break
        assert message is not None, "five bursts of 200 changes never overflowed a queue of 1"
        assert message["type"] == "next", message
        (error,) = message["payload"]["errors"]
        assert error["extensions"] == {"code": "SUBSCRIBER_TOO_SLOW"}
        assert "fell 1 changes behind" in error["message"]
        assert (await feed.ws.receive_json(timeout=10))["type"] == "complete"
    # The process keeps serving subscriptions.
    async with order_feed(a.client, order["id"]) as again:
        event = await again.next()
        assert event is not None and event["status"] == "PENDING_PAYMENT"
