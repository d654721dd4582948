"""UnionPay notifications through a running branchpay: POST /notify/unionpay/{branch}.

branchpay (real app, uvicorn, store) is configured through plugins.toml with
two branches on different UnionPay merchants, both pointing at the simulator.
A QR-code attempt is started with GraphQL; every kind of bad notification is
posted and must get UnionPay's rejection reply (HTTP 400), a log line without
secrets, and change nothing; genuinely signed ones that are not this branch's
(another merId, another attempt) are answered HTTP 200, kept aside in
notification_mismatches and change nothing; then the genuine one is accepted
with HTTP 200 and pays the order once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from providers.kit.loopback import LoopbackServer
from providers.unionpay import message, pki
from tests.conftest import RunningService
from tests.providers import notify_support
from tests.providers.notify_support import order_state
from tests.providers.unionpay.support import (
    CERT_SETTINGS,
    MER_ID,
    chain,
    other_chain,
    platform_signed,
    simulator_app,
    write_cert_files,
)

BJ_MER_ID = "898111111111111"

PLUGINS_TOML = f"""
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.unionpay]
enabled = true
mer_id = "777290058110048"
{CERT_SETTINGS}gateway = "{{gateway}}"

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.unionpay]
enabled = true
mer_id = "898111111111111"
{CERT_SETTINGS}gateway = "{{gateway}}"

[branches.yn]
name = "China Telecom Yunnan"
province = "Yunnan"
operator = "China Telecom"
"""


@pytest.fixture
def gateway_url() -> Iterator[str]:
    with LoopbackServer(simulator_app(MER_ID, BJ_MER_ID)) as server:
        yield server.url


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], gateway_url: str
) -> RunningService:
    write_cert_files(tmp_path)
    # Refund notifications the simulator sends on its own go to the discard port.
    return start_service(PLUGINS_TOML, gateway=gateway_url, public_url="http://127.0.0.1:9")


def started_attempt(service: RunningService) -> tuple[str, str, str]:
    order_id, out_trade_no, action = notify_support.started_attempt(service, "unionpay")
    assert action["kind"] == "QR_CODE" and action["qrCode"]
    return order_id, out_trade_no, action["qrCode"]


def settled(gateway_url: str, qr_code: str, out_trade_no: str) -> dict[str, str]:
    """Pay at the simulator without delivering; the signed back notification it made."""
    paid = httpx.post(
        qr_code, data={"outcome": "success", "deliver": "0"}, headers={"accept": "application/json"}
    )
    assert paid.json()["status"] == "success", paid.text
    body = httpx.get(f"{gateway_url}/control/notifications/{out_trade_no}").text
    return dict(parse_qsl(body, keep_blank_values=True))


def post(service: RunningService, body: str | bytes, branch: str = "zj") -> httpx.Response:
    response: httpx.Response = notify_support.post_notification(
        service, "unionpay", body, branch=branch
    )
    return response


def test_bad_notifications_are_refused_and_change_nothing_then_the_genuine_one_pays(
    branchpay: RunningService, gateway_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    order_id, out_trade_no, qr_code = started_attempt(branchpay)
    genuine = settled(gateway_url, qr_code, out_trade_no)
    genuine_body = urlencode(genuine)
    assert genuine["txnAmt"] == "5900" and genuine["merId"] == MER_ID

    bad: dict[str, str | bytes] = {
        "unsigned": urlencode({k: v for k, v in genuine.items() if k != "signature"}),
        "forged": urlencode(
            genuine | {"signature": message.sign(genuine, other_chain().platform_key)}
        ),
        "signed under another CA": urlencode(platform_signed(genuine, other_chain())),
        "tampered": urlencode(genuine | {"txnAmt": "1"}),
        "malformed": "%%%&&==",
        "oversized": genuine_body + "&pad=" + "x" * 64 * 1024,
    }
    caplog.set_level(logging.INFO)
    for case, body in bad.items():
        response = post(branchpay, body)
        assert response.status_code == 400, (case, response.text)
        order = order_state(branchpay, order_id)
        assert order["status"] == "PENDING_PAYMENT", case
        assert [p["status"] for p in order["payments"]] == ["PENDING"], case
    logged = caplog.text
    assert logged.count("unionpay") >= len(bad)
    key_body = "".join(pki.key_pem(chain().merchant_key).splitlines()[1:-1])
    assert key_body[:40] not in logged and genuine["signature"][:40] not in logged
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 0

    # Genuinely signed but not ours (no attempt of ours; another merId; this branch's
    # notification sent to the other branch, whose merId differs): each is kept aside once,
    # answered so UnionPay stops re-sending it, and changes nothing.
    unknown = platform_signed(genuine | {"orderId": "zz" + uuid.uuid4().hex[:20]})
    other_merchant = platform_signed(genuine | {"merId": BJ_MER_ID})
    kept_aside = [
        ("zj", urlencode(unknown)),
        ("zj", urlencode(other_merchant)),
        ("bj", genuine_body),
    ]
    for branch, body in kept_aside:
        kept = post(branchpay, body, branch=branch)
        assert (kept.status_code, kept.text) == (200, "ok"), branch
        order = order_state(branchpay, order_id)
        assert order["status"] == "PENDING_PAYMENT", branch
        assert [p["status"] for p in order["payments"]] == ["PENDING"], branch
    mismatches = list(branchpay.db["notification_mismatches"].find({"provider": "unionpay"}))
    assert sorted(m["branch"] for m in mismatches) == ["bj", "zj", "zj"]
    assert sum("merId" in m["reason"] for m in mismatches) == 2
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 0

    accepted = post(branchpay, genuine_body)
    assert (accepted.status_code, accepted.text) == (200, "ok")
    replayed = post(branchpay, genuine_body)
    assert replayed.status_code == 200
    order = order_state(branchpay, order_id)
    assert order["status"] == "PAID"
    (payment,) = order["payments"]
    assert payment["status"] == "SUCCEEDED" and payment["providerTradeNo"] == genuine["queryId"]
    assert not payment["flagged"]
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 1


def test_wrong_amount_is_kept_aside_not_paid(branchpay: RunningService, gateway_url: str) -> None:
    order_id, out_trade_no, qr_code = started_attempt(branchpay)
    genuine = settled(gateway_url, qr_code, out_trade_no)
    # Validly signed, but not the attempt's amount: refused after the signature, answered so
    # UnionPay stops re-sending it, kept aside, and nothing changes.
    reply = post(branchpay, urlencode(platform_signed(genuine | {"txnAmt": "59"})))
    assert (reply.status_code, reply.text) == (200, "ok")
    order = order_state(branchpay, order_id)
    assert order["status"] == "PENDING_PAYMENT"
    (payment,) = order["payments"]
    assert payment["status"] == "PENDING" and not payment["flagged"]
    (kept,) = branchpay.db["notification_mismatches"].find({"outTradeNo": out_trade_no})
    assert kept["amountFen"] == 59 and "the attempt is for 5900 fen" in kept["reason"]
