"""Alipay third-party app authorization (第三方应用授权): a service provider's app for a merchant's.

One simulator knows a service provider's (ISV's) app and two merchant apps that
authorized it, each with its app_auth_token. A branch signs as the ISV's app and
sends its merchant's token: the trades are the merchant app's, a notification of
the other merchant's app (same ISV app, same key) is kept aside, and the token
never shows (so PAGE, WAP and APP, whose signed request goes to the payer, are
refused in this mode).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from api.config.model import ConfigError
from api.config.validate import load_config
from api.plugin import private_key_pem, public_key_pem
from api.plugins.contract import (
    AttemptState,
    EventKind,
    GatewayError,
    NotificationMismatch,
    PaymentMethod,
    PaymentRequest,
)
from providers.alipay import AlipayProvider, AlipaySettings
from providers.alipay.driver import AlipayGatewayDriver, notification_request
from providers.alipay.simulator import create_app
from providers.kit.loopback import LoopbackServer
from tests.providers.alipay.support import (
    SELLER_ID,
    alipay_http,
    app_key,
    platform_key,
    settings_for,
)

__all__ = ["alipay_http"]

ISV_APP_ID = "2021000000000900"
ZJ_APP_ID = "2021000000000901"
BJ_APP_ID = "2021000000000902"
ZJ_TOKEN = "202612BB" + "z" * 32
BJ_TOKEN = "202612BB" + "b" * 32


@pytest.fixture(scope="module")
def isv_simulator() -> Iterator[str]:
    app = create_app(
        apps={ISV_APP_ID: app_key().public_key()},
        alipay_private_key=platform_key(),
        seller_id=SELLER_ID,
        app_auth_tokens={ZJ_TOKEN: (ISV_APP_ID, ZJ_APP_ID), BJ_TOKEN: (ISV_APP_ID, BJ_APP_ID)},
    )
    with LoopbackServer(app) as server:
        yield server.url


def isv_settings(gateway: str, **overrides: Any) -> AlipaySettings:
    values: dict[str, Any] = {
        "app_id": ISV_APP_ID,
        "auth_app_id": ZJ_APP_ID,
        "app_auth_token": ZJ_TOKEN,
        "seller_id": SELLER_ID,
    }
    values.update(overrides)
    return settings_for(gateway, **values)


def isv_provider(url: str, http: httpx.AsyncClient, branch: str = "zj", **overrides: Any) -> Any:
    return AlipayProvider(isv_settings(f"{url}/gateway.do", **overrides), branch=branch, http=http)


def qr_request() -> PaymentRequest:
    return PaymentRequest(
        out_trade_no="zj" + uuid.uuid4().hex[:20],
        amount_fen=3300,
        currency="CNY",
        subject="Through a service provider",
        method=PaymentMethod.QR_CODE,
        notify_url="https://branchpay.example/notify/alipay/zj",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )


def test_the_authorization_is_whole_and_the_token_secret() -> None:
    assert AlipayProvider.sub_merchant_settings == ("auth_app_id", "app_auth_token")
    with pytest.raises(ValidationError, match="both auth_app_id and app_auth_token"):
        isv_settings("http://127.0.0.1:9/gateway.do", app_auth_token=None)
    with pytest.raises(ValidationError, match="both auth_app_id and app_auth_token"):
        isv_settings("http://127.0.0.1:9/gateway.do", auth_app_id=None)
    settings = isv_settings("http://127.0.0.1:9/gateway.do")
    assert isinstance(settings.app_auth_token, SecretStr)
    assert ZJ_TOKEN not in repr(settings) + settings.model_dump_json()


async def test_calls_with_the_token_act_for_the_merchants_app(
    isv_simulator: str, alipay_http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = isv_provider(isv_simulator, alipay_http)
    request = qr_request()
    await provider.create_payment(request)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.PENDING
    trade = (
        await alipay_http.get(f"{isv_simulator}/_control/trades/{request.out_trade_no}")
    ).json()
    assert (trade["app_id"], trade["isv_app_id"]) == (ZJ_APP_ID, ISV_APP_ID)
    # The service provider's app alone, without the merchant's token, sees no such trade.
    direct = AlipayProvider(
        settings_for(f"{isv_simulator}/gateway.do", app_id=ISV_APP_ID),
        branch="zj",
        http=alipay_http,
    )
    assert (await direct.query(request.out_trade_no)).state is AttemptState.UNKNOWN
    # Nor does another merchant's token.
    other = isv_provider(
        isv_simulator, alipay_http, "bj", auth_app_id=BJ_APP_ID, app_auth_token=BJ_TOKEN
    )
    assert (await other.query(request.out_trade_no)).state is AttemptState.UNKNOWN
    await provider.close(request.out_trade_no)
    assert (await provider.query(request.out_trade_no)).state is AttemptState.CLOSED
    assert caplog.records and ZJ_TOKEN not in caplog.text


async def test_a_token_alipay_did_not_grant_is_refused(
    isv_simulator: str, alipay_http: httpx.AsyncClient
) -> None:
    provider = isv_provider(isv_simulator, alipay_http, app_auth_token="202612BB" + "x" * 32)
    with pytest.raises(GatewayError, match="unsigned") as caught:
        await provider.create_payment(qr_request())
    assert "x" * 32 not in str(caught.value)


async def test_a_notification_for_another_authorized_merchant_app_is_a_mismatch(
    isv_simulator: str, alipay_http: httpx.AsyncClient
) -> None:
    zj = isv_provider(isv_simulator, alipay_http)
    bj = isv_provider(
        isv_simulator, alipay_http, "bj", auth_app_id=BJ_APP_ID, app_auth_token=BJ_TOKEN
    )
    driver = AlipayGatewayDriver(isv_simulator, alipay_http)
    request = qr_request()
    await zj.create_payment(request)
    notification = await driver.settle(request.out_trade_no, "success")
    assert notification is not None
    event = await zj.parse_notification(notification)
    assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
    # Same ISV app_id and signature, but bj's merchant app did not open this trade.
    with pytest.raises(NotificationMismatch, match="auth_app_id"):
        await bj.parse_notification(notification)
    resigned = await alipay_http.post(
        f"{isv_simulator}/_control/notifications/resign",
        data={"body": notification.body.decode(), "auth_app_id": BJ_APP_ID},
    )
    with pytest.raises(NotificationMismatch, match="auth_app_id"):
        await zj.parse_notification(notification_request(resigned.json()["notification"]))


@pytest.mark.parametrize("method", [PaymentMethod.PAGE, PaymentMethod.WAP, PaymentMethod.APP])
async def test_methods_that_hand_the_signed_request_to_the_payer_are_refused(
    isv_simulator: str, alipay_http: httpx.AsyncClient, method: PaymentMethod
) -> None:
    # Their URL or order string carries every common parameter, the token included.
    request = qr_request()
    with pytest.raises(GatewayError, match="app_auth_token") as caught:
        await isv_provider(isv_simulator, alipay_http).create_payment(
            PaymentRequest(**{**{f: getattr(request, f) for f in FIELDS}, "method": method})
        )
    assert ZJ_TOKEN not in str(caught.value)


async def test_counter_and_in_app_sales_go_through_the_merchants_app(
    isv_simulator: str, alipay_http: httpx.AsyncClient
) -> None:
    provider = isv_provider(isv_simulator, alipay_http)
    driver = AlipayGatewayDriver(isv_simulator, alipay_http)
    request = qr_request()
    counter = PaymentRequest(
        **{
            **{f: getattr(request, f) for f in FIELDS},
            "method": PaymentMethod.PAYMENT_CODE,
            "auth_code": driver.payment_code("pay"),
        }
    )
    assert (await provider.pay_with_code(counter)).state is AttemptState.SUCCEEDED
    reversed_ = await provider.reverse(counter.out_trade_no)
    assert reversed_.message == "refund" and await driver.taken_fen(counter.out_trade_no) == 0
    in_app = PaymentRequest(
        **{
            **{f: getattr(request, f) for f in FIELDS},
            "out_trade_no": "zj" + uuid.uuid4().hex[:20],
            "method": PaymentMethod.JSAPI,
            "payer_id": "2088102177846880",
        }
    )
    action = await provider.create_payment(in_app)
    assert action.trade_no and ZJ_TOKEN not in repr(action)
    for sale in (counter, in_app):
        trade = (
            await alipay_http.get(f"{isv_simulator}/_control/trades/{sale.out_trade_no}")
        ).json()
        assert (trade["app_id"], trade["isv_app_id"]) == (ZJ_APP_ID, ISV_APP_ID)


FIELDS = ("out_trade_no", "amount_fen", "currency", "subject", "notify_url", "expires_at")


def test_plugins_toml_declares_the_isv_account_once_and_offers_only_server_side_methods(
    tmp_path: Path,
) -> None:
    (tmp_path / "isv.pem").write_text(private_key_pem(app_key()))
    (tmp_path / "alipay.pem").write_text(public_key_pem(platform_key().public_key()))
    (tmp_path / "zj.token").write_text(ZJ_TOKEN + "\n")
    text = f"""
