"""What the counter-sale tests share, against the sandbox and each platform's simulator.

A clerk's ``startPayment`` with ``PAYMENT_CODE`` and the scanned code, the order as a
partner then sees it, and the core's counter pace shortened for a test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from tests.conftest import GraphQLClient
from tests.schema.test_mutation import CREATE, offering_id, order_input

# Fast enough for a test: a query every 0.2 s, reversed after 1.5 s unknown.
COUNTER = {
    "counter_poll_seconds": 0.2,
    "counter_wait_seconds": 1.5,
    "counter_reverse_retry_seconds": 0.2,
    "counter_tick_seconds": 0.05,
}
START = """
mutation($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { id status provider method outTradeNo reversal amount { amountFen } }
    action { kind }
    userErrors { field message code }
  }
}
"""
ORDER = """
query($id: ID!) {
  order(id: $id) {
    status
    payments {
      status outTradeNo reversal providerTradeNo
      refunds { outRefundNo status amount { amountFen } }
    }
  }
}
"""


class Service(Protocol):
    client: GraphQLClient


def new_order(service: Service, offering: str = "zj-plan-59") -> str:
    """A new order of one 59-yuan plan of branch zj; its id."""
    created = service.client.data(
        CREATE,
        {
            "input": order_input(
                items=[{"offeringId": offering_id(offering), "quantity": 1}],
                customer={"name": "Li Lei", "phone": "13912345678"},
                idempotencyKey=f"order-{uuid.uuid4().hex}",
            )
        },
    )["createOrder"]
    assert created["userErrors"] == [], created
    order_id: str = created["order"]["id"]
    return order_id


def charge(service: Service, order_id: str, auth_code: str | None, **extra: Any) -> Any:
    """The clerk's ``startPayment`` with the scanned code (no provider unless ``extra``)."""
    payload = {"orderId": order_id, "method": "PAYMENT_CODE", **extra}
    if auth_code is not None:
        payload["authCode"] = auth_code
    return service.client.data(START, {"input": payload})["startPayment"]


def charged(service: Service, order_id: str, auth_code: str) -> dict[str, Any]:
    """``charge`` that must be taken: no userErrors."""
    result: dict[str, Any] = charge(service, order_id, auth_code)
    assert result["userErrors"] == [], result
    return result


def order_of(service: Service, order_id: str) -> dict[str, Any]:
    order: dict[str, Any] = service.client.data(ORDER, {"id": order_id})["order"]
    return order


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out waiting")
