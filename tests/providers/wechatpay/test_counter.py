"""Counter sales (付款码) with the WeChat Pay adapter against its simulator over loopback HTTP.

The kit's counter cases run in test_conformance; these cover what is WeChat
Pay's own: a declined or re-used code, a repeated pay call, the reverse that
WeChat Pay refuses while the payer is still confirming, a reverse of a sale it
never saw or that is no code sale, and the code kept out of every log line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from api.plugins.contract import (
    AttemptState,
    EventKind,
    GatewayError,
    PaymentMethod,
    PaymentRequest,
    ReverseState,
    new_reference,
)
from providers.kit.loopback import LoopbackServer
from providers.wechatpay import WechatpayProvider
from providers.wechatpay.driver import WechatpayDriver
from tests.providers.wechatpay.support import (
    BRANCH,
    PLATFORM_KEY_ID,
    merchant,
    session_keys,
    settings,
    simulator_app,
)


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    keys = session_keys()
    app = simulator_app(
        merchant(keys),
    )
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
async def provider(simulator_url: str) -> AsyncIterator[WechatpayProvider]:
    async with httpx.AsyncClient() as http:
        yield WechatpayProvider(settings(session_keys(), simulator_url), branch=BRANCH, http=http)


@pytest.fixture
def driver(simulator_url: str) -> WechatpayDriver:
    keys = session_keys()
    return WechatpayDriver(
        simulator_url,
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


def sale(auth_code: str, amount_fen: int = 5900, out_trade_no: str | None = None) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=out_trade_no or new_reference(),
        amount_fen=amount_fen,
        currency="CNY",
        subject="China Mobile Zhejiang top-up",
        method=PaymentMethod.PAYMENT_CODE,
        notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        client_ip="10.1.2.3",
        auth_code=auth_code,
    )


def declining_code(driver: WechatpayDriver) -> str:
    return driver.payment_code("pay")[:-1] + "7"


async def test_a_declined_code_fails_and_takes_nothing(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    request = sale(declining_code(driver))
    result = await provider.pay_with_code(request)
    assert result.state is AttemptState.FAILED and result.events == ()
    assert await driver.taken_fen(request.out_trade_no) == 0
    assert (await provider.query(request.out_trade_no)).state is AttemptState.FAILED


async def test_a_code_is_charged_once(provider: WechatpayProvider, driver: WechatpayDriver) -> None:
    code = driver.payment_code("pay")
    first = sale(code)
    paid = await provider.pay_with_code(first)
    assert paid.state is AttemptState.SUCCEEDED
    # The same sale sent again (an answer lost on the way): its state, no second charge.
    again = await provider.pay_with_code(first)
    assert again.state is AttemptState.SUCCEEDED
    assert [e.event_id for e in again.events] == [e.event_id for e in paid.events]
    assert await driver.taken_fen(first.out_trade_no) == 5900
    # The same code for another sale: WeChat Pay refuses it (AUTHCODEEXPIRE).
    other = sale(code)
    assert (await provider.pay_with_code(other)).state is AttemptState.FAILED
    assert await driver.taken_fen(other.out_trade_no) == 0


async def test_a_paid_code_gives_the_payment_fact(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    request = sale(driver.payment_code("pay"), amount_fen=12345)
    result = await provider.pay_with_code(request)
    (event,) = result.events
    assert event.kind is EventKind.PAYMENT_SUCCEEDED
    assert (event.amount_fen, event.out_trade_no) == (12345, request.out_trade_no)
    assert event.detail["trade_type"] == "MICROPAY"
    assert result.provider_trade_no == event.provider_trade_no


async def test_reverse_while_the_payer_confirms_is_asked_again_then_done(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    request = sale(driver.payment_code("never"))
    assert (await provider.pay_with_code(request)).state is AttemptState.PENDING
    first = await provider.reverse(request.out_trade_no)
    assert (first.state, first.message) == (ReverseState.RETRY, "USERPAYING")
    assert (await provider.reverse(request.out_trade_no)).state is ReverseState.DONE
    # Asked once more (a lost answer): still done.
    assert (await provider.reverse(request.out_trade_no)).state is ReverseState.DONE
    assert (await provider.query(request.out_trade_no)).state is AttemptState.CLOSED
    assert await driver.taken_fen(request.out_trade_no) == 0


async def test_reverse_of_a_sale_never_seen_is_done(provider: WechatpayProvider) -> None:
    assert (await provider.reverse(new_reference())).state is ReverseState.DONE


def qr_request() -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=new_reference(),
        amount_fen=100,
        currency="CNY",
        subject="plan",
        method=PaymentMethod.QR_CODE,
        notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
    )


async def test_a_refused_reverse_is_settled_by_a_query(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    """WeChat Pay reverses code sales only (INVALID_REQUEST otherwise): what is it then?"""
    open_attempt = qr_request()
    await provider.create_payment(open_attempt)
    # Still payable: not claimed done, the caller asks again later.
    with pytest.raises(GatewayError, match="INVALID_REQUEST"):
        await provider.reverse(open_attempt.out_trade_no)
    paid = qr_request()
    await provider.create_payment(paid)
    await driver.settle(paid.out_trade_no, "success")
    kept = await provider.reverse(paid.out_trade_no)
    assert (kept.state, kept.message) == (ReverseState.PAID, "INVALID_REQUEST")
    assert await driver.taken_fen(paid.out_trade_no) == 100
    closed = qr_request()
    await provider.create_payment(closed)
    await provider.close(closed.out_trade_no)
    assert (await provider.reverse(closed.out_trade_no)).state is ReverseState.DONE


async def test_the_code_is_never_logged_or_in_an_error(
    provider: WechatpayProvider, driver: WechatpayDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    codes = [driver.payment_code(b) for b in ("pay", "confirm", "never")] + [
        declining_code(driver),
        "123",
    ]
    texts = []
    for code in codes:
        try:
            texts.append(repr(await provider.pay_with_code(sale(code))))
        except GatewayError as error:
            texts.append(str(error))
    for code in codes:
        assert code not in caplog.text
        assert all(code not in text for text in texts)


async def test_a_lost_code_pay_answer_is_an_unknown_outcome_then_found_by_query(
    provider: WechatpayProvider, driver: WechatpayDriver, simulator_url: str
) -> None:
    """WeChat Pay failed (500) or answered too late: the sale may be charged; a query tells."""
    for fault in ({"kind": "error"}, {"kind": "stall", "stall_seconds": 3}):
        answer = httpx.post(
            f"{simulator_url}/control/faults",
            json={**fault, "path": "/v3/pay/transactions/codepay"},
        )
        answer.raise_for_status()
        request = sale(driver.payment_code("pay"))
        with pytest.raises(GatewayError) as caught:
            await provider.pay_with_code(request)
        assert caught.value.outcome_unknown
        expected = AttemptState.UNKNOWN if fault["kind"] == "error" else AttemptState.SUCCEEDED
        assert (await provider.query(request.out_trade_no)).state is expected
