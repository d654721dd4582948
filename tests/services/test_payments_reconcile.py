"""`branchpay reconcile`: durations, the branch filter, and facts applied like notifications."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.cli import parse_duration
from tests.services.conftest import PayService


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "1w", "1h 30m", "-5m", "m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_reconcile_settles_only_the_chosen_branch_through_the_exactly_once_path(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    notification = service.settle(payment["outTradeNo"])  # never delivered

    other = service.reconcile("--branch", "bj", "--since", "1h")
    assert other.returncode == 0, other.stderr
    assert "reconciled 0 attempts" in other.stdout
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"

    run = service.reconcile("--branch", "zj", "--since", "1h")
    assert run.returncode == 0, run.stderr
    assert payment["outTradeNo"] in run.stdout and "SUCCEEDED" in run.stdout
    assert service.order(order["id"])["status"] == "PAID"
    # The notification arriving late is the same fact: a duplicate, not a second change.
    assert service.deliver(notification).status_code == 200
    assert service.db.payment_events.count_documents({}) == 1

    unknown = service.reconcile("--branch", "nowhere")
    assert unknown.returncode == 2 and "no branch 'nowhere'" in unknown.stderr


def interrupted_delivery(service: PayService, payment: dict[str, Any]) -> dict[str, Any]:
    """Store the payment's success event unapplied, as a process that stopped midway leaves it."""
    notification = service.settle(payment["outTradeNo"])
    body = json.loads(notification["body"])
    stored = service.db.payments.find_one({"outTradeNo": payment["outTradeNo"]})
    assert stored is not None
    service.db.payment_events.insert_one(
        {
            "_id": f"sandbox:zj:{body['id']}",
            "provider": "sandbox",
            "branch": "zj",
            "eventId": body["id"],
            "kind": "PAYMENT_SUCCEEDED",
            "paymentId": stored["_id"],
            "outTradeNo": payment["outTradeNo"],
            "providerTradeNo": body["trade_no"],
            "outRefundNo": None,
            "amountFen": body["amount_fen"],
            "currency": body["currency"],
            "occurredAt": datetime.fromisoformat(body["occurred_at"]),
            "detail": {},
            "receivedAt": datetime.now(UTC) - timedelta(minutes=5),
            "applied": False,
        }
    )
    return notification


def test_a_redelivery_finishes_an_interrupted_delivery(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    notification = interrupted_delivery(service, payment)

    assert service.deliver(notification).status_code == 200

    assert service.order(order["id"])["status"] == "PAID"
    assert service.db.payment_events.count_documents({"applied": True}) == 1


def test_reconcile_finishes_a_stored_event_the_platform_stopped_sending(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    interrupted_delivery(service, payment)
    # The attempt was closed meanwhile, so only the stored event can tell the truth.
    service.db.payments.update_one(
        {"outTradeNo": payment["outTradeNo"]}, {"$set": {"status": "CLOSED"}}
    )

    run = service.reconcile()

    assert run.returncode == 0, run.stderr
    assert "stored event" in run.stdout
    assert service.order(order["id"])["status"] == "PAID"
    assert service.db.payment_events.count_documents({"applied": True}) == 1
