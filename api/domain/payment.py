"""Payment attempts: their status machine and how a platform's facts change them.

Pure: no I/O. The payment service reads an attempt, asks these functions what a
fact (a verified notification, a query result, a refund answer) does to it, and
writes the result under a version guard; a forbidden transition raises
:class:`IllegalPaymentTransition` and is never written.

Facts are applied monotonically, so notifications may arrive in any order:

- a success beats a failure or a close (the platform holds the payer's money,
  whatever it said before), and a close or failure after a success changes nothing;
- refunds are recorded by ``out_refund_no`` and the refunded total is derived
  from them, so a refund that arrives before the success is kept and counted
  once the success arrives;
- an amount or currency that differs from the attempt's flags the attempt for
  review instead of changing its status;
- a counter sale (a scanned payment code) whose outcome stayed unknown is
  reversed at the platform: while the reversal runs (``reversal`` PENDING) and
  after it (DONE) the attempt never pays its order, and a success that arrives
  after the reversal is recorded with its reversal as a full refund, so the
  attempt says the money came and went back.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from api.domain.order import OrderStatus
from api.domain.problems import UserErrorCode

OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z]{8,32}$")


class PaymentStatus(enum.StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CLOSED = "CLOSED"
    REFUNDED = "REFUNDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"


class RefundStatus(enum.StrEnum):
    PENDING = "PENDING"  # amount reserved, the platform has not confirmed yet
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # known to have failed; the reservation is released


class EventKind(enum.StrEnum):
    """What a platform reported: the kind of a provider's event and of the fact it becomes."""

    PAYMENT_SUCCEEDED = "PAYMENT_SUCCEEDED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    PAYMENT_CLOSED = "PAYMENT_CLOSED"
    REFUND_SUCCEEDED = "REFUND_SUCCEEDED"
    REFUND_FAILED = "REFUND_FAILED"


class ReversalState(enum.StrEnum):
    """A counter sale being voided at the platform (WeChat 撤销, Alipay cancel, UnionPay 撤销)."""

    PENDING = "PENDING"  # the wait for the payer ended unknown; the reverse is being asked
    DONE = "DONE"  # the platform voided it: closed if unpaid, the money returned if paid


# The refund line that records a reversal of a paid counter sale.
REVERSAL_SUFFIX = "RV"


def reversal_refund_no(out_trade_no: str) -> str:
    return out_trade_no + REVERSAL_SUFFIX


