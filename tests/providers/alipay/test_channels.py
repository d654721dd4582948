"""Alipay counter sales (PAYMENT_CODE): alipay.trade.pay, query and cancel.

First the adapter against the simulator (declined and invalid codes, a cancel
Alipay asks to repeat, the code kept out of logs), then branchpay itself (real
app, uvicorn, store) configured through plugins.toml for the Alipay simulator:
a code paid at once, one the payer confirms after a few polls (the notification
Alipay then sends is the same fact), and one never confirmed, cancelled when
the wait ends, with nothing taken from the payer and the order still unpaid;
and a payer in the branch's mini program, whose page gets the trade number for
``my.tradePay`` once it gives the payer's Alipay user id.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.plugin import private_key_pem, public_key_pem
from api.plugins.contract import (
    AttemptState,
    PaymentMethod,
    PaymentRequest,
    ReverseState,
)
from api.web.app import create_app as create_branchpay
from providers.alipay import AlipayProvider
from providers.alipay.simulator import create_app
from providers.kit.loopback import LoopbackServer
from tests.conftest import RunningService
from tests.counter_support import COUNTER, new_order, order_of, wait_for
from tests.counter_support import charged as charge
from tests.providers.alipay.support import (
    RunningSimulator,
    alipay_http,
    alipay_provider,
    alipay_simulator,
    app_key,
    platform_key,
)

__all__ = ["alipay_http", "alipay_provider", "alipay_simulator"]

ZJ_APP_ID = "2021000000000101"


def code(behaviour: str) -> str:
    """An Alipay payment code (28 + 16 digits); the last digit is the simulator payer's
    behaviour: 1 pays at once, 2 confirms after 2 queries, 3 never, 4 has no balance."""
    last = {"pay": "1", "confirm": "2", "never": "3", "decline": "4"}[behaviour]
    return "28" + "".join(secrets.choice("0123456789") for _ in range(15)) + last


def sale(auth_code: str, amount_fen: int = 1234) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no="zj" + uuid.uuid4().hex[:20],
        amount_fen=amount_fen,
        currency="CNY",
        subject="Counter sale",
        method=PaymentMethod.PAYMENT_CODE,
        notify_url="https://branchpay.example/notify/alipay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        auth_code=auth_code,
    )


async def taken(http: httpx.AsyncClient, simulator: RunningSimulator, out_trade_no: str) -> int:
    answer = await http.get(f"{simulator.url}/_control/trades/{out_trade_no}/taken")
    answer.raise_for_status()
    return int(answer.json()["taken_fen"])


# --- the adapter ---------------------------------------------------------------


def test_alipay_codes_are_recognised_and_others_are_not() -> None:
    pattern = AlipayProvider.payment_code_pattern
    assert pattern is not None
    for good in ("25" + "0" * 14, "30" + "1" * 22, "281234567890123456"):
        assert pattern.fullmatch(good), good
    for bad in ("24" + "0" * 16, "31" + "0" * 16, "25" + "0" * 13, "30" + "1" * 23, "fp1234"):
        assert not pattern.fullmatch(bad), bad
    # WeChat's (10-15, 18 digits) and UnionPay's (62, 19 digits) codes are not Alipay's.
    assert not pattern.fullmatch("134567890123456789")
    assert not pattern.fullmatch("6212345678901234567")


async def test_a_declined_or_invalid_code_fails_and_takes_nothing(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    declined = sale(code("decline"))
    assert (await alipay_provider.pay_with_code(declined)).state is AttemptState.FAILED
    assert await taken(alipay_http, alipay_simulator, declined.out_trade_no) == 0
    # A code used once is void, whatever its last digit.
    used = code("pay")
    assert (await alipay_provider.pay_with_code(sale(used))).state is AttemptState.SUCCEEDED
    again = sale(used)
    assert (await alipay_provider.pay_with_code(again)).state is AttemptState.FAILED
    assert await taken(alipay_http, alipay_simulator, again.out_trade_no) == 0


async def test_paying_the_same_sale_again_charges_once(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    request = sale(code("pay"))
    first = await alipay_provider.pay_with_code(request)
    repeated = await alipay_provider.pay_with_code(request)  # ACQ.TRADE_HAS_SUCCESS
    assert first.state is repeated.state is AttemptState.SUCCEEDED
    assert [e.event_id for e in first.events] == [e.event_id for e in repeated.events]
    assert await taken(alipay_http, alipay_simulator, request.out_trade_no) == 1234


async def test_a_cancel_alipay_asks_to_repeat_is_retry_then_done(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    request = sale(code("never"))
    assert (await alipay_provider.pay_with_code(request)).state is AttemptState.PENDING
    fault = await alipay_http.post(
        f"{alipay_simulator.url}/_control/faults",
        data={"kind": "retry_flag", "method": "alipay.trade.cancel"},
    )
    fault.raise_for_status()
    assert (await alipay_provider.reverse(request.out_trade_no)).state is ReverseState.RETRY
    done = await alipay_provider.reverse(request.out_trade_no)
    assert (done.state, done.message) == (ReverseState.DONE, "close")
    # Cancelled: a repeat says the same, and the payer can no longer pay it.
    assert (await alipay_provider.reverse(request.out_trade_no)).state is ReverseState.DONE
    assert (await alipay_provider.query(request.out_trade_no)).state is AttemptState.CLOSED
    assert await taken(alipay_http, alipay_simulator, request.out_trade_no) == 0


async def test_a_paid_sale_cancelled_is_refunded_and_a_trade_never_seen_is_done(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
) -> None:
    request = sale(code("pay"))
    assert (await alipay_provider.pay_with_code(request)).state is AttemptState.SUCCEEDED
    refunded = await alipay_provider.reverse(request.out_trade_no)
    assert (refunded.state, refunded.message) == (ReverseState.DONE, "refund")
    assert await taken(alipay_http, alipay_simulator, request.out_trade_no) == 0
    never = await alipay_provider.reverse("zj" + uuid.uuid4().hex[:20])
    assert never.state is ReverseState.DONE


async def test_the_code_is_never_logged(
    alipay_provider: AlipayProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    codes = [code(b) for b in ("pay", "confirm", "decline")]
    for auth_code in codes:
        request = sale(auth_code)
        result = await alipay_provider.pay_with_code(request)
        assert auth_code not in repr(result)
        await alipay_provider.query(request.out_trade_no)
        await alipay_provider.reverse(request.out_trade_no)
    assert caplog.records
    assert not any(c in caplog.text for c in codes)


# --- through branchpay ---------------------------------------------------------------

PLUGINS_TOML = """
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.alipay]
enabled = true
app_id = "2021000000000101"
private_key = {{ file = "alipay-app.pem" }}
alipay_public_key = {{ file = "alipay-public.pem" }}
gateway = "{gateway}"
"""


@pytest.fixture
def gateway_url() -> Iterator[str]:
    app = create_app(apps={ZJ_APP_ID: app_key().public_key()}, alipay_private_key=platform_key())
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], gateway_url: str
) -> RunningService:
    (tmp_path / "alipay-app.pem").write_text(private_key_pem(app_key()))
    (tmp_path / "alipay-public.pem").write_text(public_key_pem(platform_key().public_key()))
    built: list[Any] = []

    def app_factory(options: Any, **kwargs: Any) -> Any:
        built.append(options)
        return create_branchpay(options, **kwargs)

    service = start_service(
        PLUGINS_TOML, gateway=f"{gateway_url}/gateway.do", app_factory=app_factory, **COUNTER
    )
    # Known only once it listens, read per request: the notify URL Alipay is given reaches it.
    built[0].public_url = service.url
    return service


def ledger(gateway_url: str, out_trade_no: str) -> int:
    answer = httpx.get(f"{gateway_url}/_control/trades/{out_trade_no}/taken")
    answer.raise_for_status()
    return int(answer.json()["taken_fen"])


def test_a_code_paid_at_once_pays_the_order(branchpay: RunningService, gateway_url: str) -> None:
    order_id = new_order(branchpay)
    result = charge(branchpay, order_id, code("pay"))
    payment = result["payment"]
    assert (payment["provider"], payment["status"], result["action"]["kind"]) == (
        "alipay",
        "SUCCEEDED",
        "NONE",
    )
    order = order_of(branchpay, order_id)
    assert order["status"] == "PAID" and order["payments"][0]["providerTradeNo"]
    assert ledger(gateway_url, payment["outTradeNo"]) == 5900
    assert branchpay.db["payments"].count_documents({"authCode": {"$exists": True}}) == 0


def test_a_payer_confirming_is_polled_until_paid_and_the_notification_is_the_same_fact(
    branchpay: RunningService, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    payment = charge(branchpay, order_id, code("confirm"))["payment"]
    assert payment["status"] == "PENDING"
    wait_for(lambda: order_of(branchpay, order_id)["status"] == "PAID")
    out_trade_no = payment["outTradeNo"]

    def notified() -> bool:
        deliveries = httpx.get(f"{gateway_url}/_control/deliveries").json()
        return any(d["out_trade_no"] == out_trade_no and d["reply"] for d in deliveries)

    wait_for(notified)
    (delivered,) = [
        d
        for d in httpx.get(f"{gateway_url}/_control/deliveries").json()
        if d["out_trade_no"] == out_trade_no
    ]
    # Alipay's notification reached branchpay and was answered as Alipay wants it.
    assert (delivered["status_code"], delivered["reply"]) == (200, "success")
    stored = branchpay.db["payments"].find_one({"outTradeNo": out_trade_no})
    assert stored is not None and stored["status"] == "SUCCEEDED"
    assert len(stored["eventIds"]) == 1
    assert branchpay.db["payment_events"].count_documents({"paymentId": stored["_id"]}) == 1
    assert ledger(gateway_url, out_trade_no) == 5900


def test_a_sale_never_confirmed_is_cancelled_leaving_nothing_taken(
    branchpay: RunningService, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    payment = charge(branchpay, order_id, code("never"))["payment"]
    assert payment["status"] == "PENDING"

    def reversed_() -> dict[str, Any] | None:
        seen: dict[str, Any] = order_of(branchpay, order_id)["payments"][0]
        return seen if seen["reversal"] == "DONE" else None

    seen = wait_for(reversed_)
    assert seen["status"] == "CLOSED"
    assert order_of(branchpay, order_id)["status"] == "PENDING_PAYMENT"
    assert ledger(gateway_url, payment["outTradeNo"]) == 0
    trade = httpx.get(f"{gateway_url}/_control/trades/{payment['outTradeNo']}").json()
    assert trade["status"] == "TRADE_CLOSED"
    calls = httpx.get(f"{gateway_url}/_control/calls").json()
    assert calls["alipay.trade.cancel"] == 1 and calls["alipay.trade.query"] >= 2


IN_APP = """
mutation($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { status outTradeNo }
    action { kind tradeNo }
    userErrors { field code }
  }
}
"""
BUYER_ID = "2088102146225135"


def test_a_mini_program_payer_pays_the_trade_created_for_them(
    branchpay: RunningService, gateway_url: str
) -> None:
    order_id = new_order(branchpay)

    def start(**extra: Any) -> dict[str, Any]:
        payload = {"orderId": order_id, "provider": "alipay", "method": "JSAPI", **extra}
        started: dict[str, Any] = branchpay.client.data(IN_APP, {"input": payload})["startPayment"]
        return started

    assert start()["userErrors"] == [{"field": ["payerId"], "code": "PAYER_ID_REQUIRED"}]
    assert branchpay.db["payments"].count_documents({}) == 0

    started = start(payerId=BUYER_ID)
    assert started["userErrors"] == []
    action = started["action"]
    assert action["kind"] == "TRADE_PAY" and action["tradeNo"]
    # The payer confirms in the app (my.tradePay); Alipay notifies branchpay.
    paid = httpx.post(
        f"{gateway_url}/_control/trade-pay/{action['tradeNo']}", data={"outcome": "success"}
    )
    assert paid.json()["resultCode"] == "9000"
    wait_for(lambda: order_of(branchpay, order_id)["status"] == "PAID")
    (payment,) = order_of(branchpay, order_id)["payments"]
    assert (payment["status"], payment["providerTradeNo"]) == ("SUCCEEDED", action["tradeNo"])
