"""Cross-checks with code nobody here wrote: the community SDK wechatpayv3.

Each side accepts what the other signs and rejects what was tampered with:
the SDK as a merchant talks to our simulator (which checks its Authorization
header, and whose signed replies the SDK verifies), the SDK's callback
handler verifies and decrypts our simulator's callbacks, and our adapter
verifies callbacks and matches signatures produced by the SDK's own helpers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.hashes import SHA256
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import build_authorization, load_private_key, rsa_sign, rsa_verify

from api.plugins.contract import (
    ActionKind,
    AttemptState,
    EventKind,
    GatewayError,
    NotificationRejected,
    NotificationRequest,
    PaymentMethod,
    PaymentRequest,
)
from providers.kit.loopback import LoopbackServer
from providers.wechatpay import WechatpayProvider, signing
from providers.wechatpay.driver import WechatpayDriver
from providers.wechatpay.simulator import Gateway
from tests.providers.wechatpay.support import (
    APPID,
    BRANCH,
    CERT_SERIAL_NO,
    MCHID,
    PLATFORM_KEY_ID,
    Keys,
    merchant,
    session_keys,
    settings,
    simulator_app,
)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return session_keys()


@pytest.fixture(scope="module")
def simulator(keys: Keys) -> Iterator[tuple[str, Gateway]]:
    app = simulator_app(
        merchant(keys),
    )
    with LoopbackServer(app) as server:
        yield server.url, app.state.gateway


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(
    keys: Keys, simulator: tuple[str, Gateway], http: httpx.AsyncClient
) -> WechatpayProvider:
    return WechatpayProvider(settings(keys, simulator[0]), branch=BRANCH, http=http)


@pytest.fixture
def driver(keys: Keys, simulator: tuple[str, Gateway]) -> WechatpayDriver:
    return WechatpayDriver(
        simulator[0],
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


def sdk(keys: Keys, gateway: str, *, merchant_pem: str | None = None) -> WeChatPay:
    client = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=MCHID,
        private_key=merchant_pem or keys.merchant_pem,
        cert_serial_no=CERT_SERIAL_NO,
        appid=APPID,
        apiv3_key=keys.apiv3_key,
        notify_url="https://branchpay.example/notify/wechatpay/zj",
        public_key=keys.platform_public_pem,
        public_key_id=PLATFORM_KEY_ID,
        timeout=(5, 5),
    )
    # The SDK has no gateway option; its host lives on the core object.
    client._core._gate_way = gateway
    return client


def new_no() -> str:
    return "sdk" + uuid.uuid4().hex[:20]


async def in_thread(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The SDK blocks (requests); keep the event loop free while it runs."""
    return await asyncio.to_thread(call, *args, **kwargs)


# -- the SDK as merchant against our simulator ---------------------------------------


async def test_sdk_orders_queries_refunds_and_closes_on_our_simulator(
    keys: Keys, simulator: tuple[str, Gateway], provider: WechatpayProvider
) -> None:
    """Our simulator accepts the SDK's signed requests; the SDK verifies every signed reply."""
    url, gateway = simulator
    client = sdk(keys, url)
    out_trade_no = new_no()
    code, message = await in_thread(
        client.pay, description="Top-up 100", out_trade_no=out_trade_no, amount={"total": 10000}
    )
    assert code == 200, message
    assert json.loads(message)["code_url"].endswith(f"/pay/{out_trade_no}")

    code, message = await in_thread(client.query, out_trade_no=out_trade_no)
    assert code == 200 and json.loads(message)["trade_state"] == "NOTPAY"
    # Our adapter sees the same order the SDK opened.
    assert (await provider.query(out_trade_no)).state is AttemptState.PENDING

    gateway.settle(out_trade_no, "success")
    code, message = await in_thread(
        client.refund,
        out_refund_no="r" + out_trade_no,
        amount={"refund": 2500, "total": 10000, "currency": "CNY"},
        out_trade_no=out_trade_no,
    )
    assert code == 200 and json.loads(message)["status"] == "PROCESSING"
    assert gateway.attempts[out_trade_no].refunded() == 2500

    unpaid = new_no()
    await in_thread(client.pay, description="Plan", out_trade_no=unpaid, amount={"total": 1})
    code, _ = await in_thread(client.close, out_trade_no=unpaid)
    assert code == 204
    assert gateway.attempts[unpaid].state == "CLOSED"


