"""Partner webhooks end to end: a real branchpay, the sandbox simulator, a receiver on loopback.

Every delivery is verified by the ``standardwebhooks`` package, an independent
implementation of the Standard Webhooks specification.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.services.conftest import (
    PayService,
    Receiver,
    create_endpoint,
    verified,
    webhook_service,
)

ROTATE = """
mutation($id: ID!) {
  rotateWebhookSecret(input: {id: $id}) { secret userErrors { code } }
}
"""
ENDPOINT = """
query($id: ID!, $status: WebhookDeliveryStatus) {
  webhookEndpoint(id: $id) {
    id enabled disabledReason failingSince
    deliveries(first: 50, status: $status) {
      nodes { id eventId eventType status tries nextAttemptAt
              attempts { httpStatus latencyMs response error } }
    }
  }
}
"""
ALL_EVENTS = [
    "order.created",
    "order.paid",
    "order.cancelled",
    "order.expired",
    "order.refunded",
    "order.partially_refunded",
    "payment.succeeded",
    "payment.failed",
    "payment.closed",
    "refund.succeeded",
    "refund.failed",
]


def paid_order(service: PayService) -> tuple[dict[str, Any], dict[str, Any]]:
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    assert service.deliver(service.settle(payment["outTradeNo"])).status_code == 200
    return order, payment


def test_every_event_type_reaches_the_receiver_signed_as_the_spec_says(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments)
    partner = service.client_for("partner", "zj")
    _, secret = create_endpoint(service, partner, receiver.url, ALL_EVENTS, ["zj"])

    order, payment = paid_order(service)
    assert service.refund(payment["id"], 1000)["userErrors"] == []
    rest = service.order(order["id"])["payments"][0]["amount"]["amountFen"] - 1000
    assert service.refund(payment["id"], rest)["userErrors"] == []
    failed = service.create_order()
    failed_payment = service.start_payment(failed["id"])["payment"]
    service.deliver(service.settle(failed_payment["outTradeNo"], "fail"))
    closed = service.create_order()
    closed_payment = service.start_payment(closed["id"])["payment"]
    service.deliver(service.settle(closed_payment["outTradeNo"], "close"))
    cancelled = service.create_order()
    service.client.data(
        "mutation($id: ID!) { cancelOrder(input: {orderId: $id}) { userErrors { code } } }",
        {"id": cancelled["id"]},
    )
    refused, refused_payment = paid_order(service)
    httpx.post(f"{service.gateway_url}/control/faults", json={"status": 400, "count": 1})
    service.refund(refused_payment["id"], 500)

    wanted = set(ALL_EVENTS) - {"order.expired"}  # expiry has a test of its own
    got = receiver.wait_for(lambda r: wanted <= {x.event["type"] for x in r})
    for received in got:
        event = verified(secret, received)
        assert received.headers["webhook-id"] == event["id"]
        assert event["branch"] == "zj" and isinstance(event["version"], int)
        assert event["data"]["order"]["branch"]["code"] == "zj"
        # A partner's key sees masked personal data, and so does its endpoint.
        assert event["data"]["order"]["customer"]["phone"] == "139****5678"
    by_type = {r.event["type"]: r.event for r in got}
    paid = sorted(r.event["data"]["order"]["id"] for r in got if r.event["type"] == "order.paid")
    assert paid == sorted([order["id"], refused["id"]])
    succeeded = {
        r.event["data"]["payment"]["outTradeNo"]
        for r in got
        if r.event["type"] == "payment.succeeded"
    }
    assert succeeded == {payment["outTradeNo"], refused_payment["outTradeNo"]}
    assert by_type["payment.failed"]["data"]["payment"]["status"] == "FAILED"
    assert by_type["payment.closed"]["data"]["payment"]["status"] == "CLOSED"
    assert by_type["order.cancelled"]["data"]["order"]["id"] == cancelled["id"]
    assert by_type["order.refunded"]["data"]["order"]["status"] == "REFUNDED"
    assert by_type["refund.failed"]["data"]["refund"]["status"] == "FAILED"
    assert by_type["refund.succeeded"]["data"]["refund"]["status"] == "SUCCEEDED"
    # Exactly one event per change: no id twice, one order.created per order.
    ids = [r.headers["webhook-id"] for r in got]
    assert len(ids) == len(set(ids))
    created = [r.event["data"]["order"]["id"] for r in got if r.event["type"] == "order.created"]
    assert sorted(created) == sorted(
        {order["id"], failed["id"], closed["id"], cancelled["id"], refused["id"]}
    )


def test_an_expired_order_sends_order_expired(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments, expiry_interval_seconds=0.2)
    create_endpoint(service, service.client, receiver.url, ["order.expired"], ["zj"])
    order = service.create_order()
    service.db.orders.update_one(
        {"_id": service.order_doc(order["id"])["_id"]},
        {"$set": {"expiresAt": datetime.now(UTC) - timedelta(seconds=1)}},
    )
    got = receiver.wait_for(lambda r: len(r) >= 1)
    assert [r.event["type"] for r in got] == ["order.expired"]
    assert got[0].event["data"]["order"]["status"] == "EXPIRED"


def test_a_failing_receiver_is_retried_on_the_schedule_with_the_same_id(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    # The schedule's clock shortened: 5 s, 5 min, 30 min become 5 ms, 300 ms, 1.8 s.
    service = webhook_service(start_payments, webhook_retry_scale=0.001)
    endpoint_id, secret = create_endpoint(
        service, service.client, receiver.url, ["order.created"], ["zj"]
    )
    receiver.answers = [500, 500, 500]
    service.create_order()
    got = receiver.wait_for(lambda r: len(r) >= 4)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    for received in got:
        verified(secret, received)  # each try is signed anew, and verifies
    page = service.client.data(ENDPOINT, {"id": endpoint_id})["webhookEndpoint"]
    (delivery,) = page["deliveries"]["nodes"]
    deadline = time.monotonic() + 10
    # The try is recorded, then the endpoint's failing run is ended: both, eventually.
    while time.monotonic() < deadline and (
        delivery["status"] != "SUCCEEDED" or page["failingSince"] is not None
    ):
        time.sleep(0.1)
        page = service.client.data(ENDPOINT, {"id": endpoint_id})["webhookEndpoint"]
        (delivery,) = page["deliveries"]["nodes"]
    assert delivery["status"] == "SUCCEEDED" and delivery["tries"] == 4
    assert [a["httpStatus"] for a in delivery["attempts"]] == [500, 500, 500, 200]
    assert delivery["attempts"][0]["response"] == "answer 500"
    assert page["failingSince"] is None  # the success ended the failing run
    time.sleep(0.5)
    assert len(receiver.received) == 4, "a delivered event is not sent again"


def test_a_final_answer_ends_the_delivery_as_failed(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments, webhook_retry_scale=0.001)
    endpoint_id, _ = create_endpoint(
        service, service.client, receiver.url, ["order.created"], ["zj"]
    )
    receiver.answers = [410]
    service.create_order()
    receiver.wait_for(lambda r: len(r) >= 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = service.client.data(ENDPOINT, {"id": endpoint_id, "status": "FAILED"})
        nodes = page["webhookEndpoint"]["deliveries"]["nodes"]
        if nodes:
            break
        time.sleep(0.1)
    assert nodes[0]["tries"] == 1 and nodes[0]["nextAttemptAt"] is None
    time.sleep(0.5)
    assert len(receiver.received) == 1
    # The partner fixed its receiver: it asks for the failed deliveries again.
    retried = service.client.data(
        "mutation($id: ID!, $since: DateTime!) {"
        " retryWebhookDeliveries(input: {endpointId: $id, since: $since})"
        " { deliveries userErrors { code } } }",
        {"id": endpoint_id, "since": "2020-01-01T00:00:00Z"},
    )["retryWebhookDeliveries"]
    assert retried == {"deliveries": 1, "userErrors": []}
    first, again = receiver.wait_for(lambda r: len(r) >= 2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    naive = service.client.data(
        "mutation($id: ID!) { retryWebhookDeliveries(input: {endpointId: $id,"
        ' since: "2020-01-01T00:00:00"}) { deliveries userErrors { code } } }',
        {"id": endpoint_id},
    )["retryWebhookDeliveries"]
    assert naive == {"deliveries": 0, "userErrors": [{"code": "INVALID_TIME"}]}


def test_a_rotated_secret_and_the_old_one_both_sign_during_the_overlap(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments)
    endpoint_id, old = create_endpoint(
        service, service.client, receiver.url, ["order.created"], ["zj"]
    )
    rotated = service.client.data(ROTATE, {"id": endpoint_id})["rotateWebhookSecret"]
    new = rotated["secret"]
    assert rotated["userErrors"] == [] and new != old
    service.create_order()
    (received,) = receiver.wait_for(lambda r: len(r) >= 1)
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    assert verified(old, received) == verified(new, received)


def test_an_endpoint_failing_for_three_days_is_disabled_and_audited(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments)
    endpoint_id, _ = create_endpoint(
        service, service.client, receiver.url, ["order.created"], ["zj"]
    )
    # Its tries have failed since four days ago (the three days are not waited for here).
    service.db.webhook_endpoints.update_one(
        {"_id": endpoint_id}, {"$set": {"failingSince": datetime.now(UTC) - timedelta(days=4)}}
    )
    receiver.answers = [503]
    service.create_order()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        endpoint = service.client.data(ENDPOINT, {"id": endpoint_id})["webhookEndpoint"]
        if not endpoint["enabled"]:
            break
        time.sleep(0.1)
    assert endpoint["disabledReason"].startswith("every delivery failed since ")
    audit = service.db.audit_log.find_one({"action": "WEBHOOK_ENDPOINT_DISABLED"})
    assert audit is not None and audit["target"] == endpoint_id and audit["actor"] == "branchpay"
    service.create_order()  # a disabled endpoint is handed no new events
    time.sleep(1.0)
    assert len(receiver.received) == 1


def test_an_event_left_by_a_process_that_died_after_its_write_is_still_delivered(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    from api.domain.order import OrderStatus
    from api.store import Store

    service = webhook_service(start_payments)
    create_endpoint(service, service.client, receiver.url, ["order.cancelled"], ["zj"])
    order = service.create_order()

    async def write_and_die() -> None:
        # Another process's write: its event is on the order, and nobody told this service.
        store = Store.connect(service.mongo_uri, service.db_name)
        moved = await store.orders.move(
            service.order_doc(order["id"])["_id"],
            OrderStatus.CANCELLED,
            datetime.now(UTC),
            reason="cancelled elsewhere",
        )
        assert moved is not None and len(moved["outbox"]) >= 1
        await store.close()

    asyncio.run(write_and_die())
    (received,) = receiver.wait_for(lambda r: len(r) >= 1)
    assert received.event["type"] == "order.cancelled"
    assert received.event["data"]["order"]["id"] == order["id"]
    assert service.order_doc(order["id"]).get("outbox") == []


PAGE = """
query($id: ID!, $after: String) {
  webhookEndpoint(id: $id) {
    deliveries(first: 1, after: $after) { nodes { eventType } hasNextPage endCursor }
  }
}
"""


def test_deliveries_page_newest_first_and_refuse_a_malformed_cursor(
    start_payments: Callable[..., PayService], receiver: Receiver
) -> None:
    service = webhook_service(start_payments)
    endpoint_id, _ = create_endpoint(
        service, service.client, receiver.url, ["order.created", "order.cancelled"], ["zj"]
    )
    order = service.create_order()
    receiver.wait_for(lambda r: len(r) >= 1)
    service.client.data(
        "mutation($id: ID!) { cancelOrder(input: {orderId: $id}) { userErrors { code } } }",
        {"id": order["id"]},
    )
    receiver.wait_for(lambda r: len(r) >= 2)
    first = service.client.data(PAGE, {"id": endpoint_id})["webhookEndpoint"]["deliveries"]
    assert first["nodes"] == [{"eventType": "order.cancelled"}] and first["hasNextPage"]
    second = service.client.data(PAGE, {"id": endpoint_id, "after": first["endCursor"]})
    page = second["webhookEndpoint"]["deliveries"]
    assert page["nodes"] == [{"eventType": "order.created"}] and not page["hasNextPage"]
    for bad in ("nope", "0" * 23, "z" * 24, "a" * 2000):
        body = service.client.post(PAGE, {"id": endpoint_id, "after": bad})
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", bad