[accounts.zj-isv.alipay]
app_id = "{ISV_APP_ID}"
private_key = {{ file = "isv.pem" }}
alipay_public_key = {{ file = "alipay.pem" }}
gateway = "http://127.0.0.1:9/gateway.do"

[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.alipay]
enabled = true
account = "zj-isv"
auth_app_id = "{ZJ_APP_ID}"
app_auth_token = {{ file = "zj.token" }}
"""
    path = tmp_path / "plugins.toml"
    path.write_text(text)
    config = load_config(path, {"alipay": AlipayProvider}).branches["zj"].providers["alipay"]
    assert config.account == "zj-isv"
    settings = config.settings
    assert isinstance(settings, AlipaySettings)
    assert settings.app_id == ISV_APP_ID and settings.auth_app_id == ZJ_APP_ID
    assert settings.app_auth_token is not None
    assert settings.app_auth_token.get_secret_value() == ZJ_TOKEN
    # What would hand the token to the payer's device is not offered at all.
    assert config.methods == (
        PaymentMethod.QR_CODE,
        PaymentMethod.PAYMENT_CODE,
        PaymentMethod.JSAPI,
    )

    path.write_text(
        text.replace("enabled = true\n", 'enabled = true\nmethods = ["QR_CODE", "PAGE"]\n')
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path, {"alipay": AlipayProvider})
    assert refused.value.problems == [
        f"{path}: [branches.zj.providers.alipay] methods: 'PAGE' not among QR_CODE, PAYMENT_CODE,"
        " JSAPI"
    ]
    assert ZJ_TOKEN not in str(refused.value)