async def test_our_simulator_refuses_the_sdk_signing_with_a_wrong_key(
    keys: Keys, simulator: tuple[str, Gateway]
) -> None:
    client = sdk(keys, simulator[0], merchant_pem=keys.stranger_pem)
    code, message = await in_thread(
        client.pay, description="Plan", out_trade_no=new_no(), amount={"total": 100}
    )
    assert code == 401 and json.loads(message)["code"] == "SIGN_ERROR"


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [
        ("forged", "failed to verify the signature"),
        # Without the Wechatpay-* headers the SDK trips over the missing signature type.
        ("unsigned", "does not support this algorithm"),
    ],
)
async def test_the_sdk_refuses_a_reply_not_signed_by_the_platform(
    keys: Keys, simulator: tuple[str, Gateway], kind: str, complaint: str
) -> None:
    url, gateway = simulator
    async with httpx.AsyncClient() as control:
        await control.post(f"{url}/control/faults", json={"kind": kind, "path": "/v3/pay"})
    client = sdk(keys, url)
    with pytest.raises(Exception, match=complaint):
        await in_thread(client.pay, description="Plan", out_trade_no=new_no(), amount={"total": 1})
    assert gateway.faults.pending == []


# -- callbacks ----------------------------------------------------------------------------


async def paid_notification(
    provider: WechatpayProvider, driver: WechatpayDriver
) -> tuple[str, NotificationRequest]:
    out_trade_no = new_no()
    await provider.create_payment(
        PaymentRequest(
            out_trade_no=out_trade_no,
            amount_fen=12345,
            currency="CNY",
            subject="Handset",
            method=PaymentMethod.QR_CODE,
            notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
            expires_at=datetime.now(UTC) + timedelta(minutes=30),
        )
    )
    notification = await driver.settle(out_trade_no, "success")
    assert notification is not None
    return out_trade_no, notification


