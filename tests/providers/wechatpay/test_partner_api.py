"""A sub-merchant branch paid through a WeChat Pay service-provider account, through the API.

plugins.toml declares the service provider's account once
(``[accounts.ct-isv.wechatpay]``: its mchid, appid and keys); Zhejiang and
Beijing use it, each with its own ``sub_mchid``. branchpay (real app, uvicorn,
store) talks to the WeChat Pay simulator over HTTP: the partner APIs take the
attempt for Zhejiang's sub-merchant, the simulator calls back the URL naming the
branch and the account, and the order is paid. A callback genuinely sealed and
signed for the same service provider but for Beijing's sub-merchant, or for
another amount, is answered (so WeChat Pay stops), kept aside and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from api.plugin import NotificationRequest
from providers.kit.loopback import LoopbackServer
from providers.wechatpay.driver import WechatpayDriver
from providers.wechatpay.simulator import Gateway
from tests.conftest import RunningService
from tests.providers.notify_support import order_state, post_notification, started_attempt
from tests.providers.wechatpay.support import (
    APPID,
    KEY_SETTINGS,
    MCHID,
    PLATFORM_KEY_ID,
    merchant,
    session_keys,
    simulator_app,
    write_key_files,
)

ZJ_SUB_MCHID = "1900000201"
BJ_SUB_MCHID = "1900000202"
ACCEPTED = {"code": "SUCCESS", "message": "OK"}

PLUGINS_TOML = f"""
[accounts.ct-isv.wechatpay]
mchid = "{MCHID}"
appid = "{APPID}"
{KEY_SETTINGS}gateway = "{{gateway}}"
backoff_seconds = 0.01

[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.wechatpay]
enabled = true
account = "ct-isv"
sub_mchid = "{ZJ_SUB_MCHID}"

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.wechatpay]
enabled = true
account = "ct-isv"
sub_mchid = "{BJ_SUB_MCHID}"
"""


@pytest.fixture
def simulator() -> Iterator[tuple[str, Gateway]]:
    keys = session_keys()
    service_provider = replace(
        merchant(keys), sub_merchants={ZJ_SUB_MCHID: None, BJ_SUB_MCHID: None}
    )
    app = simulator_app(
        service_provider,
    )
    with LoopbackServer(app) as server:
        yield server.url, app.state.gateway


@pytest.fixture
def driver(simulator: tuple[str, Gateway]) -> WechatpayDriver:
    keys = session_keys()
    return WechatpayDriver(
        simulator[0],
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], simulator: tuple[str, Gateway]
) -> RunningService:
    write_key_files(tmp_path)
    return start_service(PLUGINS_TOML, gateway=simulator[0])


def post(service: RunningService, notification: NotificationRequest, path: str) -> httpx.Response:
    return post_notification(
        service,
        "wechatpay",
        notification.body,
        branch=path,
        content_type="application/json",
        headers=dict(notification.headers),
    )


def test_a_sub_merchant_branch_is_paid_through_the_account_and_checked_beyond_the_signature(
    branchpay: RunningService, driver: WechatpayDriver, simulator: tuple[str, Gateway]
) -> None:
    order_id, out_trade_no, action = started_attempt(branchpay, "wechatpay")
    assert action["qrCode"]
    stored = branchpay.db["payments"].find_one({"outTradeNo": out_trade_no})
    assert stored is not None and stored["account"] == "ct-isv"

    genuine = asyncio.run(driver.settle(out_trade_no, "success"))
    assert genuine is not None
    # Sealed for the service provider and Zhejiang's sub-merchant.
    assert ZJ_SUB_MCHID.encode() not in genuine.body  # the resource is encrypted

    # Posted to the branch's URL without the account, or to another branch's: not verified
    # with a key that is not the one configured for it.
    assert post(branchpay, genuine, "zj").status_code == 404
    assert post(branchpay, genuine, "zj/other-isv").status_code == 404

    # Same service provider, same platform key, genuine signature, but Beijing's
    # sub-merchant, or another amount: answered so WeChat Pay stops, kept, nothing changes.
    for change in ({"merchant": BJ_SUB_MCHID}, {"amount_fen": 100}):
        spoiled = asyncio.run(driver.resign(genuine, **change))  # type: ignore[arg-type]
        answer = post(branchpay, spoiled, "zj/ct-isv")
        assert (answer.status_code, answer.json()) == (200, ACCEPTED), change
        seen = order_state(branchpay, order_id)
        assert seen["status"] == "PENDING_PAYMENT", change
        assert [(p["status"], bool(p["flagged"])) for p in seen["payments"]] == [("PENDING", False)]
    kept = list(branchpay.db["notification_mismatches"].find({}, sort=[("receivedAt", 1)]))
    assert [(doc["provider"], doc["branch"]) for doc in kept] == [("wechatpay", "zj")] * 2
    assert "sub_mchid is not this branch's" in kept[0]["reason"]
    assert kept[1]["amountFen"] == 100
    assert branchpay.db["payment_events"].count_documents({}) == 0

    accepted = post(branchpay, genuine, "zj/ct-isv")
    assert (accepted.status_code, accepted.json()) == (200, ACCEPTED)
    order = order_state(branchpay, order_id)
    assert order["status"] == "PAID"
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 1
