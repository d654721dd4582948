"""Reconciliation rules (pure): matching by id, the day windows with the tolerance, ages."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from api.domain.beijing import BEIJING
from api.domain.bills import (
    BillLine,
    BillLineKind,
    BillLineStatus,
    DiscrepancyKind,
    OurRecord,
    age_in_days,
    day_bounds,
    discrepancy_id,
    is_stale,
    judge,
    mark_id,
    missing_window,
    needs_mark,
    reconciliation_id,
)

DAY = date(2026, 11, 30)
TAU = timedelta(seconds=300)
AT = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)  # noon in Beijing


def payment_line(amount: int = 5900, status: BillLineStatus = BillLineStatus.SUCCEEDED) -> BillLine:
    return BillLine(BillLineKind.PAYMENT, "T1", amount, AT, status=status)


def refund_line(status: BillLineStatus = BillLineStatus.SUCCEEDED) -> BillLine:
    return BillLine(BillLineKind.REFUND, "T1", 100, AT, out_refund_no="R1", status=status)


def ours(status: str, amount: int = 5900, kind: BillLineKind = BillLineKind.PAYMENT) -> OurRecord:
    refund = "R1" if kind is BillLineKind.REFUND else None
    return OurRecord(kind, "T1", amount, status, AT, out_refund_no=refund)


def test_a_line_we_know_with_the_same_amount_and_status_is_matched() -> None:
    assert judge(payment_line(), ours("SUCCEEDED")).matched
    # Refunds since the payment do not undo the payment line.
    assert judge(payment_line(), ours("PARTIALLY_REFUNDED")).matched
    assert judge(payment_line(), ours("REFUNDED")).matched
    assert judge(refund_line(), ours("SUCCEEDED", 100, BillLineKind.REFUND)).matched


def test_a_line_unknown_to_us_is_missing_locally() -> None:
    assert judge(payment_line(), None).kinds == (DiscrepancyKind.MISSING_LOCALLY,)


def test_another_amount_is_an_amount_mismatch() -> None:
    verdict = judge(payment_line(amount=5800), ours("SUCCEEDED"))
    assert verdict.kinds == (DiscrepancyKind.AMOUNT_MISMATCH,)
    assert not verdict.resolvable


def test_a_payment_the_bill_says_succeeded_and_we_hold_pending_is_a_missed_notification() -> None:
    verdict = judge(payment_line(), ours("PENDING"))
    assert verdict.kinds == (DiscrepancyKind.STATUS_MISMATCH,) and verdict.resolvable
    for settled in ("FAILED", "CLOSED"):
        verdict = judge(payment_line(), ours(settled))
        assert verdict.kinds == (DiscrepancyKind.STATUS_MISMATCH,) and not verdict.resolvable


def test_a_refund_the_bill_shows_and_we_hold_pending_is_resolvable_failed_is_not() -> None:
    pending = judge(refund_line(), ours("PENDING", 100, BillLineKind.REFUND))
    assert pending.kinds == (DiscrepancyKind.STATUS_MISMATCH,) and pending.resolvable
    failed = judge(refund_line(), ours("FAILED", 100, BillLineKind.REFUND))
    assert failed.kinds == (DiscrepancyKind.STATUS_MISMATCH,) and not failed.resolvable
    # The platform still processing a refund we hold as pending: the two agree.
    assert judge(
        refund_line(BillLineStatus.PENDING), ours("PENDING", 100, BillLineKind.REFUND)
    ).matched


def test_amount_and_status_can_both_be_wrong() -> None:
    verdict = judge(payment_line(amount=1), ours("PENDING"))
    assert verdict.kinds == (DiscrepancyKind.AMOUNT_MISMATCH, DiscrepancyKind.STATUS_MISMATCH)


def test_the_missing_window_is_the_beijing_day_shifted_back_by_the_tolerance() -> None:
    start, end = missing_window(DAY, TAU)
    assert start == datetime(2026, 11, 29, 16, 0, tzinfo=UTC) - TAU
    assert end == datetime(2026, 11, 30, 16, 0, tzinfo=UTC) - TAU
    # Consecutive days' windows tile time: every moment is looked at by exactly one run.
    assert missing_window(DAY + timedelta(days=1), TAU)[0] == end


@pytest.mark.parametrize(
    ("local", "marked"),
    [
        (datetime(2026, 11, 30, 0, 0, 0), True),  # the first tau of the day
        (datetime(2026, 11, 30, 0, 4, 59), True),
        (datetime(2026, 11, 30, 0, 5, 0), False),
        (datetime(2026, 11, 30, 23, 54, 59), False),
        (datetime(2026, 11, 30, 23, 55, 0), True),  # the last tau of the day
        (datetime(2026, 11, 30, 23, 59, 59), True),
        (datetime(2026, 12, 1, 0, 0, 30), True),  # our time on the next day, billed on this one
        (datetime(2026, 11, 29, 23, 59, 30), True),
    ],
)
def test_a_matched_record_near_midnight_gets_a_boundary_mark(local: datetime, marked: bool) -> None:
    assert needs_mark(local.replace(tzinfo=BEIJING), DAY, TAU) is marked


def test_a_record_without_our_time_is_never_marked() -> None:
    assert not needs_mark(None, DAY, TAU)


def test_ids_are_deterministic() -> None:
    rec = reconciliation_id("zj", "sandbox", DAY)
    assert rec == "zj:sandbox:2026-11-30"
    key = refund_line().key
    assert discrepancy_id(rec, DiscrepancyKind.STATUS_MISMATCH, key) == (
        "zj:sandbox:2026-11-30:STATUS_MISMATCH:T1:R1"
    )
    assert discrepancy_id(rec, DiscrepancyKind.MISSING_LOCALLY, payment_line().key) == (
        "zj:sandbox:2026-11-30:MISSING_LOCALLY:T1:"
    )
    assert mark_id("zj", "sandbox", key) == "zj:sandbox:REFUND:T1:R1"


def test_age_counts_beijing_days() -> None:
    detected = datetime(2026, 11, 30, 15, 59, tzinfo=UTC)  # 23:59 in Beijing
    assert age_in_days(detected, detected + timedelta(minutes=1)) == 1  # past Beijing midnight
    assert age_in_days(detected, detected - timedelta(hours=1)) == 0
    start, _ = day_bounds(DAY)
    assert age_in_days(start, start + timedelta(days=3, hours=23)) == 3
    assert not is_stale(3, 3) and is_stale(4, 3)
