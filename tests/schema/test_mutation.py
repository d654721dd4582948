"""createOrder and cancelOrder over real HTTP: pricing, idempotency, refusals that write nothing."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import RunningService

CREATE = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) {
    order { id status total { amountFen currency } items { title quantity unitPrice { amountFen }
            options { name value } subtotal { amountFen } }
            customer { name phone } branch { code } createdAt expiresAt }
    userErrors { field message code }
  }
}
"""
CANCEL = """
mutation Cancel($input: CancelOrderInput!) {
  cancelOrder(input: $input) { order { id status } userErrors { field message code } }
}
"""


def offering_id(key: str) -> str:
    return base64.urlsafe_b64encode(f"Offering:{key}".encode()).decode().rstrip("=")


def order_input(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "branch": "zj",
        "items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 2}],
        "customer": {"name": "Wang Fang", "phone": "+86 138 1234 5678"},
        "idempotencyKey": "partner-a-0001",
    }
    value.update(overrides)
    return value


def create(service: RunningService, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = service.client.data(CREATE, {"input": order_input(**overrides)})[
        "createOrder"
    ]
    return payload


def test_create_order_prices_on_the_server(start_service: Any) -> None:
    service: RunningService = start_service()
    handset = {
        "offeringId": offering_id("zj-handset-iphone17"),
        "quantity": 1,
        "options": [
            {"name": "colour", "value": "Lavender"},
            {"name": "storage", "value": "1TB"},
            {"name": "contract", "value": "none"},
        ],
    }
    payload = create(
        service, items=[{"offeringId": offering_id("zj-plan-59"), "quantity": 2}, handset]
    )
    assert payload["userErrors"] == []
    order = payload["order"]
    assert order["status"] == "PENDING_PAYMENT"
    assert order["total"] == {"amountFen": 2 * 5900 + 599900 + 200000, "currency": "CNY"}
    assert [i["subtotal"]["amountFen"] for i in order["items"]] == [11800, 799900]
    assert order["customer"] == {"name": "Wang Fang", "phone": "13812345678"}
    assert order["branch"] == {"code": "zj"}
    assert order["expiresAt"] > order["createdAt"]
    assert service.db.orders.count_documents({}) == 1


def test_a_repeated_idempotency_key_returns_the_first_order(start_service: Any) -> None:
    service: RunningService = start_service()
    first = create(service)["order"]
    again = create(service)["order"]
    assert again["id"] == first["id"]
    other_branch = create(service, branch="bj", items=[{"offeringId": offering_id("bj-plan-59")}])
    assert other_branch["order"]["id"] != first["id"]
    assert service.db.orders.count_documents({}) == 2


def test_concurrent_repeats_create_one_order(start_service: Any) -> None:
    service: RunningService = start_service()
    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(
            pool.map(
                lambda _: create(service, idempotencyKey="burst-key-0001")["order"]["id"], range(32)
            )
        )
    assert len(set(ids)) == 1
    assert service.db.orders.count_documents({"idempotencyKey": "burst-key-0001"}) == 1


def test_reusing_a_key_for_a_different_order_is_refused(start_service: Any) -> None:
    service: RunningService = start_service()
    create(service)
    payload = create(service, items=[{"offeringId": offering_id("zj-plan-129"), "quantity": 1}])
    assert payload["order"] is None
    assert [e["code"] for e in payload["userErrors"]] == ["IDEMPOTENCY_KEY_REUSED"]
    assert service.db.orders.count_documents({}) == 1


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"branch": "xx"}, "UNKNOWN_BRANCH", ["branch"]),
        (
            {"items": [{"offeringId": offering_id("zj-plan-1")}]},
            "UNKNOWN_OFFERING",
            ["items", "0", "offeringId"],
        ),
        (
            {"items": [{"offeringId": offering_id("bj-plan-59")}]},
            "OFFERING_OF_OTHER_BRANCH",
            ["items", "0", "offeringId"],
        ),
        (
            {"items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 0}]},
            "INVALID_QUANTITY",
            ["items", "0", "quantity"],
        ),
        (
            {"items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 100}]},
            "INVALID_QUANTITY",
            ["items", "0", "quantity"],
        ),
        ({"items": []}, "EMPTY_ORDER", ["items"]),
        ({"customer": {"name": "Li", "phone": "12345"}}, "INVALID_PHONE", ["customer", "phone"]),
        ({"items": [{"offeringId": "not-an-id"}]}, "INVALID_ID", ["items", "0", "offeringId"]),
        ({"idempotencyKey": "x"}, "INVALID_IDEMPOTENCY_KEY", ["idempotencyKey"]),
        (
            {
                "items": [
                    {
                        "offeringId": offering_id("zj-handset-mate70"),
                        "options": [{"name": "colour", "value": "Obsidian Black"}],
                    }
                ]
            },
            "MISSING_OPTION",
            ["items", "0", "options", "storage"],
        ),
    ],
)
def test_bad_input_is_a_user_error_and_writes_nothing(
    start_service: Any, overrides: dict[str, Any], code: str, field: list[str]
) -> None:
    service: RunningService = start_service()
    payload = create(service, **overrides)
    assert payload["order"] is None
    assert {"code": code, "field": field} in [
        {"code": e["code"], "field": e["field"]} for e in payload["userErrors"]
    ]
    assert all(e["message"] for e in payload["userErrors"])
    assert service.db.orders.count_documents({}) == 0


