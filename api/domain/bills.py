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
