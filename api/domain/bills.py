"""A platform's daily bill (对账单) in one shape, whatever the platform's file looks like.

A provider reads its platform's bill file into :class:`BillLine` records and,
where the file has them, the bill's own :class:`BillTotals`. Money is integer
fen; a platform that states fees in fractions of a fen (WeChat Pay writes
手续费 with five decimals) has them rounded half up to the fen, line by line.

Business days are Beijing days: the bill of day D holds what the platform
completed between D 00:00 and D+1 00:00 Beijing time (UTC+8), and
:func:`day_bounds` gives that window in UTC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from api.domain.beijing import BEIJING


class BillLineKind(enum.StrEnum):
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"


class BillLineStatus(enum.StrEnum):
    """What the bill says became of the payment or refund."""

    SUCCEEDED = "SUCCEEDED"
    PENDING = "PENDING"  # e.g. a refund the platform still processes
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class BillLine:
    """One line of a bill: a payment received or a refund paid out.

    ``amount_fen`` is positive for both kinds (what was paid, what was
    refunded). ``fee_fen`` is the platform's fee as the bill states it for the
    line: positive when charged, negative when a refund returns part of it.
    ``occurred_at`` is when the platform completed it (timezone-aware UTC).
    For a refund, ``out_trade_no`` and ``provider_trade_no`` are the refunded
    payment's and ``out_refund_no`` is ours (``provider_refund_no`` the platform's).
    """

    kind: BillLineKind
    out_trade_no: str
    amount_fen: int
    occurred_at: datetime
    provider_trade_no: str | None = None
    out_refund_no: str | None = None
    provider_refund_no: str | None = None
    fee_fen: int = 0
    status: BillLineStatus = BillLineStatus.SUCCEEDED

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None:
            raise ValueError("BillLine.occurred_at must be timezone-aware")
        if isinstance(self.amount_fen, bool) or not isinstance(self.amount_fen, int):
            raise TypeError("amount_fen must be an int count of fen")
        if self.amount_fen < 0:
            raise ValueError("amount_fen must not be negative (a refund's amount is positive)")
        if self.kind is BillLineKind.REFUND and not self.out_refund_no:
            raise ValueError("a refund line needs out_refund_no")

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the line: kind, our trade number, our refund number ('' if none)."""
        return (self.kind.value, self.out_trade_no, self.out_refund_no or "")


@dataclass(frozen=True, slots=True)
class BillTotals:
    """A bill's own summary lines, in fen: what the lines must add up to.

    ``fee_fen`` is net (fees charged minus fees returned by refunds).
    """

    payment_count: int
    payment_fen: int
    refund_count: int
    refund_fen: int
    fee_fen: int = 0


class BillUnavailableReason(enum.StrEnum):
    NOT_READY = "NOT_READY"  # not generated yet: the platform publishes it later, ask again
    NO_BILL = "NO_BILL"  # the platform has no bill for the day (no business, or out of range)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The Beijing business day ``day`` as a UTC window [start, end)."""
    start = datetime.combine(day, time(0), tzinfo=BEIJING).astimezone(UTC)
    return start, start + timedelta(days=1)


