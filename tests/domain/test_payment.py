"""The payment state machine and how facts change an attempt: pure, no store, no HTTP."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from api.domain.order import OrderStatus
from api.domain.payment import (
    OUT_TRADE_NO,
    PAYMENT_TRANSITIONS,
    Attempt,
    EventKind,
    Fact,
    IllegalPaymentTransition,
    PaymentStatus,
    RefundRefused,
    RefundStatus,
    apply_fact,
    can_transition,
    check_transition,
    close_unpaid,
    fail_unpaid,
    order_status_for,
    reserve_refund,
)
from api.plugins import contract
from api.plugins.contract import new_reference
from api.services.payments import auto_refund_no

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
P = PaymentStatus
ALLOWED = {
    (P.PENDING, P.SUCCEEDED),
    (P.PENDING, P.FAILED),
    (P.PENDING, P.CLOSED),
    (P.PENDING, P.PARTIALLY_REFUNDED),
    (P.PENDING, P.REFUNDED),
    (P.FAILED, P.SUCCEEDED),
    (P.FAILED, P.PARTIALLY_REFUNDED),
    (P.FAILED, P.REFUNDED),
    (P.CLOSED, P.SUCCEEDED),
    (P.CLOSED, P.PARTIALLY_REFUNDED),
    (P.CLOSED, P.REFUNDED),
    (P.SUCCEEDED, P.PARTIALLY_REFUNDED),
    (P.SUCCEEDED, P.REFUNDED),
    (P.PARTIALLY_REFUNDED, P.PARTIALLY_REFUNDED),
    (P.PARTIALLY_REFUNDED, P.REFUNDED),
}


@pytest.mark.parametrize(("current", "target"), sorted(itertools.product(P, P)))
def test_every_transition_is_allowed_or_rejected(current: P, target: P) -> None:
    allowed = (current, target) in ALLOWED
    assert can_transition(current, target) is allowed
    if allowed:
        assert check_transition(current, target) is target
    else:
        with pytest.raises(IllegalPaymentTransition):
            check_transition(current, target)


def test_the_table_covers_every_status_and_refunded_is_final() -> None:
    assert set(PAYMENT_TRANSITIONS) == set(P)
    assert PAYMENT_TRANSITIONS[P.REFUNDED] == frozenset()


def test_the_provider_contract_and_the_domain_share_one_event_kind_and_refund_state() -> None:
    assert contract.EventKind is EventKind
    assert contract.RefundState is RefundStatus


def pending(amount: int = 5900) -> Attempt:
    return Attempt(status=P.PENDING, amount_fen=amount, currency="CNY")


def paid(amount: int = 5900) -> Attempt:
    return apply_fact(
        pending(amount), Fact(EventKind.PAYMENT_SUCCEEDED, amount, "CNY"), NOW
    ).attempt


def refund_fact(no: str, amount: int) -> Fact:
    return Fact(EventKind.REFUND_SUCCEEDED, amount, "CNY", out_refund_no=no)


def test_a_success_pays_a_pending_attempt_once() -> None:
    outcome = apply_fact(pending(), Fact(EventKind.PAYMENT_SUCCEEDED, 5900, "CNY"), NOW)
    assert outcome.newly_paid and outcome.attempt.status is P.SUCCEEDED
    again = apply_fact(outcome.attempt, Fact(EventKind.PAYMENT_SUCCEEDED, 5900, "CNY"), NOW)
    assert not again.changed and not again.newly_paid


@pytest.mark.parametrize("kind", [EventKind.PAYMENT_CLOSED, EventKind.PAYMENT_FAILED])
def test_a_close_or_failure_after_a_success_changes_nothing(kind: EventKind) -> None:
    outcome = apply_fact(paid(), Fact(kind, 5900, "CNY"), NOW)
    assert not outcome.changed
    assert outcome.attempt.status is P.SUCCEEDED


@pytest.mark.parametrize("kind", [EventKind.PAYMENT_CLOSED, EventKind.PAYMENT_FAILED])
def test_a_success_after_a_close_or_failure_wins(kind: EventKind) -> None:
    settled = apply_fact(pending(), Fact(kind, 5900, "CNY"), NOW).attempt
    assert settled.status in (P.CLOSED, P.FAILED)
    outcome = apply_fact(settled, Fact(EventKind.PAYMENT_SUCCEEDED, 5900, "CNY"), NOW)
    assert outcome.newly_paid and outcome.attempt.status is P.SUCCEEDED


def test_a_refund_before_the_success_is_kept_and_counted_when_the_success_arrives() -> None:
    early = apply_fact(pending(), refund_fact("R0000001", 5900), NOW)
    assert early.changed and early.attempt.status is P.PENDING
    assert early.attempt.refunded_fen == 5900
    outcome = apply_fact(early.attempt, Fact(EventKind.PAYMENT_SUCCEEDED, 5900, "CNY"), NOW)
    assert outcome.attempt.status is P.REFUNDED
    assert order_status_for(outcome.attempt) is OrderStatus.REFUNDED


@pytest.mark.parametrize(
    ("fact", "why"),
    [
        (Fact(EventKind.PAYMENT_SUCCEEDED, 5800, "CNY"), "paid 5800 fen"),
        (Fact(EventKind.PAYMENT_SUCCEEDED, 5900, "USD"), "currency USD"),
    ],
)
def test_a_wrong_amount_or_currency_flags_and_never_pays(fact: Fact, why: str) -> None:
    outcome = apply_fact(pending(), fact, NOW)
    assert outcome.flagged and not outcome.newly_paid
    assert outcome.attempt.status is P.PENDING
    assert outcome.attempt.flagged is not None and why in outcome.attempt.flagged


def test_refunds_are_recorded_by_number_and_the_totals_derived() -> None:
    attempt = apply_fact(paid(), refund_fact("R0000001", 1000), NOW).attempt
    assert attempt.status is P.PARTIALLY_REFUNDED
    assert order_status_for(attempt) is OrderStatus.PARTIALLY_REFUNDED
    repeat = apply_fact(attempt, refund_fact("R0000001", 1000), NOW)
    assert not repeat.changed and repeat.attempt.refunded_fen == 1000
    full = apply_fact(attempt, refund_fact("R0000002", 4900), NOW).attempt
    assert full.status is P.REFUNDED and full.refunded_fen == 5900


def test_a_refund_past_the_paid_amount_is_flagged_not_counted() -> None:
    outcome = apply_fact(paid(), refund_fact("R0000001", 6000), NOW)
    assert outcome.flagged and outcome.attempt.refunded_fen == 0


def test_reservations_never_exceed_the_paid_amount() -> None:
    attempt = reserve_refund(paid(), "R0000001", 5000, NOW)
    assert attempt.reserved_fen == 5000 and attempt.refundable_fen == 900
    with pytest.raises(RefundRefused) as refused:
        reserve_refund(attempt, "R0000002", 901, NOW)
    assert refused.value.code == "REFUND_EXCEEDS_PAID"
    attempt = reserve_refund(attempt, "R0000002", 900, NOW)
    assert attempt.refundable_fen == 0


def test_a_failed_refund_releases_its_reservation_and_a_late_failure_is_ignored() -> None:
    attempt = reserve_refund(paid(), "R0000001", 5000, NOW)
    failed = apply_fact(
        attempt, Fact(EventKind.REFUND_FAILED, 5000, "CNY", out_refund_no="R0000001"), NOW
    ).attempt
    assert failed.reserved_fen == 0 and failed.refundable_fen == 5900
    succeeded = apply_fact(attempt, refund_fact("R0000001", 5000), NOW).attempt
    late = apply_fact(
        succeeded, Fact(EventKind.REFUND_FAILED, 5000, "CNY", out_refund_no="R0000001"), NOW
    )
    assert not late.changed
    assert late.attempt.refund("R0000001").status is RefundStatus.SUCCEEDED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("attempt", "why"),
    [(pending(), "this one is PENDING"), (replace(paid(), flagged="review"), "flagged")],
)
def test_only_a_paid_unflagged_attempt_can_be_refunded(attempt: Attempt, why: str) -> None:
    with pytest.raises(RefundRefused) as refused:
        reserve_refund(attempt, "R0000001", 100, NOW)
    assert refused.value.code == "PAYMENT_NOT_REFUNDABLE"
    assert why in refused.value.message


def test_closing_and_failing_by_us_apply_only_to_a_pending_attempt() -> None:
    assert close_unpaid(pending()).status is P.CLOSED  # type: ignore[union-attr]
    assert fail_unpaid(pending()).status is P.FAILED  # type: ignore[union-attr]
    assert close_unpaid(paid()) is None
    assert fail_unpaid(paid()) is None


def test_references_are_valid_trade_and_refund_numbers_for_every_platform() -> None:
    numbers = {new_reference(NOW) for _ in range(1000)}
    assert len(numbers) == 1000
    for number in numbers:
        assert OUT_TRADE_NO.fullmatch(number) and 8 <= len(number) <= 32
        assert OUT_TRADE_NO.fullmatch(auto_refund_no(number))
    assert auto_refund_no("261125080000abcdefABCDEF") == auto_refund_no("261125080000abcdefABCDEF")
