"""What the notify tests of every provider share: an open attempt and the order's state.

Each ``tests/providers/<provider>/test_notify.py`` starts a real branchpay,
opens a payment attempt through GraphQL and then posts notifications to
``/notify/<provider>/<branch>``. The order is the one the schema tests build
(``tests/schema/test_mutation.py``): one 59-yuan plan of branch ``zj``.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import RunningService
from tests.schema.test_mutation import CREATE, offering_id, order_input

START = """
mutation($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { id status outTradeNo }
    action { kind url qrCode formHtml appPayload }
    userErrors { code message }
  }
}
"""
ORDER = """
query($id: ID!) {
  order(id: $id) { status payments { status outTradeNo providerTradeNo flagged } }
}
"""
PLAN_FEN = 5900


def started_attempt(
    service: RunningService, provider: str, method: str = "QR_CODE"
) -> tuple[str, str, dict[str, Any]]:
    """A 59-yuan order of branch zj with an attempt at ``provider``: id, out_trade_no, action."""
    created = service.client.data(
        CREATE,
        {
            "input": order_input(
                items=[{"offeringId": offering_id("zj-plan-59"), "quantity": 1}],
                customer={"name": "Li Lei", "phone": "13912345678"},
                idempotencyKey=f"order-{uuid.uuid4().hex}",
            )
        },
    )["createOrder"]
    assert created["userErrors"] == [], created
    order = created["order"]
    assert order["total"]["amountFen"] == PLAN_FEN
    started = service.client.data(
        START, {"input": {"orderId": order["id"], "provider": provider, "method": method}}
    )["startPayment"]
    assert started["userErrors"] == [], started
    return order["id"], started["payment"]["outTradeNo"], started["action"]


def order_state(service: RunningService, order_id: str) -> dict[str, Any]:
    """The order's status and its attempts, as a partner sees them."""
    state: dict[str, Any] = service.client.data(ORDER, {"id": order_id})["order"]
    return state


def post_notification(
    service: RunningService,
    provider: str,
    body: str | bytes,
    *,
    branch: str = "zj",
    content_type: str = "application/x-www-form-urlencoded; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{service.url}/notify/{provider}/{branch}",
        content=body.encode() if isinstance(body, str) else body,
        headers={"content-type": content_type, **(headers or {})},
        timeout=30.0,
    )
