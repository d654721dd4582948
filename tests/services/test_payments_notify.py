"""POST /notify/{provider}/{branch} over HTTP: verified, applied exactly once, in any order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.services.conftest import PayService

FAIL = {"code": "FAIL", "message": "notification rejected"}


def started(service: PayService) -> tuple[dict[str, Any], dict[str, Any]]:
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    return order, payment


def paid_history(service: PayService, order: dict[str, Any]) -> list[dict[str, Any]]:
    history = service.order_doc(order["id"])["statusHistory"]
    return [entry for entry in history if entry["status"] == "PAID"]


async def test_twenty_concurrent_deliveries_change_the_order_once_and_store_one_event(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    notification = service.settle(payment["outTradeNo"])

    replies = await service.deliver_many(notification, 20)

    assert [r.status_code for r in replies] == [200] * 20
    assert all(r.json() == {"code": "SUCCESS"} for r in replies)
    assert service.order(order["id"])["status"] == "PAID"
    assert service.db.payment_events.count_documents({}) == 1
    assert len(paid_history(service, order)) == 1
    stored = service.db.payments.find_one({"outTradeNo": payment["outTradeNo"]})
    assert stored is not None and len(stored["eventIds"]) == 1


def test_a_forged_signature_is_rejected_and_changes_nothing(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    genuine = service.settle(payment["outTradeNo"])
    forged = {**genuine, "headers": {**genuine["headers"], "x-sandbox-signature": "0" * 64}}

    reply = service.deliver(forged)

    assert reply.status_code == 400 and reply.json() == FAIL
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"
    assert service.db.payment_events.count_documents({}) == 0


def test_unknown_provider_or_branch_is_a_neutral_404(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    _, payment = started(service)
    notification = service.settle(payment["outTradeNo"])
    for path in ("/notify/alipay/zj", "/notify/sandbox/nowhere", "/notify/../zj"):
        response = service.deliver_to(path, notification)
        assert response.status_code == 404
        assert "sandbox" not in response.text and "Traceback" not in response.text
    assert service.db.payment_events.count_documents({}) == 0


def test_an_unknown_out_trade_no_is_refused_in_the_platforms_format(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    started(service)
    reply = service.deliver(service.event("261125000000unknownXXXXX", "payment.succeeded", 5900))
    assert reply.status_code == 400 and reply.json() == FAIL
    assert service.db.payment_events.count_documents({}) == 0


def test_an_attempt_of_another_branch_is_refused(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    notification = service.settle(payment["outTradeNo"])
    # bj shares the sandbox secret in this set-up, so the signature verifies there too.
    reply = service.deliver(notification, branch="bj")
    assert reply.status_code == 400 and reply.json() == FAIL
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"
    assert service.db.payment_events.count_documents({}) == 0


def test_a_disabled_but_configured_provider_still_gets_its_notifications(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    notification = service.settle(payment["outTradeNo"])
    service.set_enabled("zj", enabled=False)

    reply = service.deliver(notification)

    assert reply.status_code == 200
    assert service.order(order["id"])["status"] == "PAID"


def test_a_wrong_amount_flags_the_payment_and_never_pays_the_order(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    reply = service.deliver(service.event(payment["outTradeNo"], "payment.succeeded", 1))

    assert reply.status_code == 200  # stored and applied: the platform may stop resending
    seen = service.order(order["id"])
    assert seen["status"] == "PENDING_PAYMENT"
    assert seen["payments"][0]["status"] == "PENDING"
    assert "paid 1 fen" in seen["payments"][0]["flagged"]
    assert service.db.payment_events.count_documents({}) == 1


def test_a_refund_reported_before_the_success_ends_refunded(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    no = payment["outTradeNo"]
    refund = service.event(no, "refund.succeeded", 5900, out_refund_no="R261125early0001")
    success = service.event(no, "payment.succeeded", 5900)

    assert service.deliver(refund).status_code == 200
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"
    assert service.deliver(success).status_code == 200

    seen = service.order(order["id"])
    assert seen["payments"][0]["status"] == "REFUNDED"
    assert seen["payments"][0]["refunds"][0]["amount"] == {"amountFen": 5900}
    assert seen["status"] == "REFUNDED"


def test_a_close_reported_after_the_success_changes_nothing(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    no = payment["outTradeNo"]
    assert service.deliver(service.event(no, "payment.succeeded", 5900)).status_code == 200
    assert service.deliver(service.event(no, "payment.closed", 5900)).status_code == 200

    seen = service.order(order["id"])
    assert seen["status"] == "PAID"
    assert seen["payments"][0]["status"] == "SUCCEEDED"
    assert service.db.payment_events.count_documents({}) == 2


def test_a_success_reported_after_a_close_wins(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    no = payment["outTradeNo"]
    assert service.deliver(service.event(no, "payment.closed", 5900)).status_code == 200
    assert service.order(order["id"])["payments"][0]["status"] == "CLOSED"
    assert service.deliver(service.event(no, "payment.succeeded", 5900)).status_code == 200
    assert service.order(order["id"])["status"] == "PAID"
