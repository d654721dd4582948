"""Alipay in-app payments (JSAPI): alipay.trade.create for the payer, paid with my.tradePay.

The adapter opens the trade at the simulator, which checks the request's RSA2
signature with the app's public key and keeps the buyer it names; the payer
then pays the trade_no in the Alipay app (the simulator's trade-pay control)
and Alipay's notification reaches a notify endpoint.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from api.plugin import private_key_pem
from api.plugins.contract import (
    ActionKind,
    AttemptState,
    EventKind,
    GatewayError,
    PaymentMethod,
    PaymentRequest,
)
from providers.alipay import AlipayProvider
from tests.providers.alipay.support import (
    BRANCH,
    NotifyReceiver,
    RunningSimulator,
    alipay_http,
    alipay_provider,
    alipay_simulator,
    notify_receiver,
    rsa_key,
    settings_for,
)

__all__ = ["alipay_http", "alipay_provider", "alipay_simulator", "notify_receiver"]

USER_ID = "2088102177846880"
OPEN_ID = "074a1CcTG1LelxKe4xQC0zgNdId0nxi95b5lsNpazWYoCo5"


def in_app(payer_id: str | None, notify_url: str = "https://branchpay.example/n") -> PaymentRequest:
    return PaymentRequest(
        out_trade_no="zj" + uuid.uuid4().hex[:20],
        amount_fen=4200,
        currency="CNY",
        subject="Mini program order",
        method=PaymentMethod.JSAPI,
        notify_url=notify_url,
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        payer_id=payer_id,
    )


async def trade_of(
    http: httpx.AsyncClient, simulator: RunningSimulator, out_trade_no: str
) -> dict[str, object]:
    answer = await http.get(f"{simulator.url}/_control/trades/{out_trade_no}")
    answer.raise_for_status()
    trade: dict[str, object] = answer.json()
    return trade


@pytest.mark.parametrize(("payer_id", "field"), [(USER_ID, "buyer_id"), (OPEN_ID, "buyer_open_id")])
async def test_the_trade_is_created_for_the_payer_and_its_trade_no_handed_to_the_page(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
    payer_id: str,
    field: str,
) -> None:
    request = in_app(payer_id)
    action = await alipay_provider.create_payment(request)
    assert action.kind is ActionKind.TRADE_PAY and action.trade_no
    trade = await trade_of(alipay_http, alipay_simulator, request.out_trade_no)
    # The simulator took the call only with the app's valid signature, and kept its buyer.
    assert trade["api_method"] == "alipay.trade.create"
    assert trade["buyer"] == {field: payer_id}
    assert (trade["trade_no"], trade["status"], trade["total_fen"]) == (
        action.trade_no,
        "WAIT_BUYER_PAY",
        4200,
    )
    assert (await alipay_provider.query(request.out_trade_no)).state is AttemptState.PENDING


async def test_a_request_not_signed_with_the_apps_key_is_refused(
    alipay_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> None:
    impostor = AlipayProvider(
        settings_for(alipay_simulator.gateway, private_key=private_key_pem(rsa_key("forger"))),
        branch=BRANCH,
        http=alipay_http,
    )
    request = in_app(USER_ID)
    with pytest.raises(GatewayError, match="unsigned"):
        await impostor.create_payment(request)
    answer = await alipay_http.get(f"{alipay_simulator.url}/_control/trades/{request.out_trade_no}")
    assert answer.status_code == 404


@pytest.mark.parametrize("payer_id", [None, "", "2088 1021", "o" * 200])
async def test_a_payer_id_that_is_not_alipays_is_refused_before_any_call(
    alipay_provider: AlipayProvider, payer_id: str | None
) -> None:
    with pytest.raises(GatewayError, match="user id or OpenID"):
        await alipay_provider.create_payment(in_app(payer_id))


async def test_the_payer_pays_in_the_app_and_alipay_notifies(
    alipay_provider: AlipayProvider,
    alipay_http: httpx.AsyncClient,
    alipay_simulator: RunningSimulator,
    notify_receiver: tuple[NotifyReceiver, str],
) -> None:
    receiver, notify_url = notify_receiver
    request = in_app(OPEN_ID, notify_url)
    action = await alipay_provider.create_payment(request)
    cancelled = await alipay_http.post(
        f"{alipay_simulator.url}/_control/trade-pay/{action.trade_no}", data={"outcome": "cancel"}
    )
    assert cancelled.json()["resultCode"] == "6001"
    assert (await alipay_provider.query(request.out_trade_no)).state is AttemptState.PENDING
    paid = await alipay_http.post(
        f"{alipay_simulator.url}/_control/trade-pay/{action.trade_no}", data={"outcome": "success"}
    )
    assert paid.json()["resultCode"] == "9000"
    (notification,) = await receiver.wait_for(1)
    event = await alipay_provider.parse_notification(notification)
    assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
    assert (event.out_trade_no, event.amount_fen, event.provider_trade_no) == (
        request.out_trade_no,
        4200,
        action.trade_no,
    )
    # The OpenID is the payer's identity: it is not kept with the event.
    assert OPEN_ID not in repr(event.detail)
    queried = await alipay_provider.query(request.out_trade_no)
    assert queried.state is AttemptState.SUCCEEDED
    assert [e.event_id for e in queried.events] == [event.event_id]
