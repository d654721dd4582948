"""UnionPay counter sales (PAYMENT_CODE) through a running branchpay, against the simulator.

branchpay (real app, uvicorn, store) has branch zj on UnionPay; a clerk's
``startPayment`` with the payer's 云闪付 code (62 + 17 digits) names no
provider: the code's prefix picks UnionPay. The simulator reads the payer's
behaviour from the code's last digit (1 pays at once, 2 confirms after 2
queries, 3 never confirms; see providers/unionpay/simulator.py). The core's
wait is shortened: a query every 0.2 s, the sale cancelled after 1.5 s unknown.
The simulator's own back notifications go to the discard port; the tests post
them to /notify themselves, when they want them to arrive.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.kit.loopback import LoopbackServer
from tests.conftest import RunningService
from tests.counter_support import COUNTER, charge, new_order, order_of, wait_for
from tests.providers import notify_support
from tests.providers.unionpay.support import (
    CERT_SETTINGS,
    MER_ID,
    simulator_app,
    write_cert_files,
)

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

[branches.yn]
name = "China Telecom Yunnan"
province = "Yunnan"
operator = "China Telecom"
"""


def code(behaviour: str) -> str:
    """A new UnionPay payment code whose last digit is the payer's behaviour."""
    last = {"pay": "1", "confirm": "2", "never": "3", "decline": "4"}[behaviour]
    return "62" + "".join(secrets.choice("0123456789") for _ in range(16)) + last


@pytest.fixture
def gateway_url() -> Iterator[str]:
    with LoopbackServer(simulator_app(MER_ID)) as server:
        yield server.url


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], gateway_url: str
) -> RunningService:
    write_cert_files(tmp_path)
    return start_service(
        PLUGINS_TOML, gateway=gateway_url, public_url="http://127.0.0.1:9", **COUNTER
    )


def taken_fen(gateway_url: str, out_trade_no: str) -> int:
    response = httpx.get(f"{gateway_url}/control/transactions/{out_trade_no}/taken")
    response.raise_for_status()
    return int(response.json()["takenFen"])


def simulator_view(gateway_url: str, order_id: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway_url}/control/transactions/{order_id}")
    response.raise_for_status()
    view: dict[str, Any] = response.json()
    return view


def stored_nowhere(service: RunningService, auth_code: str) -> bool:
    """The scanned code is in no document of any collection."""
    for name in service.db.list_collection_names():
        for document in service.db[name].find({}):
            if auth_code in repr(document):
                return False
    return True


