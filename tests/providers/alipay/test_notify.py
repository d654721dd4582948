"""Alipay notifications through a running branchpay: POST /notify/alipay/{branch}.

branchpay (real app, uvicorn, store) is configured through plugins.toml with
two branches on different Alipay apps, pointing at the Alipay simulator. A
QR-code attempt is started with GraphQL; then every kind of bad notification
is posted and must get Alipay's rejection reply and change nothing; genuine ones
of another attempt or another app are answered ``success``, kept aside in
notification_mismatches and change nothing; then the genuine one is accepted
with exactly ``success`` and pays the order once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from api.plugin import private_key_pem, public_key_pem
from providers.alipay.signing import notification_string, sign
from providers.alipay.simulator import create_app
from providers.kit.loopback import LoopbackServer
from tests.conftest import RunningService
from tests.providers import notify_support
from tests.providers.alipay.support import app_key, platform_key, rsa_key
from tests.providers.notify_support import order_state

ZJ_APP_ID = "2021000000000101"
BJ_APP_ID = "2021000000000202"

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

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.alipay]
enabled = true
app_id = "2021000000000202"
private_key = {{ file = "alipay-app.pem" }}
alipay_public_key = {{ file = "alipay-public.pem" }}
gateway = "{gateway}"

[branches.yn]
name = "China Telecom Yunnan"
province = "Yunnan"
operator = "China Telecom"

[branches.yn.providers.alipay]
enabled = false
app_id = "2021000000000303"
private_key = {{ file = "alipay-app.pem" }}
alipay_public_key = {{ file = "alipay-public.pem" }}
gateway = "{gateway}"
"""


@pytest.fixture
def gateway_url() -> Iterator[str]:
    app = create_app(
        apps={ZJ_APP_ID: app_key().public_key(), BJ_APP_ID: app_key().public_key()},
        alipay_private_key=platform_key(),
    )
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], gateway_url: str
) -> RunningService:
    (tmp_path / "alipay-app.pem").write_text(private_key_pem(app_key()))
    (tmp_path / "alipay-public.pem").write_text(public_key_pem(platform_key().public_key()))
    return start_service(PLUGINS_TOML, gateway=f"{gateway_url}/gateway.do")


def started_attempt(service: RunningService) -> tuple[str, str]:
    order_id, out_trade_no, action = notify_support.started_attempt(service, "alipay")
    assert action["kind"] == "QR_CODE" and action["qrCode"]
    return order_id, out_trade_no


def resigned(params: dict[str, str], key: Any = None) -> str:
    params = {k: v for k, v in params.items() if k != "sign"}
    params["sign"] = sign(key or platform_key(), notification_string(params))
    return urlencode(params)


def post(service: RunningService, body: str | bytes, branch: str = "zj") -> httpx.Response:
    response: httpx.Response = notify_support.post_notification(
        service, "alipay", body, branch=branch
    )
    return response


def test_bad_notifications_are_refused_and_change_nothing_then_the_genuine_one_pays(
    branchpay: RunningService, gateway_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    order_id, out_trade_no = started_attempt(branchpay)
    settled = httpx.post(
        f"{gateway_url}/_control/settle/{out_trade_no}", data={"outcome": "success", "deliver": "0"}
    )
    genuine_body: str = settled.json()["notification"]
    genuine = dict(parse_qsl(genuine_body))
    assert genuine["total_amount"] == "59.00"

    bad: dict[str, str | bytes] = {
        "unsigned": urlencode({k: v for k, v in genuine.items() if k != "sign"}),
        "forged": resigned(genuine, rsa_key("forger")),
        "tampered": urlencode(genuine | {"total_amount": "0.01"}),
        "malformed": "%%%&&==",
        "oversized": genuine_body + "&pad=" + "x" * 64 * 1024,
    }
    caplog.set_level(logging.WARNING)
    for case, body in bad.items():
        response = post(branchpay, body)
        assert response.status_code == 400 and response.text == "fail", (case, response.text)
        order = order_state(branchpay, order_id)
        assert order["status"] == "PENDING_PAYMENT", case
        assert [p["status"] for p in order["payments"]] == ["PENDING"], case
    # Genuinely signed but of no attempt of ours, or of another app: kept aside, answered
    # so Alipay stops, and nothing changes.
    mismatches = {
        "unknown out_trade_no": resigned(genuine | {"out_trade_no": "zz" + uuid.uuid4().hex[:20]}),
        "other app id": resigned(genuine | {"app_id": BJ_APP_ID}),
    }
    for case, body in mismatches.items():
        answer = post(branchpay, body)
        assert (answer.status_code, answer.text) == (200, "success"), case
        assert order_state(branchpay, order_id)["status"] == "PENDING_PAYMENT", case
    kept = {
        m["reason"]: m for m in branchpay.db["notification_mismatches"].find({"provider": "alipay"})
    }
    assert len(kept) == 2
    other_app = kept["app_id is not this branch's Alipay app"]
    assert other_app["branch"] == "zj" and other_app["outTradeNo"] is None
    logged = caplog.text
    assert logged.count(" for alipay/zj re") == len(bad) + len(mismatches)
    key_body = "".join(private_key_pem(app_key()).splitlines()[1:-1])
    assert key_body[:40] not in logged and genuine["sign"][:40] not in logged
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 0

    # The genuine notification for this branch's app, sent to another branch: not bj's app.
    elsewhere = post(branchpay, genuine_body, branch="bj")
    assert (elsewhere.status_code, elsewhere.text) == (200, "success")
    (at_bj,) = branchpay.db["notification_mismatches"].find({"branch": "bj"})
    assert at_bj["reason"] == "app_id is not this branch's Alipay app"
    assert order_state(branchpay, order_id)["status"] == "PENDING_PAYMENT"

    accepted = post(branchpay, genuine_body)
    assert (accepted.status_code, accepted.text) == (200, "success")
    replayed = post(branchpay, genuine_body)
    assert (replayed.status_code, replayed.text) == (200, "success")
    order = order_state(branchpay, order_id)
    assert order["status"] == "PAID"
    (payment,) = order["payments"]
    assert payment["status"] == "SUCCEEDED" and payment["providerTradeNo"] == genuine["trade_no"]
    assert not payment["flagged"]
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 1


def test_wrong_amount_is_kept_aside_not_paid(branchpay: RunningService, gateway_url: str) -> None:
    order_id, out_trade_no = started_attempt(branchpay)
    settled = httpx.post(
        f"{gateway_url}/_control/settle/{out_trade_no}", data={"outcome": "success", "deliver": "0"}
    )
    genuine = dict(parse_qsl(settled.json()["notification"]))
    answer = post(branchpay, resigned(genuine | {"total_amount": "0.59"}))
    # Validly signed, but not the attempt's amount: refused after the signature, answered so
    # Alipay stops re-sending it, kept aside, and nothing changes.
    assert (answer.status_code, answer.text) == (200, "success")
    order = order_state(branchpay, order_id)
    assert order["status"] == "PENDING_PAYMENT"
    (payment,) = order["payments"]
    assert payment["status"] == "PENDING" and not payment["flagged"]
    (kept,) = branchpay.db["notification_mismatches"].find({"outTradeNo": out_trade_no})
    assert kept["amountFen"] == 59 and "the attempt is for 5900 fen" in kept["reason"]
