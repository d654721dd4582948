"""Counter sales voided at the platform: a reversed sale never pays its order, in any order of facts."""

from __future__ import annotations

from datetime import UTC, datetime

from api.domain.payment import (
    Attempt,
    EventKind,
    Fact,
    PaymentStatus,
    RefundStatus,
    ReversalState,
    apply_fact,
    begin_reversal,
    finish_reversal,
    keep_paid,
    reversal_refund_no,
)

NOW = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
NO = "261202020000abcdefABCDEF"


def sale(status: PaymentStatus = PaymentStatus.PENDING) -> Attempt:
    return Attempt(status=status, amount_fen=5900, currency="CNY", out_trade_no=NO)


def success(amount_fen: int = 5900) -> Fact:
    return Fact(kind=EventKind.PAYMENT_SUCCEEDED, amount_fen=amount_fen, currency="CNY")


def test_an_unpaid_sale_reversed_ends_closed_with_nothing_refunded() -> None:
    reversing = begin_reversal(sale())
    assert reversing is not None and reversing.reversal is ReversalState.PENDING
    done = finish_reversal(reversing, NOW)
    assert done is not None
    assert done.status is PaymentStatus.CLOSED and done.reversal is ReversalState.DONE
    assert done.refunds == ()


def test_a_sale_paid_while_being_reversed_ends_refunded_by_the_reversal() -> None:
    reversing = begin_reversal(sale())
    assert reversing is not None
    paid = apply_fact(reversing, success(), NOW).attempt
    assert paid.status is PaymentStatus.SUCCEEDED and paid.reversal is ReversalState.PENDING
    done = finish_reversal(paid, NOW)
    assert done is not None and done.status is PaymentStatus.REFUNDED
    (line,) = done.refunds
    assert line.out_refund_no == reversal_refund_no(NO) == NO + "RV"
    assert line.amount_fen == 5900 and line.status is RefundStatus.SUCCEEDED


def test_a_success_arriving_after_the_reversal_records_the_money_came_and_went_back() -> None:
    reversing = begin_reversal(sale())
    assert reversing is not None
    done = finish_reversal(reversing, NOW)
    assert done is not None
    outcome = apply_fact(done, success(), NOW)
    assert outcome.changed and outcome.newly_paid
    assert outcome.attempt.status is PaymentStatus.REFUNDED
    assert outcome.attempt.refunded_fen == 5900
    # The same success again changes nothing more.
    again = apply_fact(outcome.attempt, success(), NOW)
    assert not again.changed and again.attempt.refunded_fen == 5900


def test_only_a_pending_sale_is_reversed_and_a_reversal_is_begun_once() -> None:
    assert begin_reversal(sale(PaymentStatus.SUCCEEDED)) is None
    assert begin_reversal(sale(PaymentStatus.FAILED)) is None
    reversing = begin_reversal(sale())
    assert reversing is not None
    assert begin_reversal(reversing) is None
    assert finish_reversal(sale(), NOW) is None  # nothing to finish without a reversal


def test_a_paid_sale_the_platform_will_not_reverse_keeps_paying() -> None:
    reversing = begin_reversal(sale())
    assert reversing is not None
    paid = apply_fact(reversing, success(), NOW).attempt
    kept = keep_paid(paid)
    assert kept is not None and kept.reversal is None and kept.status is PaymentStatus.SUCCEEDED
    assert keep_paid(kept) is None