def test_a_code_paid_at_once_pays_the_order_before_start_payment_answers(
    branchpay: RunningService, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    scanned = code("pay")
    result = charge(branchpay, order_id, scanned)  # no provider named: the 62 prefix picks it
    assert result["userErrors"] == []
    payment = result["payment"]
    assert (payment["provider"], payment["status"], result["action"]["kind"]) == (
        "unionpay",
        "SUCCEEDED",
        "NONE",
    )
    order = order_of(branchpay, order_id)
    assert order["status"] == "PAID"
    assert order["payments"][0]["providerTradeNo"]
    assert taken_fen(gateway_url, payment["outTradeNo"]) == notify_support.PLAN_FEN
    assert stored_nowhere(branchpay, scanned)


def test_a_payer_confirming_is_polled_until_paid_and_the_notification_applies_once(
    branchpay: RunningService, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    result = charge(branchpay, order_id, code("confirm"))
    payment = result["payment"]
    assert (payment["provider"], payment["status"]) == ("unionpay", "PENDING")

    wait_for(lambda: order_of(branchpay, order_id)["status"] == "PAID")
    out_trade_no = payment["outTradeNo"]
    assert taken_fen(gateway_url, out_trade_no) == notify_support.PLAN_FEN
    # UnionPay's back notification of the same payment arrives after the poll found it.
    body = httpx.get(f"{gateway_url}/control/notifications/{out_trade_no}").text
    reply = notify_support.post_notification(branchpay, "unionpay", body)
    assert (reply.status_code, reply.text) == (200, "ok")
    stored = branchpay.db["payments"].find_one({"outTradeNo": out_trade_no})
    assert stored is not None and stored["status"] == "SUCCEEDED"
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 1
    wait_for(lambda: "counter" not in (branchpay.db["payments"].find_one({"_id": stored["_id"]})))
    assert order_of(branchpay, order_id)["status"] == "PAID"


def test_a_sale_never_confirmed_is_cancelled_leaving_nothing_taken_and_the_order_payable(
    branchpay: RunningService, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    payment = charge(branchpay, order_id, code("never"))["payment"]
    assert (payment["provider"], payment["status"]) == ("unionpay", "PENDING")
    out_trade_no = payment["outTradeNo"]

    def reversed_() -> dict[str, Any] | None:
        seen: dict[str, Any] = order_of(branchpay, order_id)["payments"][0]
        return seen if seen["reversal"] == "DONE" else None

    seen = wait_for(reversed_)
    assert seen["status"] == "CLOSED"
    assert order_of(branchpay, order_id)["status"] == "PENDING_PAYMENT"
    assert taken_fen(gateway_url, out_trade_no) == 0
    # At UnionPay the sale is cancelled (消费撤销), so the payer can no longer pay it.
    assert simulator_view(gateway_url, out_trade_no)["status"] == "cancelled"
    assert simulator_view(gateway_url, out_trade_no + "rv")["txnType"] == "31"
    # The payer confirming on the phone after the cancel takes nothing.
    late = httpx.post(f"{gateway_url}/control/transactions/{out_trade_no}/confirm")
    assert late.status_code == 409
    assert taken_fen(gateway_url, out_trade_no) == 0
    # The clerk asks for another code; that one pays the order.
    again = charge(branchpay, order_id, code("pay"))
    assert again["payment"]["status"] == "SUCCEEDED"
    assert order_of(branchpay, order_id)["status"] == "PAID"


def test_a_declined_code_fails_the_attempt_and_the_order_stays_payable(
    branchpay: RunningService, gateway_url: str
) -> None:
    order_id = new_order(branchpay)
    result = charge(branchpay, order_id, code("decline"))
    assert result["payment"] is None
    assert [e["code"] for e in result["userErrors"]] == ["PAYMENT_DECLINED"]
    assert [p["status"] for p in branchpay.db["payments"].find({})] == ["FAILED"]
    assert order_of(branchpay, order_id)["status"] == "PENDING_PAYMENT"
    # A code used once is refused by UnionPay; so is a code of no wallet branchpay knows.
    used = code("pay")
    assert charge(branchpay, order_id, used)["payment"]["status"] == "SUCCEEDED"
    other = new_order(branchpay)
    assert [e["code"] for e in charge(branchpay, other, used)["userErrors"]] == ["PAYMENT_DECLINED"]
    unknown = charge(branchpay, other, "63" + "1" * 17)
    assert [e["code"] for e in unknown["userErrors"]] == ["INVALID_AUTH_CODE"]


def test_a_sale_paid_while_unseen_is_cancelled_and_its_late_notification_changes_nothing(
    branchpay: RunningService, gateway_url: str
) -> None:
    """The race at the counter: the payer confirms while UnionPay's query answers fail.

    branchpay's wait ends with the outcome unknown, so it cancels the sale
    (消费撤销 of a paid sale: the money goes back); UnionPay's paid back
    notification then arrives late, twice. The order is never paid, nothing
    is refunded a second time, and the fact is applied once: the attempt
    shows the money came and went back.
    """
    order_id = new_order(branchpay)
    payment = charge(branchpay, order_id, code("never"))["payment"]
    assert payment["status"] == "PENDING"
    out_trade_no = payment["outTradeNo"]
    faults = httpx.post(
        f"{gateway_url}/control/faults",
        json={"endpoint": "queryTrans.do", "mode": "error", "count": 100_000},
    )
    faults.raise_for_status()
    paid = httpx.post(
        f"{gateway_url}/control/transactions/{out_trade_no}/confirm", data={"deliver": "0"}
    )
    assert paid.json()["status"] == "success", paid.text
    assert taken_fen(gateway_url, out_trade_no) == notify_support.PLAN_FEN

    # The wait ends unknown; the reverse cannot query yet, and is asked again.
    wait_for(lambda: order_of(branchpay, order_id)["payments"][0]["reversal"] == "PENDING")
    httpx.delete(f"{gateway_url}/control/faults").raise_for_status()
    wait_for(lambda: order_of(branchpay, order_id)["payments"][0]["reversal"] == "DONE")
    assert taken_fen(gateway_url, out_trade_no) == 0
    assert order_of(branchpay, order_id)["status"] == "PENDING_PAYMENT"

    late = httpx.get(f"{gateway_url}/control/notifications/{out_trade_no}").text
    for _ in range(2):
        reply = notify_support.post_notification(branchpay, "unionpay", late)
        assert (reply.status_code, reply.text) == (200, "ok")
    order = order_of(branchpay, order_id)
    assert order["status"] == "PENDING_PAYMENT"
    (seen,) = order["payments"]
    assert (seen["status"], seen["reversal"]) == ("REFUNDED", "DONE")
    stored = branchpay.db["payments"].find_one({"outTradeNo": out_trade_no})
    assert stored is not None and len(stored["eventIds"]) == 1
    assert branchpay.db["payment_events"].count_documents({"outTradeNo": out_trade_no}) == 1
    assert [r["reason"] for r in stored["refunds"]] == ["reversed at the counter"]
    # Nothing more went to UnionPay: the money was returned once, by the cancel.
    assert taken_fen(gateway_url, out_trade_no) == 0
    assert simulator_view(gateway_url, out_trade_no)["refundedFen"] == notify_support.PLAN_FEN
