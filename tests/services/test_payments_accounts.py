"""Branches paying through one service-provider account, against the sandbox over HTTP.

Sichuan and Chongqing share the group's ``[accounts.ct-group.sandbox]`` (one gateway,
one signing secret), each with its own sub-merchant id; Zhejiang keeps its own keys.
A sub-merchant branch is paid end to end; a notification genuinely signed with the
shared secret but for the other sub-merchant, or for another amount, is answered (so
the platform stops), kept aside and changes nothing; suspending the account makes its
branches say why they cannot pay while the branch with its own keys goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import tomlkit

from tests.services.conftest import PayService

ACCOUNTS_TOML = """
[accounts.ct-group.sandbox]
gateway = "{gateway}"
secret = {{ file = "sandbox.key" }}

[branches.sc]
name = "China Telecom Sichuan"
province = "Sichuan"
operator = "China Telecom"

[branches.sc.providers.sandbox]
enabled = true
account = "ct-group"
merchant_id = "ct-sc-001"

[branches.cq]
name = "China Telecom Chongqing"
province = "Chongqing"
operator = "China Telecom"

[branches.cq.providers.sandbox]
enabled = true
account = "ct-group"
merchant_id = "ct-cq-001"
"""

OPTIONS = """
query($id: ID!) {
  order(id: $id) { paymentOptions { provider method available reason detail } }
}
"""


def start_with_accounts(start_payments: Callable[..., PayService]) -> PayService:
    service = start_payments(seed_branches=("zj", "bj", "yn", "sc", "cq"))
    # The gateway's URL is known once it listens: add the account and its branches then.
    text = service.plugins_toml.read_text() + ACCOUNTS_TOML.format(gateway=service.gateway_url)
    service.plugins_toml.write_text(text)
    service.wait_for_branch("cq")
    return service


def resign(service: PayService, notification: dict[str, Any], **change: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{service.gateway_url}/control/notifications/resign",
        json={"body": notification["body"], **change},
    )
    response.raise_for_status()
    resigned: dict[str, Any] = response.json()
    return resigned


def test_a_sub_merchant_branch_is_paid_through_the_account_end_to_end(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_with_accounts(start_payments)
    # Admins see which account a branch's provider pays through.
    settings = '{ providerSettings(branch: "sc") { provider enabled account } }'
    assert service.client.data(settings)["providerSettings"] == [
        {"provider": "sandbox", "enabled": True, "account": "ct-group"}
    ]
    order = service.create_order("sc", "sc-plan-59")
    started = service.start_payment(order["id"], "sandbox", "QR_CODE")
    assert started["userErrors"] == []
    payment = started["payment"]
    stored = service.db.payments.find_one({"outTradeNo": payment["outTradeNo"]})
    assert stored is not None and stored["account"] == "ct-group"
    # The simulator took the attempt for Sichuan's sub-merchant, and will notify the URL
    # naming the branch and the account.
    attempt = service.gateway.attempts[payment["outTradeNo"]]
    assert attempt.merchant_id == "ct-sc-001"
    assert attempt.notify_url == f"{service.url}/notify/sandbox/sc/ct-group"

    genuine = service.settle(payment["outTradeNo"])
    # Without the account in the URL, or with another account, the route is not this
    # branch's: nothing is verified with the wrong key.
    for path in ("/notify/sandbox/sc", "/notify/sandbox/sc/zj-group"):
        assert service.deliver_to(path, genuine).status_code == 404, path
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"

    accepted = service.deliver_to("/notify/sandbox/sc/ct-group", genuine)
    assert accepted.status_code == 200
    assert service.order(order["id"])["status"] == "PAID"
    assert service.db.notification_mismatches.count_documents({}) == 0


def test_a_genuine_notification_for_the_other_sub_merchant_or_amount_changes_nothing(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_with_accounts(start_payments)
    order = service.create_order("sc", "sc-plan-59")
    payment = service.start_payment(order["id"], "sandbox", "QR_CODE")["payment"]
    genuine = service.settle(payment["outTradeNo"])
    amount = payment["amount"]["amountFen"]

    # Signed with the group's one secret, so the signature passes either way.
    for change in ({"merchant_id": "ct-cq-001"}, {"amount_fen": amount - 100}):
        spoiled = resign(service, genuine, **change)
        answer = service.deliver_to("/notify/sandbox/sc/ct-group", spoiled)
        assert answer.status_code == 200, change  # the platform stops re-sending it
        seen = service.order(order["id"])
        assert seen["status"] == "PENDING_PAYMENT", change
        assert [p["status"] for p in seen["payments"]] == ["PENDING"], change
        assert not seen["payments"][0]["flagged"], change
    kept = list(service.db.notification_mismatches.find({}, sort=[("receivedAt", 1)]))
    assert [doc["branch"] for doc in kept] == ["sc", "sc"]
    assert "ct-cq-001" in kept[0]["reason"] and "ct-sc-001" in kept[0]["reason"]
    assert kept[1]["amountFen"] == amount - 100
    assert service.db.payment_events.count_documents({}) == 0

    # The genuine one still pays the order, once.
    assert service.deliver_to("/notify/sandbox/sc/ct-group", genuine).status_code == 200
    assert service.order(order["id"])["status"] == "PAID"


def test_a_suspended_account_stops_its_branches_and_says_why(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_with_accounts(start_payments)
    document = tomlkit.parse(service.plugins_toml.read_text())
    document["accounts"]["ct-group"]["sandbox"]["enabled"] = False  # type: ignore[index]
    service.plugins_toml.write_text(tomlkit.dumps(document))

    order = service.create_order("sc", "sc-plan-59")

    def options() -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = service.client.data(OPTIONS, {"id": order["id"]})["order"][
            "paymentOptions"
        ]
        return data

    deadline = time.monotonic() + 15
    while options()[0]["available"] and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = options()
    assert {(o["provider"], o["available"], o["reason"]) for o in seen} == {
        ("sandbox", False, "ACCOUNT_UNAVAILABLE")
    }
    assert all("ct-group" in o["detail"] for o in seen)
    refused = service.start_payment(order["id"], "sandbox", "QR_CODE")
    assert refused["payment"] is None
    assert [e["code"] for e in refused["userErrors"]] == ["ACCOUNT_UNAVAILABLE"]
    assert service.db.payments.count_documents({}) == 0

    # Zhejiang pays with its own keys, unaffected.
    zj = service.create_order()
    assert service.start_payment(zj["id"], "sandbox", "QR_CODE")["userErrors"] == []
