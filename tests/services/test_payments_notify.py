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


ACCEPTED = {"code": "SUCCESS"}


def test_a_genuine_notification_of_an_unknown_out_trade_no_is_kept_aside_and_stops_the_platform(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    started(service)
    notification = service.event("261125000000unknownXXXXX", "payment.succeeded", 5900)
    replies = [service.deliver(notification) for _ in range(2)]
    # Answered as accepted (a genuine platform would only re-send it), kept once, applied never.
    assert [(r.status_code, r.json()) for r in replies] == [(200, ACCEPTED)] * 2
    assert service.db.payment_events.count_documents({}) == 0
    kept = list(service.db.notification_mismatches.find({}))
    assert len(kept) == 1
    assert kept[0]["outTradeNo"] == "261125000000unknownXXXXX"
    assert kept[0]["reason"] == "no attempt of this branch has that out_trade_no"


def test_an_attempt_of_another_branch_is_refused_and_changes_nothing(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    notification = service.settle(payment["outTradeNo"])
    # bj shares the sandbox secret in this set-up, so the signature verifies there too.
    reply = service.deliver(notification, branch="bj")
    assert reply.status_code == 200 and reply.json() == ACCEPTED
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"
    assert service.db.payment_events.count_documents({}) == 0
    assert service.db.notification_mismatches.count_documents({"branch": "bj"}) == 1


def test_a_validly_signed_success_of_another_amount_is_refused_and_changes_nothing(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order, payment = started(service)
    altered = service.event(
        payment["outTradeNo"], "payment.succeeded", payment["amount"]["amountFen"] - 1
    )

    reply = service.deliver(altered)

    assert reply.status_code == 200 and reply.json() == ACCEPTED
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"
    stored = service.db.payments.find_one({"outTradeNo": payment["outTradeNo"]})
    assert stored is not None and stored["status"] == "PENDING" and stored["flagged"] is None
    assert service.db.payment_events.count_documents({}) == 0
    (kept,) = service.db.notification_mismatches.find({})
    assert kept["amountFen"] == payment["amount"]["amountFen"] - 1
    assert "the attempt is for" in kept["reason"]
    # The genuine success still pays the order afterwards.
    assert service.deliver(service.settle(payment["outTradeNo"])).json() == ACCEPTED
    assert service.order(order["id"])["status"] == "PAID"


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