PAID = frozenset(
    {PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)
_UNPAID_TO = frozenset(
    {
        PaymentStatus.SUCCEEDED,
        # A success whose refunds were reported first lands directly on a refunded status.
        PaymentStatus.PARTIALLY_REFUNDED,
        PaymentStatus.REFUNDED,
    }
)

PAYMENT_TRANSITIONS: Mapping[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.PENDING: _UNPAID_TO | {PaymentStatus.FAILED, PaymentStatus.CLOSED},
    # The platform may report a success after a failure or a close (out of order,
    # or a close that raced the payer): the money was taken, so success wins.
    PaymentStatus.FAILED: _UNPAID_TO,
    PaymentStatus.CLOSED: _UNPAID_TO,
    PaymentStatus.SUCCEEDED: frozenset({PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}),
    PaymentStatus.PARTIALLY_REFUNDED: frozenset(
        {PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
    ),
    PaymentStatus.REFUNDED: frozenset(),
}


class IllegalPaymentTransition(ValueError):
    def __init__(self, current: PaymentStatus, target: PaymentStatus) -> None:
        super().__init__(f"a payment cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: PaymentStatus, target: PaymentStatus) -> bool:
    return target in PAYMENT_TRANSITIONS[current]


def check_transition(current: PaymentStatus, target: PaymentStatus) -> PaymentStatus:
    """Return ``target`` when the move is allowed, raise IllegalPaymentTransition otherwise."""
    if not can_transition(current, target):
        raise IllegalPaymentTransition(current, target)
    return target


@dataclass(frozen=True, slots=True)
class RefundLine:
    out_refund_no: str
    amount_fen: int
    status: RefundStatus
    created_at: datetime
    updated_at: datetime
    reason: str | None = None
    provider_refund_no: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """The part of a payment document the rules look at."""

    status: PaymentStatus
    amount_fen: int
    currency: str
    refunds: tuple[RefundLine, ...] = ()
    flagged: str | None = None
    reversal: ReversalState | None = None
    out_trade_no: str = ""

    @property
    def paid(self) -> bool:
        return self.status in PAID

    @property
    def refunded_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds if r.status is RefundStatus.SUCCEEDED)

    @property
    def reserved_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds if r.status is RefundStatus.PENDING)

    @property
    def refundable_fen(self) -> int:
        return self.amount_fen - self.refunded_fen - self.reserved_fen

    def refund(self, out_refund_no: str) -> RefundLine | None:
        return next((r for r in self.refunds if r.out_refund_no == out_refund_no), None)


@dataclass(frozen=True, slots=True)
class Fact:
    """A verified fact about one attempt, in the domain's terms."""

    kind: EventKind
    amount_fen: int
    currency: str
    out_refund_no: str | None = None
    provider_refund_no: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a fact did; ``attempt`` is unchanged when ``changed`` is False."""

    attempt: Attempt
    changed: bool
    note: str
    newly_paid: bool = False
    refund_succeeded: RefundLine | None = None
    flagged: bool = False


def paid_status(refunded_fen: int, amount_fen: int) -> PaymentStatus:
    """The status of a paid attempt with ``refunded_fen`` refunded."""
    if refunded_fen <= 0:
        return PaymentStatus.SUCCEEDED
    if refunded_fen >= amount_fen:
        return PaymentStatus.REFUNDED
    return PaymentStatus.PARTIALLY_REFUNDED


def order_status_for(attempt: Attempt) -> OrderStatus:
    """The status of an order paid by ``attempt``."""
    status = paid_status(attempt.refunded_fen, attempt.amount_fen)
    if status is PaymentStatus.REFUNDED:
        return OrderStatus.REFUNDED
    if status is PaymentStatus.PARTIALLY_REFUNDED:
        return OrderStatus.PARTIALLY_REFUNDED
    return OrderStatus.PAID


def _with_refunds(attempt: Attempt, refunds: tuple[RefundLine, ...]) -> Attempt:
    updated = replace(attempt, refunds=refunds)
    if attempt.paid:
        target = paid_status(updated.refunded_fen, attempt.amount_fen)
        if target is not attempt.status:
            updated = replace(updated, status=check_transition(attempt.status, target))
    return updated


def _flag(attempt: Attempt, reason: str) -> Outcome:
    return Outcome(
        replace(attempt, flagged=attempt.flagged or reason),
        True,
        f"flagged: {reason}",
        flagged=True,
    )


def _ignored(attempt: Attempt, why: str) -> Outcome:
    return Outcome(attempt, False, f"ignored: {why}")


def apply_fact(attempt: Attempt, fact: Fact, now: datetime) -> Outcome:
    """The attempt after ``fact``; never raises for a fact that merely arrives late."""
    if fact.currency != attempt.currency:
        return _flag(
            attempt, f"currency {fact.currency} differs from the attempt's {attempt.currency}"
        )
    if fact.kind is EventKind.PAYMENT_SUCCEEDED:
        return _apply_success(attempt, fact, now)
    if fact.kind is EventKind.PAYMENT_FAILED:
        if attempt.status is not PaymentStatus.PENDING:
            return _ignored(attempt, f"a failure after {attempt.status}")
        return Outcome(replace(attempt, status=PaymentStatus.FAILED), True, "applied")
    if fact.kind is EventKind.PAYMENT_CLOSED:
        if attempt.status is not PaymentStatus.PENDING:
            return _ignored(attempt, f"a close after {attempt.status}")
        return Outcome(replace(attempt, status=PaymentStatus.CLOSED), True, "applied")
    if fact.out_refund_no is None:
        return _flag(attempt, "a refund fact without out_refund_no")
    if fact.kind is EventKind.REFUND_SUCCEEDED:
        return _apply_refund_success(attempt, fact, now)
    return _apply_refund_failure(attempt, fact.out_refund_no, now)


def _apply_success(attempt: Attempt, fact: Fact, now: datetime) -> Outcome:
    if fact.amount_fen != attempt.amount_fen:
        return _flag(
            attempt, f"paid {fact.amount_fen} fen, the attempt is for {attempt.amount_fen} fen"
        )
    if attempt.paid:
        return _ignored(attempt, "already paid")
    target = paid_status(attempt.refunded_fen, attempt.amount_fen)
    paid = replace(attempt, status=check_transition(attempt.status, target))
    if attempt.reversal is ReversalState.DONE:
        # Paid before the platform voided it: the reversal returned the money.
        returned = _reversal_line(paid, now)
        return Outcome(
            _with_refunds(paid, (*paid.refunds, returned)),
            True,
            "applied: paid, then reversed at the counter",
            newly_paid=True,
        )
    return Outcome(paid, True, "applied", newly_paid=True)


def _reversal_line(attempt: Attempt, at: datetime) -> RefundLine:
    return RefundLine(
        out_refund_no=reversal_refund_no(attempt.out_trade_no),
        amount_fen=attempt.amount_fen - attempt.refunded_fen - attempt.reserved_fen,
        status=RefundStatus.SUCCEEDED,
        created_at=at,
        updated_at=at,
        reason="reversed at the counter",
    )


def begin_reversal(attempt: Attempt) -> Attempt | None:
    """The unsettled counter sale marked as being reversed, or None if there is nothing to do.

    Only a PENDING attempt is reversed: one already paid keeps paying its order.
    """
    if attempt.status is not PaymentStatus.PENDING or attempt.reversal is not None:
        return None
    return replace(attempt, reversal=ReversalState.PENDING)


def finish_reversal(attempt: Attempt, now: datetime) -> Attempt | None:
    """The attempt after the platform voided it: CLOSED if unpaid, fully refunded if paid."""
    if attempt.reversal is not ReversalState.PENDING:
        return None
    done = replace(attempt, reversal=ReversalState.DONE)
    if attempt.status is PaymentStatus.PENDING:
        return replace(done, status=check_transition(attempt.status, PaymentStatus.CLOSED))
    if attempt.paid and attempt.refundable_fen > 0:
        return _with_refunds(done, (*done.refunds, _reversal_line(done, now)))
    return done


def keep_paid(attempt: Attempt) -> Attempt | None:
    """The platform refused to reverse a paid sale: it stays paid and pays its order."""
    if attempt.reversal is not ReversalState.PENDING:
        return None
    return replace(attempt, reversal=None)


def _apply_refund_success(attempt: Attempt, fact: Fact, now: datetime) -> Outcome:
    assert fact.out_refund_no is not None
    line = attempt.refund(fact.out_refund_no)
    if line is not None and line.status is RefundStatus.SUCCEEDED:
        return _ignored(attempt, "refund already recorded")
    if line is not None and line.amount_fen != fact.amount_fen:
        return _flag(
            attempt,
            f"refund {fact.out_refund_no} of {fact.amount_fen} fen, we asked for {line.amount_fen}",
        )
    others = tuple(r for r in attempt.refunds if r.out_refund_no != fact.out_refund_no)
    counted = sum(r.amount_fen for r in others if r.status is not RefundStatus.FAILED)
    if counted + fact.amount_fen > attempt.amount_fen:
        return _flag(attempt, f"refunds would exceed the {attempt.amount_fen} fen paid")
    succeeded = RefundLine(
        out_refund_no=fact.out_refund_no,
        amount_fen=fact.amount_fen,
        status=RefundStatus.SUCCEEDED,
        created_at=line.created_at if line else now,
        updated_at=now,
        reason=line.reason if line else None,
        provider_refund_no=fact.provider_refund_no or (line.provider_refund_no if line else None),
    )
    refunds = tuple(
        succeeded if r.out_refund_no == fact.out_refund_no else r for r in attempt.refunds
    )
    if line is None:
        refunds = (*refunds, succeeded)
    return Outcome(_with_refunds(attempt, refunds), True, "applied", refund_succeeded=succeeded)


def _apply_refund_failure(attempt: Attempt, out_refund_no: str, now: datetime) -> Outcome:
    line = attempt.refund(out_refund_no)
    if line is None:
        return _ignored(attempt, "a failure of a refund we never asked for")
    if line.status is not RefundStatus.PENDING:
        return _ignored(attempt, f"a failure of a refund already {line.status}")
    failed = replace(line, status=RefundStatus.FAILED, updated_at=now)
    refunds = tuple(failed if r.out_refund_no == out_refund_no else r for r in attempt.refunds)
    return Outcome(replace(attempt, refunds=refunds), True, "applied")


class RefundRefused(ValueError):
    """A refund that may not be reserved; ``code`` is the userError code."""

    def __init__(self, code: UserErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def reserve_refund(
    attempt: Attempt,
    out_refund_no: str,
    amount_fen: int,
    now: datetime,
    reason: str | None = None,
) -> Attempt:
    """The attempt with ``amount_fen`` reserved for a new refund, or RefundRefused.

    Reserved and refunded amounts together never exceed the paid amount; the
    store writes the result under a version guard, so two refunds that race
    cannot both take the last fen.
    """
    if amount_fen <= 0:
        raise RefundRefused(
            UserErrorCode.INVALID_AMOUNT, "amountFen must be a positive number of fen"
        )
    if not attempt.paid:
        raise RefundRefused(
            UserErrorCode.PAYMENT_NOT_REFUNDABLE,
            f"only a paid payment can be refunded; this one is {attempt.status}",
        )
    if attempt.flagged:
        raise RefundRefused(
            UserErrorCode.PAYMENT_NOT_REFUNDABLE,
            "the payment is flagged for review and cannot be refunded",
        )
    if attempt.refund(out_refund_no) is not None:
        raise RefundRefused(
            UserErrorCode.DUPLICATE_REFUND, f"refund {out_refund_no} exists already"
        )
    if amount_fen > attempt.refundable_fen:
        raise RefundRefused(
            UserErrorCode.REFUND_EXCEEDS_PAID,
            f"{amount_fen} fen exceeds the {attempt.refundable_fen} fen left to refund",
        )
    line = RefundLine(out_refund_no, amount_fen, RefundStatus.PENDING, now, now, reason)
    return replace(attempt, refunds=(*attempt.refunds, line))


def close_unpaid(attempt: Attempt) -> Attempt | None:
    """The attempt closed by us (the platform confirmed the close), or None if not PENDING."""
    if attempt.status is not PaymentStatus.PENDING:
        return None
    return replace(attempt, status=check_transition(attempt.status, PaymentStatus.CLOSED))


def fail_unpaid(attempt: Attempt) -> Attempt | None:
    """The attempt failed by us (the platform refused it), or None if not PENDING."""
    if attempt.status is not PaymentStatus.PENDING:
        return None
    return replace(attempt, status=check_transition(attempt.status, PaymentStatus.FAILED))
