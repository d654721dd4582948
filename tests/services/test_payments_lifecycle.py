"""The whole path over HTTP with the sandbox simulator: order, payment, notification, refunds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.services.conftest import PayService, order_feed


async def test_order_is_paid_through_the_simulator_seen_live_then_refunded_in_two_steps(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    assert order["total"] == {"amountFen": 5900}

    async with order_feed(service.client, order["id"]) as feed:
        first = await feed.next()
        assert first is not None and first["status"] == "PENDING_PAYMENT"

        started = service.start_payment(order["id"], method="QR_CODE")
        assert started["userErrors"] == []
        assert started["action"]["kind"] == "QR_CODE"
        assert started["payment"]["status"] == "PENDING"
        assert started["payment"]["amount"] == {"amountFen": 5900, "currency": "CNY"}
        # The payer scans the code and pays; the simulator notifies branchpay on its own.
        paid = httpx.post(
            started["action"]["qrCode"],
            data={"outcome": "success"},
            headers={"accept": "application/json"},
        )
        assert paid.status_code == 200 and paid.json()["status"] == "SUCCEEDED"

        event = await feed.next()
        assert event is not None and event["status"] == "PAID"
        assert event["order"] == {
            "id": order["id"],
            "status": "PAID",
            "payments": [{"status": "SUCCEEDED"}],
        }
        seen = service.order(order["id"])
        assert seen["payments"][0]["status"] == "SUCCEEDED"
        assert seen["payments"][0]["providerTradeNo"] == paid.json()["trade_no"]

        payment_id = started["payment"]["id"]
        partial = service.refund(payment_id, 1000)
        assert partial["userErrors"] == []
        assert partial["refund"]["status"] == "SUCCEEDED"
        assert partial["payment"]["status"] == "PARTIALLY_REFUNDED"
        event = await feed.next()
        assert event is not None and event["status"] == "PARTIALLY_REFUNDED"

        full = service.refund(payment_id, 4900)
        assert full["userErrors"] == []
        assert full["payment"]["status"] == "REFUNDED"
        event = await feed.next()
        assert event is not None and event["status"] == "REFUNDED"
        # REFUNDED is final: the server completes the subscription.
        assert await feed.next() is None

    gateway_attempt = service.gateway.attempts[started["payment"]["outTradeNo"]]
    assert gateway_attempt.refunded_fen == 5900
    assert service.order(order["id"])["status"] == "REFUNDED"


def test_a_second_attempt_is_allowed_and_a_second_success_is_refunded_automatically(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    first = service.start_payment(order["id"], method="PAGE")["payment"]
    second = service.start_payment(order["id"], method="WAP")["payment"]
    assert first["outTradeNo"] != second["outTradeNo"]

    assert service.deliver(service.settle(first["outTradeNo"])).status_code == 200
    assert service.deliver(service.settle(second["outTradeNo"])).status_code == 200
    # The platform re-sends the second success: still one refund.
    assert service.deliver(service.settle_latest(second["outTradeNo"])).status_code == 200

    seen = service.order(order["id"])
    assert seen["status"] == "PAID"
    by_no = {p["outTradeNo"]: p for p in seen["payments"]}
    assert by_no[first["outTradeNo"]]["status"] == "SUCCEEDED"
    assert by_no[second["outTradeNo"]]["status"] == "REFUNDED"
    assert by_no[second["outTradeNo"]]["refunds"] == [
        {
            "outRefundNo": second["outTradeNo"] + "AR",
            "status": "SUCCEEDED",
            "amount": {"amountFen": 5900},
        }
    ]
    assert service.gateway.attempts[second["outTradeNo"]].refunded_fen == 5900
    assert service.gateway.attempts[first["outTradeNo"]].refunded_fen == 0
    assert service.order_doc(order["id"])["paidPaymentId"] is not None


async def test_two_attempts_paid_at_the_same_moment_leave_one_paid_and_one_refunded(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    attempts = [service.start_payment(order["id"])["payment"] for _ in range(2)]
    notifications = [service.settle(a["outTradeNo"]) for a in attempts]

    async with httpx.AsyncClient(timeout=30.0) as http:
        replies = await asyncio.gather(
            *(
                http.post(
                    f"{service.url}/notify/sandbox/zj",
                    content=n["body"].encode(),
                    headers=n["headers"],
                )
                for _ in range(10)
                for n in notifications
            )
        )

    assert [r.status_code for r in replies] == [200] * 20
    seen = service.order(order["id"])
    assert seen["status"] == "PAID"
    assert sorted(p["status"] for p in seen["payments"]) == ["REFUNDED", "SUCCEEDED"]
    refunded = [service.gateway.attempts[a["outTradeNo"]].refunded_fen for a in attempts]
    assert sorted(refunded) == [0, 5900]
    history = [e["status"] for e in service.order_doc(order["id"])["statusHistory"]]
    assert history == ["PENDING_PAYMENT", "PAID"]