async def test_the_sdk_accepts_our_callbacks_and_rejects_spoiled_ones(
    keys: Keys, simulator: tuple[str, Gateway], provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    out_trade_no, genuine = await paid_notification(provider, driver)
    client = sdk(keys, simulator[0])
    parsed = client.callback(dict(genuine.headers), genuine.body)
    assert parsed is not None and parsed["event_type"] == "TRANSACTION.SUCCESS"
    assert parsed["resource"]["out_trade_no"] == out_trade_no
    assert parsed["resource"]["amount"]["total"] == 12345
    assert parsed["resource"]["mchid"] == MCHID and parsed["resource"]["appid"] == APPID
    for spoiled in (driver.forge(genuine), driver.tamper(genuine)):
        assert client.callback(dict(spoiled.headers), spoiled.body) is None
        with pytest.raises(NotificationRejected):
            await provider.parse_notification(spoiled)


async def test_our_adapter_accepts_a_callback_signed_by_the_sdk(
    keys: Keys, provider: WechatpayProvider, driver: WechatpayDriver
) -> None:
    out_trade_no, genuine = await paid_notification(provider, driver)
    timestamp, nonce = str(int(time.time())), "SDKNONCE0123456789"
    body = genuine.body.decode()
    signature = rsa_sign(load_private_key(keys.platform_pem), f"{timestamp}\n{nonce}\n{body}\n")
    headers = {
        "wechatpay-timestamp": timestamp,
        "wechatpay-nonce": nonce,
        "wechatpay-signature": signature,
        "wechatpay-serial": PLATFORM_KEY_ID,
        "wechatpay-signature-type": "WECHATPAY2-SHA256-RSA2048",
    }
    signed_by_sdk = replace(genuine, headers=headers)
    event = await provider.parse_notification(signed_by_sdk)
    assert event is not None and event.kind is EventKind.PAYMENT_SUCCEEDED
    assert (event.out_trade_no, event.amount_fen) == (out_trade_no, 12345)
    with pytest.raises(NotificationRejected, match="does not verify"):
        await provider.parse_notification(driver.tamper(signed_by_sdk))
    wrong_signer = rsa_sign(load_private_key(keys.stranger_pem), f"{timestamp}\n{nonce}\n{body}\n")
    with pytest.raises(NotificationRejected, match="does not verify"):
        await provider.parse_notification(
            replace(signed_by_sdk, headers=headers | {"wechatpay-signature": wrong_signer})
        )


def test_the_sdk_verifies_what_our_simulator_signs(
    keys: Keys, simulator: tuple[str, Gateway]
) -> None:
    body = b'{"code_url":"weixin://wxpay/bizpayurl?pr=abc"}'
    headers = simulator[1].signed_headers(body)
    public_key = keys.platform.public_key()
    args = (headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"])
    assert rsa_verify(*args, body.decode(), headers["Wechatpay-Signature"], public_key)
    assert not rsa_verify(*args, body.decode() + " ", headers["Wechatpay-Signature"], public_key)


# -- signatures made by both sides --------------------------------------------------------


def test_our_authorization_signature_equals_the_sdks(keys: Keys) -> None:
    """PKCS#1 v1.5 is deterministic: the same message and key give the same signature."""
    path = "/v3/pay/transactions/out-trade-no/sdk123?mchid=1900000109"
    data = {"mchid": MCHID, "note": "浙江移动"}
    header = build_authorization(
        path, "POST", MCHID, CERT_SERIAL_NO, load_private_key(keys.merchant_pem), data, "NONCE42"
    )
    params = signing.parse_authorization(header)
    assert params is not None
    body = json.dumps(data).encode()
    ours = signing.sign(
        keys.merchant, signing.request_message("POST", path, params["timestamp"], "NONCE42", body)
    )
    assert ours == params["signature"]
    assert signing.verify(
        keys.merchant.public_key(),
        signing.request_message("POST", path, params["timestamp"], "NONCE42", body),
        params["signature"],
    )
    assert not signing.verify(
        keys.merchant.public_key(),
        signing.request_message("POST", path, params["timestamp"], "NONCE42", body + b" "),
        params["signature"],
    )


async def test_our_app_payload_signature_equals_the_sdks(
    keys: Keys, simulator: tuple[str, Gateway], provider: WechatpayProvider
) -> None:
    action = await provider.create_payment(
        PaymentRequest(
            out_trade_no=new_no(),
            amount_fen=100,
            currency="CNY",
            subject="Top-up",
            method=PaymentMethod.APP,
            notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
        )
    )
    assert action.app_payload is not None
    payload = json.loads(action.app_payload)
    client = sdk(keys, simulator[0])
    expected = client.sign([APPID, payload["timestamp"], payload["noncestr"], payload["prepayid"]])
    assert payload["sign"] == expected


async def test_jsapi_pay_sign_verifies_as_the_client_checks_it(
    keys: Keys, simulator: tuple[str, Gateway], provider: WechatpayProvider
) -> None:
    """wx.requestPayment's parameters: paySign over appId, timeStamp, nonceStr, package."""
    openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    out_trade_no = new_no()
    action = await provider.create_payment(
        PaymentRequest(
            out_trade_no=out_trade_no,
            amount_fen=100,
            currency="CNY",
            subject="Top-up",
            method=PaymentMethod.JSAPI,
            notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
            payer_id=openid,
        )
    )
    assert action.kind is ActionKind.REQUEST_PAYMENT and action.client_params is not None
    params = dict(action.client_params)
    assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    attempt = simulator[1].attempts[out_trade_no]
    assert params["package"] == f"prepay_id={attempt.prepay_id}"
    assert attempt.order["payer"] == {"openid": openid} and attempt.trade_type == "JSAPI"
    assert (params["appId"], params["signType"]) == (APPID, "RSA")
    assert len(params["timeStamp"]) == 10 and params["timeStamp"].isdigit()
    # The SDK's own request-payment signer gives the same signature (PKCS#1 v1.5 is
    # deterministic), and the merchant's public key verifies it over the documented text.
    client = sdk(keys, simulator[0])
    fields = [params["appId"], params["timeStamp"], params["nonceStr"], params["package"]]
    assert params["paySign"] == client.sign(fields)
    message = "".join(f"{value}\n" for value in fields).encode()
    keys.merchant.public_key().verify(
        base64.b64decode(params["paySign"]), message, PKCS1v15(), SHA256()
    )
    with pytest.raises(InvalidSignature):
        keys.merchant.public_key().verify(
            base64.b64decode(params["paySign"]), message + b" ", PKCS1v15(), SHA256()
        )


async def test_jsapi_without_an_openid_is_not_sent(provider: WechatpayProvider) -> None:
    with pytest.raises(GatewayError, match="openid"):
        await provider.create_payment(
            PaymentRequest(
                out_trade_no=new_no(),
                amount_fen=100,
                currency="CNY",
                subject="Top-up",
                method=PaymentMethod.JSAPI,
                notify_url="http://127.0.0.1:9/notify/wechatpay/zj",
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )
