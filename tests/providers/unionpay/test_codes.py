"""UnionPay counter sales (PAYMENT_CODE) at the adapter, against the simulator over loopback.

What the kit's counter cases do not cover: what goes on the wire, a code
that is not UnionPay's, a lost answer (the sale may be charged: it is then
found by a query, and sending it again never charges twice), reverses that
are repeated or of a sale UnionPay never saw, and the code kept out of logs,
errors and results.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.plugins.contract import (
    AttemptState,
    EventKind,
    GatewayError,
    PaymentMethod,
    PaymentRequest,
    ReverseState,
)
from providers.kit.loopback import LoopbackServer
from providers.unionpay import UnionpayProvider
from providers.unionpay.driver import UnionpayDriver

LOGGER = "branchpay.providers.unionpay"


@pytest.fixture
def driver(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayDriver:
    return UnionpayDriver(simulator.url, http)


def sale(auth_code: str, amount_fen: int = 8800) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=f"{datetime.now(UTC):%y%m%d%H%M%S}ct{uuid.uuid4().hex[:16]}",
        amount_fen=amount_fen,
        currency="CNY",
        subject="Top-up 88",
        method=PaymentMethod.PAYMENT_CODE,
        notify_url="http://127.0.0.1:9/notify/unionpay/zj-mobile",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        auth_code=auth_code,
    )


async def view(http: httpx.AsyncClient, simulator: LoopbackServer, order_id: str) -> Any:
    response = await http.get(f"{simulator.url}/control/transactions/{order_id}")
    response.raise_for_status()
    return response.json()


async def test_a_paid_code_sale_is_a_code_consume_and_its_facts_share_one_event_id(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    request = sale(driver.payment_code("pay"))
    result = await provider.pay_with_code(request)
    assert result.state is AttemptState.SUCCEEDED
    (event,) = result.events
    assert (event.kind, event.amount_fen) == (EventKind.PAYMENT_SUCCEEDED, 8800)
    seen = await view(http, simulator, request.out_trade_no)
    assert (seen["txnType"], seen["status"], seen["txnAmt"]) == ("01", "success", 8800)
    assert result.provider_trade_no == seen["queryId"]
    notification = await driver.code_notification(request.out_trade_no)
    assert notification is not None
    notified = await provider.parse_notification(notification)
    assert notified is not None and notified.event_id == event.event_id


async def test_a_code_that_is_not_unionpays_is_refused_before_anything_is_sent(
    provider: UnionpayProvider, http: httpx.AsyncClient, simulator: LoopbackServer
) -> None:
    for code in ("99" + "1" * 16, "62" + "1" * 16, "62" + "1" * 16 + "x", ""):
        request = sale(code)
        with pytest.raises(GatewayError) as caught:
            await provider.pay_with_code(request)
        assert not caught.value.outcome_unknown
        if code:
            assert code not in str(caught.value)
        missing = await http.get(f"{simulator.url}/control/transactions/{request.out_trade_no}")
        assert missing.status_code == 404


async def test_a_code_used_before_or_declined_is_failed_with_nothing_taken(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    code = driver.payment_code("pay")
    assert (await provider.pay_with_code(sale(code))).state is AttemptState.SUCCEEDED
    again = sale(code)
    assert (await provider.pay_with_code(again)).state is AttemptState.FAILED
    assert await driver.taken_fen(again.out_trade_no) == 0
    declined = sale("62" + "5" * 17)
    assert (await provider.pay_with_code(declined)).state is AttemptState.FAILED
    assert await driver.taken_fen(declined.out_trade_no) == 0


async def test_a_lost_answer_may_have_charged_a_query_finds_it_and_a_resend_charges_once(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    request = sale(driver.payment_code("pay"))
    spec = {"endpoint": "backTransReq.do", "mode": "lost_answer", "count": 1}
    (await http.post(f"{simulator.url}/control/faults", json=spec)).raise_for_status()
    with pytest.raises(GatewayError) as caught:
        await provider.pay_with_code(request)
    assert caught.value.outcome_unknown
    assert (await provider.query(request.out_trade_no)).state is AttemptState.SUCCEEDED
    # The same sale sent again: UnionPay has the orderId (respCode 12); its state, no charge.
    again = await provider.pay_with_code(request)
    assert again.state is AttemptState.SUCCEEDED
    assert await driver.taken_fen(request.out_trade_no) == 8800
    # Sent again while the query fails: still "may have charged", never a refusal.
    spec = {"endpoint": "queryTrans.do", "mode": "error", "count": 3}
    (await http.post(f"{simulator.url}/control/faults", json=spec)).raise_for_status()
    with pytest.raises(GatewayError) as caught:
        await provider.pay_with_code(request)
    assert caught.value.outcome_unknown
    assert await driver.taken_fen(request.out_trade_no) == 8800


async def test_reverse_is_idempotent_and_a_sale_never_seen_is_done(
    provider: UnionpayProvider, driver: UnionpayDriver
) -> None:
    request = sale(driver.payment_code("never"))
    assert (await provider.pay_with_code(request)).state is AttemptState.PENDING
    first = await provider.reverse(request.out_trade_no)
    second = await provider.reverse(request.out_trade_no)
    assert (first.state, second.state) == (ReverseState.DONE, ReverseState.DONE)
    assert await driver.taken_fen(request.out_trade_no) == 0
    assert (await provider.query(request.out_trade_no)).state is AttemptState.FAILED
    never_sent = sale(driver.payment_code("pay"))
    assert (await provider.reverse(never_sent.out_trade_no)).state is ReverseState.DONE


async def test_a_paid_sale_reversed_twice_returns_the_money_once(
    provider: UnionpayProvider,
    driver: UnionpayDriver,
    http: httpx.AsyncClient,
    simulator: LoopbackServer,
) -> None:
    request = sale(driver.payment_code("pay"))
    assert (await provider.pay_with_code(request)).state is AttemptState.SUCCEEDED
    for _ in range(2):
        assert (await provider.reverse(request.out_trade_no)).state is ReverseState.DONE
    assert await driver.taken_fen(request.out_trade_no) == 0
    assert (await view(http, simulator, request.out_trade_no))["refundedFen"] == 8800


async def test_the_code_is_in_no_log_line_error_or_result(
    provider: UnionpayProvider, driver: UnionpayDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    codes = [driver.payment_code(b) for b in ("pay", "confirm", "never")] + ["62" + "7" * 17]
    shown: list[str] = []
    for code in codes:
        request = sale(code)
        result = await provider.pay_with_code(request)
        shown.append(repr(result))
        shown.append(repr(await provider.query(request.out_trade_no)))
        shown.append(repr(await provider.reverse(request.out_trade_no)))
    text = caplog.text + "".join(shown)
    assert not [code for code in codes if code in text]
