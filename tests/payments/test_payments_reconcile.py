"""`branchpay reconcile`: durations, the branch filter, and facts applied like notifications."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta

import pytest

from api.cli import parse_duration
from tests.payments.conftest import PayService


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
