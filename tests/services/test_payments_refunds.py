"""refundPayment over HTTP: never past the paid amount, idempotent keys, unknown outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from tests.services.conftest import REFUND, PayService


def paid_payment(service: PayService) -> tuple[dict[str, Any], dict[str, Any]]:
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    assert service.deliver(service.settle(payment["outTradeNo"])).status_code == 200
    return order, payment


def codes(payload: dict[str, Any]) -> list[str]:
    return [e["code"] for e in payload["userErrors"]]


def test_a_refund_past_the_paid_amount_is_refused_and_writes_nothing(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = paid_payment(service)

    refused = service.refund(payment["id"], 5901)

    assert codes(refused) == ["REFUND_EXCEEDS_PAID"]
    assert refused["refund"] is None
    assert service.db.refunds.count_documents({}) == 0
    assert service.order(order["id"])["payments"][0]["refunds"] == []
    assert service.gateway.attempts[payment["outTradeNo"]].refunded_fen == 0
    for bad in (0, -5):
        assert codes(service.refund(payment["id"], bad)) == ["INVALID_AMOUNT"]


def test_partial_refunds_add_up_to_the_paid_amount_and_never_past_it(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = paid_payment(service)
    assert service.refund(payment["id"], 2000)["userErrors"] == []
    assert service.order(order["id"])["status"] == "PARTIALLY_REFUNDED"
    assert service.refund(payment["id"], 2000)["userErrors"] == []
    assert codes(service.refund(payment["id"], 1901)) == ["REFUND_EXCEEDS_PAID"]
    assert service.refund(payment["id"], 1900)["payment"]["status"] == "REFUNDED"
    assert service.order(order["id"])["status"] == "REFUNDED"
    assert codes(service.refund(payment["id"], 1)) == ["REFUND_EXCEEDS_PAID"]
    assert service.gateway.attempts[payment["outTradeNo"]].refunded_fen == 5900


def test_a_repeated_idempotency_key_returns_the_first_refund(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    _, payment = paid_payment(service)
    first = service.refund(payment["id"], 1000, key="refund-key-0001")
    again = service.refund(payment["id"], 1000, key="refund-key-0001")

    assert first["userErrors"] == [] and again["userErrors"] == []
    assert again["refund"] == first["refund"]
    assert len(again["payment"]["refunds"]) == 1
    assert service.gateway.attempts[payment["outTradeNo"]].refunded_fen == 1000
    reused = service.refund(payment["id"], 2000, key="refund-key-0001")
    assert codes(reused) == ["IDEMPOTENCY_KEY_REUSED"]
    assert codes(service.refund(payment["id"], 10, key="short")) == ["INVALID_IDEMPOTENCY_KEY"]


async def test_concurrent_refunds_never_exceed_the_paid_amount(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = paid_payment(service)

    async with httpx.AsyncClient(timeout=60.0, headers=service.client.http.headers) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    f"{service.url}/graphql",
                    json={
                        "query": REFUND,
                        "variables": {
                            "input": {
                                "paymentId": payment["id"],
                                "amountFen": 1000,
                                "idempotencyKey": f"parallel-refund-{index:04d}",
                            }
                        },
                    },
                )
                for index in range(8)
            )
        )

    payloads = [r.json()["data"]["refundPayment"] for r in responses]
    made = [p for p in payloads if not p["userErrors"]]
    assert len(made) == 5
    assert all(codes(p) == ["REFUND_EXCEEDS_PAID"] for p in payloads if p["userErrors"])
    assert service.gateway.attempts[payment["outTradeNo"]].refunded_fen == 5000
    assert service.order(order["id"])["status"] == "PARTIALLY_REFUNDED"


async def test_concurrent_repeats_of_one_key_refund_once(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    _, payment = paid_payment(service)

    async with httpx.AsyncClient(timeout=60.0, headers=service.client.http.headers) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    f"{service.url}/graphql",
                    json={
                        "query": REFUND,
                        "variables": {
                            "input": {
                                "paymentId": payment["id"],
                                "amountFen": 700,
                                "idempotencyKey": "same-key-everywhere",
                            }
                        },
                    },
                )
                for _ in range(6)
            )
        )

    payloads = [r.json()["data"]["refundPayment"] for r in responses]
    assert all(p["userErrors"] == [] for p in payloads)
    assert len({p["refund"]["outRefundNo"] for p in payloads}) == 1
    assert service.gateway.attempts[payment["outTradeNo"]].refunded_fen == 700


def test_an_unknown_refund_outcome_stays_reserved_until_reconciliation(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = paid_payment(service)
    # Every try of the refund call answers 503: the platform may or may not have refunded.
    httpx.post(f"{service.gateway_url}/control/faults", json={"status": 503, "count": 3})

    pending = service.refund(payment["id"], 5900)

    assert pending["userErrors"] == []
    assert pending["refund"]["status"] == "PENDING"
    assert codes(service.refund(payment["id"], 1)) == ["REFUND_EXCEEDS_PAID"]  # still reserved
    assert service.order(order["id"])["status"] == "PAID"

    run = service.reconcile("--branch", "zj")

    assert run.returncode == 0, run.stderr
    assert payment["outTradeNo"] in run.stdout
    assert "reconciled 1 attempts, 1 changed" in run.stdout
    assert service.order(order["id"])["status"] == "REFUNDED"
    assert service.gateway.attempts[payment["outTradeNo"]].refunded_fen == 5900
