"""Counter sales and mini-program pay through branchpay's API, against the WeChat Pay simulator.

branchpay (real app, uvicorn, store) has branch zj on a WeChat Pay merchant
pointing at the simulator, with a fast counter pace.

In the branch's mini program (JSAPI), the page learns from ``paymentOptions``
that the payer's openid is needed, is refused with a typed error without it,
and with it gets the ``wx.requestPayment`` parameters, whose ``paySign`` the
merchant's public key verifies over the documented fields; WeChat Pay's callback
then pays the order.

At the counter, a clerk scans a WeChat
payment code (``startPayment`` with ``PAYMENT_CODE`` and no provider: the code
names WeChat Pay): paid at once; the payer confirms after a few polls; the
payer never confirms, so the sale is reversed (WeChat Pay first refuses the
reverse while the payer is confirming), nothing stays taken and the order is
not paid.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.hashes import SHA256

from providers.kit.loopback import LoopbackServer
from providers.wechatpay.driver import WechatpayDriver
from tests.conftest import RunningService
from tests.counter_support import COUNTER, new_order, order_of, wait_for
from tests.counter_support import charged as charge
from tests.providers.notify_support import post_notification
from tests.providers.wechatpay.support import (
    APPID,
    KEY_SETTINGS,
    PLATFORM_KEY_ID,
    merchant,
    session_keys,
    simulator_app,
    write_key_files,
)

PLUGINS_TOML = f"""
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.wechatpay]
enabled = true
mchid = "1900000109"
appid = "wxd678efh567hg6787"
{KEY_SETTINGS}gateway = "{{gateway}}"
backoff_seconds = 0.01
"""


@pytest.fixture
def gateway_url() -> Iterator[str]:
    keys = session_keys()
    app = simulator_app(
        merchant(keys),
    )
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
def driver(gateway_url: str) -> WechatpayDriver:
    keys = session_keys()
    return WechatpayDriver(
        gateway_url,
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], gateway_url: str
) -> RunningService:
    write_key_files(tmp_path)
    return start_service(PLUGINS_TOML, gateway=gateway_url, **COUNTER)


def taken_fen(gateway_url: str, out_trade_no: str) -> int:
    answer = httpx.get(f"{gateway_url}/control/payments/{out_trade_no}/taken")
    answer.raise_for_status()
    return int(answer.json()["taken_fen"])


def test_a_wechat_code_paid_at_once_pays_the_order(
    branchpay: RunningService, driver: WechatpayDriver, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    started = charge(branchpay, order_id, driver.payment_code("pay"))
    payment = started["payment"]
    assert (payment["provider"], payment["status"], started["action"]["kind"]) == (
        "wechatpay",
        "SUCCEEDED",
        "NONE",
    )
    assert order_of(branchpay, order_id)["status"] == "PAID"
    assert taken_fen(gateway_url, payment["outTradeNo"]) == payment["amount"]["amountFen"]
    assert (
        branchpay.db["payment_events"].count_documents({"outTradeNo": payment["outTradeNo"]}) == 1
    )


def test_a_payer_confirming_on_the_phone_is_polled_until_paid(
    branchpay: RunningService, driver: WechatpayDriver, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    payment = charge(branchpay, order_id, driver.payment_code("confirm"))["payment"]
    assert (payment["provider"], payment["status"]) == ("wechatpay", "PENDING")
    wait_for(lambda: order_of(branchpay, order_id)["status"] == "PAID")
    (seen,) = order_of(branchpay, order_id)["payments"]
    assert seen["status"] == "SUCCEEDED" and seen["reversal"] is None
    assert taken_fen(gateway_url, payment["outTradeNo"]) == payment["amount"]["amountFen"]
    assert (
        branchpay.db["payment_events"].count_documents({"outTradeNo": payment["outTradeNo"]}) == 1
    )


def test_a_sale_never_confirmed_is_reversed_with_nothing_taken_and_the_order_unpaid(
    branchpay: RunningService, driver: WechatpayDriver, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    payment = charge(branchpay, order_id, driver.payment_code("never"))["payment"]
    assert payment["status"] == "PENDING"

    def reversed_() -> dict[str, Any] | None:
        (seen,) = order_of(branchpay, order_id)["payments"]
        return seen if seen["reversal"] == "DONE" else None

    seen = wait_for(reversed_)
    assert seen["status"] == "CLOSED"
    assert order_of(branchpay, order_id)["status"] == "PENDING_PAYMENT"
    assert taken_fen(gateway_url, payment["outTradeNo"]) == 0
    assert (
        branchpay.db["payment_events"].count_documents({"outTradeNo": payment["outTradeNo"]}) == 0
    )
    # The clerk scans a new code; that one pays the order.
    again = charge(branchpay, order_id, driver.payment_code("pay"))
    assert again["payment"]["status"] == "SUCCEEDED"
    assert order_of(branchpay, order_id)["status"] == "PAID"


OPTIONS = """
query($id: ID!, $known: Boolean!) {
  order(id: $id) { paymentOptions(payerIdKnown: $known) { method available reason needs } }
}
"""
START_IN_APP = """
mutation($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { status outTradeNo }
    action { kind clientParams }
    userErrors { field code }
  }
}
"""
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def test_a_mini_program_payer_pays_with_the_signed_request_payment_parameters(
    branchpay: RunningService, driver: WechatpayDriver
) -> None:
    order_id = new_order(branchpay)

    def jsapi_option(known: bool) -> dict[str, Any]:
        options = branchpay.client.data(OPTIONS, {"id": order_id, "known": known})["order"]
        (option,) = [o for o in options["paymentOptions"] if o["method"] == "JSAPI"]
        return dict(option)

    assert jsapi_option(False) == {
        "method": "JSAPI",
        "available": False,
        "reason": "PAYER_ID_REQUIRED",
        "needs": ["PAYER_ID"],
    }
    assert jsapi_option(True)["available"] is True

    def start(**extra: Any) -> dict[str, Any]:
        payload = {"orderId": order_id, "provider": "wechatpay", "method": "JSAPI", **extra}
        started: dict[str, Any] = branchpay.client.data(START_IN_APP, {"input": payload})[
            "startPayment"
        ]
        return started

    assert start()["userErrors"] == [{"field": ["payerId"], "code": "PAYER_ID_REQUIRED"}]
    assert start(payerId="not an openid!")["userErrors"] == [
        {"field": ["payerId"], "code": "INVALID_PAYER_ID"}
    ]
    assert branchpay.db["payments"].count_documents({}) == 0

    started = start(payerId=OPENID)
    assert started["userErrors"] == []
    assert started["action"]["kind"] == "REQUEST_PAYMENT"
    params = json.loads(started["action"]["clientParams"])
    assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert (params["appId"], params["signType"]) == (APPID, "RSA")
    assert params["package"].startswith("prepay_id=")
    # As the client checks it: SHA256withRSA over appId, timeStamp, nonceStr and package,
    # each followed by a line feed, with the merchant's key.
    fields = (params["appId"], params["timeStamp"], params["nonceStr"], params["package"])
    session_keys().merchant.public_key().verify(
        base64.b64decode(params["paySign"]),
        "".join(f"{value}\n" for value in fields).encode(),
        PKCS1v15(),
        SHA256(),
    )
    # The openid is the payer's; it is not kept on the payment.
    stored = branchpay.db["payments"].find_one({"outTradeNo": started["payment"]["outTradeNo"]})
    assert stored is not None and OPENID not in json.dumps(stored, default=str)

    callback = asyncio.run(driver.settle(started["payment"]["outTradeNo"], "success"))
    assert callback is not None
    answer = post_notification(
        branchpay,
        "wechatpay",
        callback.body,
        content_type="application/json",
        headers=dict(callback.headers),
    )
    assert answer.status_code == 200
    assert order_of(branchpay, order_id)["status"] == "PAID"
