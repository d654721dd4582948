"""Counter sales through the API, against the sandbox simulator over HTTP.

A payment code paid at once, one the payer confirms after a few polls, one that is
never confirmed and is reversed (the simulator's ledger keeps nothing and the order
stays unpaid), refusals that write nothing, and a cancelled order's sale reversed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.counter_support import COUNTER, START, charge, order_of, wait_for
from tests.services.conftest import PayService, serve_process


def code(behaviour: str) -> str:
    """A sandbox payment code: 99, 15 digits, and the last digit the payer's behaviour."""
    last = {"pay": "1", "confirm": "2", "never": "3", "decline": "4"}[behaviour]
    return "99" + "".join(secrets.choice("0123456789") for _ in range(15)) + last


def taken_fen(service: PayService, out_trade_no: str) -> int:
    response = httpx.get(f"{service.gateway_url}/control/payments/{out_trade_no}/taken")
    response.raise_for_status()
    return int(response.json()["taken_fen"])


def test_a_code_paid_at_once_pays_the_order_before_start_payment_answers(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(**COUNTER)
    order = service.create_order()
    result = charge(service, order["id"], code("pay"))  # no provider: the code names it
    assert result["userErrors"] == []
    payment = result["payment"]
    assert (payment["provider"], payment["status"], result["action"]["kind"]) == (
        "sandbox",
        "SUCCEEDED",
        "NONE",
    )
    assert order_of(service, order["id"])["status"] == "PAID"
    assert taken_fen(service, payment["outTradeNo"]) == payment["amount"]["amountFen"]
    stored = service.db.payments.find_one({"outTradeNo": payment["outTradeNo"]})
    assert stored is not None and "counter" not in stored
    # The scanned code is stored nowhere.
    assert service.db.payments.count_documents({"authCode": {"$exists": True}}) == 0


def test_a_payer_confirming_on_the_phone_is_polled_until_paid_and_applied_once(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(**COUNTER)
    order = service.create_order()
    result = charge(service, order["id"], code("confirm"), provider="sandbox")
    payment = result["payment"]
    assert payment["status"] == "PENDING" and result["action"]["kind"] == "NONE"

    wait_for(lambda: order_of(service, order["id"])["status"] == "PAID")
    # The poll that found it paid and the simulator's notification are one fact.
    wait_for(lambda: service.db.payment_events.count_documents({}) >= 1)
    time.sleep(0.5)  # let the notification the simulator sends arrive
    stored = service.db.payments.find_one({"outTradeNo": payment["outTradeNo"]})
    assert stored is not None and stored["status"] == "SUCCEEDED"
    assert len(stored["eventIds"]) == 1
    assert service.db.payment_events.count_documents({"paymentId": stored["_id"]}) == 1
    wait_for(lambda: "counter" not in (service.db.payments.find_one({"_id": stored["_id"]}) or {}))
    paid = [h for h in service.order_doc(order["id"])["statusHistory"] if h["status"] == "PAID"]
    assert len(paid) == 1
    assert taken_fen(service, payment["outTradeNo"]) == payment["amount"]["amountFen"]


def test_a_sale_never_confirmed_is_reversed_leaving_nothing_taken_and_the_order_payable(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(**COUNTER)
    order = service.create_order()
    payment = charge(service, order["id"], code("never"))["payment"]
    assert payment["status"] == "PENDING"

    def reversed_() -> dict[str, Any] | None:
        seen = order_of(service, order["id"])["payments"][0]
        return seen if seen["reversal"] == "DONE" else None

    seen = wait_for(reversed_)
    assert seen["status"] == "CLOSED"
    assert order_of(service, order["id"])["status"] == "PENDING_PAYMENT"
    assert taken_fen(service, payment["outTradeNo"]) == 0
    stored = service.db.payments.find_one({"outTradeNo": payment["outTradeNo"]})
    assert stored is not None and "counter" not in stored
    # The clerk asks for another code; that one pays the order.
    again = charge(service, order["id"], code("pay"))
    assert again["payment"]["status"] == "SUCCEEDED"
    assert order_of(service, order["id"])["status"] == "PAID"


def test_refusals_name_the_field_and_write_nothing(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(**COUNTER)
    order = service.create_order()

    def refused(auth_code: str | None, **extra: Any) -> list[tuple[list[str], str]]:
        result = charge(service, order["id"], auth_code, **extra)
        assert result["payment"] is None
        return [(e["field"], e["code"]) for e in result["userErrors"]]

    assert refused(None) == [(["authCode"], "AUTH_CODE_REQUIRED")]
    assert refused("") == [(["authCode"], "AUTH_CODE_REQUIRED")]
    assert refused("12 34") == [(["authCode"], "INVALID_AUTH_CODE")]
    assert refused("55" + "1" * 16) == [(["authCode"], "INVALID_AUTH_CODE")]
    # A WeChat Pay, Alipay or UnionPay code at a branch that takes none of them: the
    # wallet is named, and nothing is sent anywhere.
    for wallet, scanned in (
        ("WeChat Pay (wechatpay)", "13" + "1" * 16),
        ("Alipay (alipay)", "28" + "1" * 16),
        ("UnionPay (unionpay)", "62" + "1" * 17),
    ):
        result = charge(service, order["id"], scanned)
        assert result["payment"] is None
        (error,) = result["userErrors"]
        assert (error["field"], error["code"]) == (["authCode"], "PROVIDER_NOT_ENABLED"), wallet
        assert wallet in error["message"] and "does not enable it" in error["message"]
    assert service.db.payments.count_documents({}) == 0
    # A code the platform declines: the attempt is FAILED, the order still payable.
    assert refused(code("decline")) == [(["authCode"], "PAYMENT_DECLINED")]
    assert [p["status"] for p in service.db.payments.find({})] == ["FAILED"]
    assert order_of(service, order["id"])["status"] == "PENDING_PAYMENT"
    # authCode belongs to PAYMENT_CODE only.
    other = service.client.data(
        START,
        {
            "input": {
                "orderId": order["id"],
                "provider": "sandbox",
                "method": "PAGE",
                "authCode": code("pay"),
            }
        },
    )["startPayment"]
    assert [e["code"] for e in other["userErrors"]] == ["INVALID_AUTH_CODE"]


def test_cancelling_an_order_while_the_payer_confirms_reverses_the_sale(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments(**{**COUNTER, "counter_wait_seconds": 60})
    order = service.create_order()
    payment = charge(service, order["id"], code("never"))["payment"]
    cancelled = service.cancel(order["id"])
    assert cancelled["order"]["status"] == "CANCELLED"

    def reversed_() -> bool:
        return bool(order_of(service, order["id"])["payments"][0]["reversal"] == "DONE")

    wait_for(reversed_)
    assert taken_fen(service, payment["outTradeNo"]) == 0
    assert order_of(service, order["id"])["status"] == "CANCELLED"


def gateway_calls(url: str, operation: str) -> float:
    """The process's count of sandbox calls of one operation, from its /metrics."""
    answer = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    answer.raise_for_status()
    total = 0.0
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if (
                sample.name == "branchpay_gateway_calls_total"
                and sample.labels.get("provider") == "sandbox"
                and sample.labels.get("operation") == operation
            ):
                total += sample.value
    return total


METRICS_TOKEN = "counter-sales-" + "t" * 24


def test_three_processes_follow_a_sale_together_each_step_once(
    start_payments: Callable[..., PayService], tmp_path: Path
) -> None:
    # This process takes no step in the test's time; two `branchpay serve` processes do.
    service = start_payments(**{**COUNTER, "counter_tick_seconds": 60})
    env = {
        f"BRANCHPAY_{name.upper()}": str(value)
        for name, value in {**COUNTER, "counter_wait_seconds": 2.0}.items()
    }
    env["BRANCHPAY_METRICS_TOKEN"] = METRICS_TOKEN
    processes = [serve_process(service, tmp_path, f"counter-{n}", **env) for n in range(2)]
    try:
        order = service.create_order()
        payment = charge(service, order["id"], code("never"))["payment"]

        def reversed_() -> bool:
            return bool(order_of(service, order["id"])["payments"][0]["reversal"] == "DONE")

        wait_for(reversed_)
        time.sleep(0.5)  # any step a process still had in hand would show now
        urls = [url for _, url in processes]
        queries = sum(gateway_calls(url, "query") for url in urls)
        reverses = sum(gateway_calls(url, "reverse") for url in urls)
        # One query per poll interval of the 2 s wait (each process looks every 0.05 s:
        # without the per-sale claim they would have asked about 80 times), one reverse.
        assert 3 <= queries <= 12, queries
        assert reverses == 1
        assert taken_fen(service, payment["outTradeNo"]) == 0
    finally:
        for process, _ in processes:
            process.terminate()
            process.wait(timeout=20)