def test_cancel_only_from_pending_payment(start_service: Any) -> None:
    service: RunningService = start_service()
    order = create(service)["order"]
    cancelled = service.client.data(
        CANCEL, {"input": {"orderId": order["id"], "reason": "changed mind"}}
    )
    assert cancelled["cancelOrder"] == {
        "order": {"id": order["id"], "status": "CANCELLED"},
        "userErrors": [],
    }
    again = service.client.data(CANCEL, {"input": {"orderId": order["id"]}})
    assert again["cancelOrder"]["order"]["status"] == "CANCELLED"

    paid = create(service, idempotencyKey="partner-a-0002")["order"]
    service.db.orders.update_one({"idempotencyKey": "partner-a-0002"}, {"$set": {"status": "PAID"}})
    refused = service.client.data(CANCEL, {"input": {"orderId": paid["id"]}})["cancelOrder"]
    assert refused["order"] is None
    assert [e["code"] for e in refused["userErrors"]] == ["ORDER_NOT_CANCELLABLE"]
    assert service.db.orders.find_one({"idempotencyKey": "partner-a-0002"})["status"] == "PAID"


def test_cancel_of_unknown_or_malformed_ids(start_service: Any) -> None:
    service: RunningService = start_service()
    missing = base64.urlsafe_b64encode(b"Order:0123456789abcdef01234567").decode().rstrip("=")
    for order_id, code in ((missing, "ORDER_NOT_FOUND"), ("###", "INVALID_ID")):
        payload = service.client.data(CANCEL, {"input": {"orderId": order_id}})["cancelOrder"]
        assert payload["order"] is None
        assert [e["code"] for e in payload["userErrors"]] == [code]


def test_unpaid_orders_expire(start_service: Any) -> None:
    service: RunningService = start_service(expiry_interval_seconds=0.1)
    order = create(service)["order"]
    kept = create(service, idempotencyKey="partner-a-0003")["order"]
    # Due already: due a millisecond before it was created. (A literal, not a
    # pipeline update with date arithmetic, which SecantusDB's Rust server lacks.)
    stored = service.db.orders.find_one({"idempotencyKey": "partner-a-0001"})
    assert stored is not None
    service.db.orders.update_one(
        {"_id": stored["_id"]},
        {"$set": {"expiresAt": stored["createdAt"] - timedelta(milliseconds=1)}},
    )
    query = "query($id: ID!) { order(id: $id) { status } }"
    status = None
    for _ in range(100):
        status = service.client.data(query, {"id": order["id"]})["order"]["status"]
        if status == "EXPIRED":
            break
        time.sleep(0.05)
    assert status == "EXPIRED"
    assert service.client.data(query, {"id": kept["id"]})["order"]["status"] == "PENDING_PAYMENT"
    refused = service.client.data(CANCEL, {"input": {"orderId": order["id"]}})["cancelOrder"]
    assert [e["code"] for e in refused["userErrors"]] == ["ORDER_NOT_CANCELLABLE"]
