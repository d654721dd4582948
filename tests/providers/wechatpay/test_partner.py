"""Partner (服务商) mode: a branch paid through a service provider's account for its sub-merchant.

With ``sub_mchid`` set, the adapter calls the partner APIs
(``/v3/pay/partner/transactions/...``) with ``sp_appid``/``sp_mchid`` (the
configured ``appid``/``mchid``) and the sub-merchant's ids, and a callback must
name both the service provider and this sub-merchant: another sub-merchant's
is a NotificationMismatch. The whole conformance kit runs in this mode too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import ValidationError

from api.plugins.contract import (
    ActionKind,
    NotificationMismatch,
    PaymentMethod,
    PaymentRequest,
    new_reference,
)
from providers.kit.conformance import ProviderConformance
from providers.kit.loopback import LoopbackServer
from providers.wechatpay import WechatpayProvider
from providers.wechatpay.driver import WechatpayDriver
from providers.wechatpay.simulator import Gateway
from tests.providers.wechatpay.support import (
    APPID,
    BRANCH,
    MCHID,
    PLATFORM_KEY_ID,
    merchant,
    session_keys,
    settings,
    simulator_app,
)

SUB_MCHID = "1900000201"
SUB_APPID = "wxsub00000000201"
OTHER_SUB_MCHID = "1900000202"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


@pytest.fixture(scope="module")
def simulator() -> Iterator[tuple[str, Gateway]]:
    keys = session_keys()
    provider_account = replace(
        merchant(keys), sub_merchants={SUB_MCHID: SUB_APPID, OTHER_SUB_MCHID: None}
    )
    app = simulator_app(
        provider_account,
    )
    with LoopbackServer(app) as server:
        yield server.url, app.state.gateway


@pytest.fixture(scope="module")
def simulator_url(simulator: tuple[str, Gateway]) -> str:
    return simulator[0]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def partner(url: str, http: httpx.AsyncClient, **ids: str) -> WechatpayProvider:
    config = settings(session_keys(), url, **({"sub_mchid": SUB_MCHID} | ids))
    return WechatpayProvider(config, branch=BRANCH, http=http)


@pytest.fixture
def provider(simulator_url: str, http: httpx.AsyncClient) -> WechatpayProvider:
    return partner(simulator_url, http, sub_appid=SUB_APPID)


@pytest.fixture
def gateway(simulator_url: str) -> WechatpayDriver:
    keys = session_keys()
    return WechatpayDriver(
        simulator_url,
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


@pytest.fixture
def payer_id() -> str:
    return OPENID


class TestWechatpayPartnerConformance(ProviderConformance):
    pass


def qr_order(method: PaymentMethod = PaymentMethod.QR_CODE) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=new_reference(),
        amount_fen=5900,
        currency="CNY",
        subject="China Mobile Zhejiang 5G plan",
        method=method,
        notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        payer_id=OPENID if method is PaymentMethod.JSAPI else None,
    )


async def test_orders_go_to_the_partner_api_with_the_sub_merchant(
    provider: WechatpayProvider, simulator: tuple[str, Gateway]
) -> None:
    request = qr_order()
    await provider.create_payment(request)
    attempt = simulator[1].attempts[request.out_trade_no]
    assert (attempt.sub_mchid, attempt.sub_appid) == (SUB_MCHID, SUB_APPID)
    assert {k: attempt.order[k] for k in ("sp_mchid", "sp_appid", "sub_mchid", "sub_appid")} == {
        "sp_mchid": MCHID,
        "sp_appid": APPID,
        "sub_mchid": SUB_MCHID,
        "sub_appid": SUB_APPID,
    }
    assert "mchid" not in attempt.order and "appid" not in attempt.order
    assert not provider.supports_bills


async def test_jsapi_pays_under_the_app_the_openid_belongs_to(
    provider: WechatpayProvider,
    simulator_url: str,
    http: httpx.AsyncClient,
    simulator: tuple[str, Gateway],
) -> None:
    own_app = await provider.create_payment(request := qr_order(PaymentMethod.JSAPI))
    assert own_app.kind is ActionKind.REQUEST_PAYMENT and own_app.client_params is not None
    assert own_app.client_params["appId"] == SUB_APPID
    assert simulator[1].attempts[request.out_trade_no].order["payer"] == {"sub_openid": OPENID}
    # A sub-merchant without an AppID of its own: the payer is under the provider's app.
    sp_app = partner(simulator_url, http)
    action = await sp_app.create_payment(other := qr_order(PaymentMethod.JSAPI))
    assert action.client_params is not None and action.client_params["appId"] == APPID
    assert simulator[1].attempts[other.out_trade_no].order["payer"] == {"sp_openid": OPENID}


async def test_a_callback_for_another_sub_merchant_is_a_mismatch(
    provider: WechatpayProvider,
    simulator_url: str,
    http: httpx.AsyncClient,
    gateway: WechatpayDriver,
) -> None:
    neighbour = partner(simulator_url, http, sub_mchid=OTHER_SUB_MCHID)
    request = qr_order()
    await neighbour.create_payment(request)
    notification = await gateway.settle(request.out_trade_no, "success")
    assert notification is not None and await neighbour.parse_notification(notification)
    with pytest.raises(NotificationMismatch, match="sub_mchid"):
        await provider.parse_notification(notification)
    # The service provider's own direct account does not take its sub-merchants' callbacks.
    direct = WechatpayProvider(settings(session_keys(), simulator_url), branch=BRANCH, http=http)
    with pytest.raises(NotificationMismatch, match="mchid"):
        await direct.parse_notification(notification)


async def test_a_callback_of_another_service_provider_is_a_mismatch(
    provider: WechatpayProvider,
    gateway: WechatpayDriver,
    simulator_url: str,
    http: httpx.AsyncClient,
) -> None:
    request = qr_order()
    await provider.create_payment(request)
    genuine = await gateway.settle(request.out_trade_no, "success")
    assert genuine is not None
    assert await provider.parse_notification(genuine) is not None
    other_provider = partner(simulator_url, http, mchid="1900000999", sub_appid=SUB_APPID)
    with pytest.raises(NotificationMismatch, match="sp_mchid"):
        await other_provider.parse_notification(genuine)


def test_sub_appid_needs_sub_mchid(simulator_url: str) -> None:
    with pytest.raises(ValidationError, match="give sub_mchid too"):
        settings(session_keys(), simulator_url, sub_appid=SUB_APPID)
    assert WechatpayProvider.sub_merchant_settings == ("sub_mchid", "sub_appid")