def beijing_day(moment: datetime) -> date:
    """The Beijing business day ``moment`` (timezone-aware) falls on."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: branchpay times are timezone-aware UTC")
    return moment.astimezone(BEIJING).date()


def yuan_to_fen(text: str) -> int:
    """A bill's yuan amount ("50.00", "-0.27000", "1,234.50") as fen, rounded half up.

    Raises ValueError for text that is not a decimal number.
    """
    cleaned = text.strip().replace(",", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation as error:
        raise ValueError(f"not an amount: {text!r}") from error
    if not value.is_finite():
        raise ValueError(f"not an amount: {text!r}")
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fen_to_yuan(fen: int, places: int = 2) -> str:
    """Fen as a yuan string with ``places`` decimals (a bill's own way of writing it)."""
    return f"{Decimal(fen).scaleb(-2):.{places}f}"


# --- reconciliation: what a bill line against our record means --------------------------


class DiscrepancyKind(enum.StrEnum):
    """What a reconciliation found wrong with one line (docs/reconciliation.md)."""

    MISSING_LOCALLY = "MISSING_LOCALLY"  # on the bill, unknown to us
    MISSING_ON_PLATFORM = "MISSING_ON_PLATFORM"  # we hold it succeeded, the bill does not
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"  # the bill's amount is not ours
    STATUS_MISMATCH = "STATUS_MISMATCH"  # the bill's status is not ours
    DUPLICATE_ON_BILL = "DUPLICATE_ON_BILL"  # the same line twice on the bill


# Our statuses that agree with a bill's SUCCEEDED: a payment that was paid (refunds
# since then do not undo the payment line), a refund line that was paid out.
PAID_PAYMENT_STATUSES = frozenset({"SUCCEEDED", "PARTIALLY_REFUNDED", "REFUNDED"})
_AGREES: dict[tuple[BillLineKind, BillLineStatus], frozenset[str]] = {
    (BillLineKind.PAYMENT, BillLineStatus.SUCCEEDED): PAID_PAYMENT_STATUSES,
    (BillLineKind.PAYMENT, BillLineStatus.PENDING): frozenset({"PENDING"}),
    (BillLineKind.PAYMENT, BillLineStatus.FAILED): frozenset({"FAILED", "CLOSED"}),
    (BillLineKind.REFUND, BillLineStatus.SUCCEEDED): frozenset({"SUCCEEDED"}),
    (BillLineKind.REFUND, BillLineStatus.PENDING): frozenset({"PENDING"}),
    (BillLineKind.REFUND, BillLineStatus.FAILED): frozenset({"FAILED"}),
}


@dataclass(frozen=True, slots=True)
class OurRecord:
    """Our side of a bill line: the attempt (payment line) or its refund line (refund line).

    ``status`` is our PaymentStatus or RefundStatus value; ``at`` our time of it
    (a payment's ``paidAt``, a succeeded refund line's ``updatedAt``), None when
    it has not succeeded.
    """

    kind: BillLineKind
    out_trade_no: str
    amount_fen: int
    status: str
    at: datetime | None = None
    out_refund_no: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind.value, self.out_trade_no, self.out_refund_no or "")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a bill line against our record means: its discrepancies (none: matched).

    ``resolvable``: the bill says succeeded and we still hold it PENDING, a missed
    notification that asking the platform (or resubmitting the refund) settles.
    """

    kinds: tuple[DiscrepancyKind, ...]
    resolvable: bool = False

    @property
    def matched(self) -> bool:
        return not self.kinds


def judge(line: BillLine, ours: OurRecord | None) -> Verdict:
    """Match a bill line with our record of the same key, by id alone (no time condition)."""
    if ours is None:
        return Verdict((DiscrepancyKind.MISSING_LOCALLY,))
    kinds: list[DiscrepancyKind] = []
    resolvable = False
    if line.amount_fen != ours.amount_fen:
        kinds.append(DiscrepancyKind.AMOUNT_MISMATCH)
    if ours.status not in _AGREES[(line.kind, line.status)]:
        kinds.append(DiscrepancyKind.STATUS_MISMATCH)
        resolvable = line.status is BillLineStatus.SUCCEEDED and ours.status == "PENDING"
    return Verdict(tuple(kinds), resolvable)


def succeeded(record: OurRecord) -> bool:
    """Whether our record counts as money moved (what MISSING_ON_PLATFORM looks for)."""
    if record.kind is BillLineKind.PAYMENT:
        return record.status in PAID_PAYMENT_STATUSES
    return record.status == "SUCCEEDED"


def missing_window(day: date, tolerance: timedelta) -> tuple[datetime, datetime]:
    """Where day ``day``'s run looks for records the bill lacks: [S - tau, E - tau).

    A record in [E - tau, E) is left to the next day's run, whose window starts
    there: a payment at 23:59:59 that the platform bills on the next day is
    matched there and flagged on neither day.
    """
    start, end = day_bounds(day)
    return start - tolerance, end - tolerance


def needs_mark(at: datetime | None, day: date, tolerance: timedelta) -> bool:
    """Whether a record matched on day ``day``'s bill gets a boundary mark.

    One whose time lies outside [S + tau, E - tau) may fall in a neighbouring
    day's window; the mark tells that day's run it was billed (on ``day``).
    A record without a time of ours (not succeeded) is in no window: no mark.
    """
    if at is None:
        return False
    start, end = day_bounds(day)
    return not (start + tolerance <= at < end - tolerance)


def mark_id(branch: str, provider: str, key: tuple[str, str, str]) -> str:
    """A bill mark's ``_id``: ``{branch}:{provider}:{kind}:{outTradeNo}:{outRefundNo}``."""
    return ":".join((branch, provider, *key))


def reconciliation_id(branch: str, provider: str, day: date) -> str:
    """One per (branch, provider, bill date): ``{branch}:{provider}:{YYYY-MM-DD}``."""
    return f"{branch}:{provider}:{day.isoformat()}"


def discrepancy_id(reconciliation: str, kind: DiscrepancyKind, key: tuple[str, str, str]) -> str:
    """Deterministic, so a re-run finds the same discrepancy instead of adding a second."""
    _, out_trade_no, out_refund_no = key
    return f"{reconciliation}:{kind.value}:{out_trade_no}:{out_refund_no}"


def age_in_days(detected_at: datetime, now: datetime) -> int:
    """Beijing days from the day of ``detected_at`` to the day of ``now`` (0: the same day)."""
    return max(0, (beijing_day(now) - beijing_day(detected_at)).days)


def is_stale(age_days: int, stale_days: int) -> bool:
    """An open discrepancy older than ``stale_days`` is flagged."""
    return age_days > stale_days
