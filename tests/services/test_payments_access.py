"""Keys and roles on the payment flow, the audit of refunds, and no secret in logs or answers."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, aconnect_ws

from tests.conftest import GraphQLClient
from tests.services.conftest import PayService, order_feed

REFUND = """
mutation($input: RefundPaymentInput!) {
  refundPayment(input: $input) { refund { amount { amountFen } } userErrors { code } }
}
"""
AUDIT = "{ auditLog { entries { actor action target branch detail } } }"


def paid_payment(service: PayService, branch: str = "zj") -> dict[str, Any]:
    order = service.create_order(branch=branch, offering=f"{branch}-plan-59")
    payment = service.start_payment(order["id"])["payment"]
    assert service.deliver(service.settle(payment["outTradeNo"]), branch=branch).status_code == 200
    assert service.order(order["id"])["status"] == "PAID"
    return {"order": order, "payment": payment}


def refund_input(payment_id: str, key: str, amount_fen: int = 100) -> dict[str, Any]:
    return {"input": {"paymentId": payment_id, "amountFen": amount_fen, "idempotencyKey": key}}


def test_refunds_need_a_branch_admin_of_the_branch_and_are_audited(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    paid = paid_payment(service)
    payment_id = paid["payment"]["id"]
    partner = service.client_for("partner", "zj")
    beijing_admin = service.client_for("branch_admin", "bj")
    zhejiang_admin = service.client_for("branch_admin", "zj")

    assert partner.error_codes(REFUND, refund_input(payment_id, "refund-role-0001")) == [
        "FORBIDDEN"
    ]
    elsewhere = beijing_admin.data(REFUND, refund_input(payment_id, "refund-role-0002"))
    assert elsewhere["refundPayment"] == {
        "refund": None,
        "userErrors": [{"code": "PAYMENT_NOT_FOUND"}],
    }
    done = zhejiang_admin.data(REFUND, refund_input(payment_id, "refund-role-0003"))
    assert done["refundPayment"]["refund"] == {"amount": {"amountFen": 100}}
    again = zhejiang_admin.data(REFUND, refund_input(payment_id, "refund-role-0003"))
    assert again["refundPayment"]["refund"] == {"amount": {"amountFen": 100}}

    entries = service.client.data(AUDIT)["auditLog"]["entries"]
    refunds = [e for e in entries if e["action"] == "REFUND_ISSUED"]
    assert len(refunds) == 1  # the repeat with the same key is not a second refund
    assert refunds[0]["branch"] == "zj" and refunds[0]["detail"]["amountFen"] == 100
    assert refunds[0]["actor"] == service.key_name(zhejiang_admin)
    # A branch admin reads its branches' entries: Zhejiang's sees the refund, Beijing's not.
    own = zhejiang_admin.data(AUDIT)["auditLog"]["entries"]
    assert [e["target"] for e in own if e["action"] == "REFUND_ISSUED"] == [refunds[0]["target"]]
    assert all(e["branch"] == "zj" for e in own)
    assert beijing_admin.data(AUDIT)["auditLog"]["entries"] == []
    assert partner.error_codes(AUDIT) == ["FORBIDDEN"]


async def test_subscriptions_need_a_key_and_stay_within_its_branches(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order(branch="bj", offering="bj-plan-59")
    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        aconnect_ws(f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]) as ws,
    ):
        await ws.send_json({"type": "connection_init", "payload": {}})
        with pytest.raises(WebSocketDisconnect) as closed:
            await ws.receive_json(timeout=10)
        assert closed.value.code == 4403

    missing = base64.urlsafe_b64encode(b"Order:0123456789abcdef01234567").decode().rstrip("=")
    partner = service.client_for("partner", "zj")
    answers = []
    for order_id in (order["id"], missing):
        async with order_feed(partner, order_id) as feed:
            message = await feed.ws.receive_json(timeout=10)
            assert message["type"] == "next"
            answers.append(message["payload"]["errors"][0]["extensions"]["code"])
    assert answers == ["NOT_FOUND", "NOT_FOUND"]


def test_no_secret_or_personal_data_reaches_logs_or_answers(
    start_payments: Callable[..., PayService], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = start_payments()
    partner = service.client_for("partner", "zj")
    admin = service.client_for("branch_admin", "zj")
    answers: list[str] = []

    def ask(client: GraphQLClient, query: str, variables: dict[str, Any] | None = None) -> Any:
        response = client.http.post("/graphql", json={"query": query, "variables": variables or {}})
        answers.append(response.text)
        return response.json()

    phone, id_card = "13987654321", "11010519491231002X"
    created = ask(
        partner,
        """mutation($input: CreateOrderInput!) { createOrder(input: $input) { order { id } } }""",
        {
            "input": {
                "branch": "zj",
                "items": [
                    {
                        "offeringId": base64.urlsafe_b64encode(b"Offering:zj-plan-59")
                        .decode()
                        .rstrip("=")
                    }
                ],
                "customer": {"name": "Wang Fang", "phone": phone, "idCardNumber": id_card},
                "idempotencyKey": "secret-scan-0001",
            }
        },
    )
    order_id = created["data"]["createOrder"]["order"]["id"]
    started = service.start_payment(order_id)["payment"]
    genuine = service.settle(started["outTradeNo"])
    forged = {
        "body": genuine["body"],
        "headers": {
            k: v[:-4] + "AAAA" if "signature" in k else v for k, v in genuine["headers"].items()
        },
    }
    assert service.deliver(forged).status_code >= 400
    assert service.deliver(genuine).status_code == 200
    ask(admin, REFUND, refund_input(started["id"], "secret-scan-refund", 500))
    ask(
        partner,
        "query($id: ID!) { order(id: $id) { customer { phone idCardNumber } payments { status } } }",
        {"id": order_id},
    )
    ask(partner, "{ orders(first: 5) { edges { node { id } } } }")
    ask(partner, "{ nosuchfield }")
    service.db.orders.insert_one(
        {"branch": "zj", "status": "PAID", "idempotencyKey": "broken-for-scan"}
    )
    ask(
        service.client, "{ orders(first: 100) { edges { node { total { amountFen } } } } }"
    )  # INTERNAL

    secrets = {
        "sandbox secret": service.secret.decode(),
        "PII key": service.pii_key,
        "partner key": partner.key or "",
        "admin key": admin.key or "",
        "ops key": service.client.key or "",
    }
    logs = caplog.text
    assert "internal error" in logs  # the scan reads the real log output
    for name, value in secrets.items():
        assert value and value not in logs, f"{name} in the logs"
        assert all(value not in answer for answer in answers), f"{name} in a GraphQL answer"
    for name, value in {"phone": phone, "ID card number": id_card}.items():
        assert value not in logs, f"{name} in the logs"
        assert all(value not in answer for answer in answers), f"{name} shown to a partner"
