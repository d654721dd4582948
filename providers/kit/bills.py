"""What a gateway simulator needs to serve daily bills: its ledger and the test controls.

A simulator records every payment and refund it completes in a :class:`BillBook`
(:meth:`~BillBook.record_payment`, :meth:`~BillBook.record_refund`) and writes
the bill of a day from :meth:`~BillBook.entries_of` in its platform's format.
The book decides when a day's bill exists, as the platforms do: day D (a
Beijing day) is published on D+1 from ``publish_hour`` Beijing time; before
that :meth:`~BillBook.availability` says ``NOT_READY``. With
``publish_current_day`` on, every day up to now is published, the current
Beijing day so far included, so a demo or a test can reconcile today's payments.

The setting ``BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY=1`` (``make run``, ``branchpay
serve --demo`` and the test suite set it: tests/conftest.py) turns
``publish_current_day`` on for every book not told otherwise (docs/providers.md,
docs/plugin-authors.md).

Tests change a bill through :func:`bill_routes` (under the simulator's control
prefix), each change applied to whichever day the line falls on:

- ``GET {prefix}/bills``: the policy and the pending adjustments;
- ``PUT {prefix}/bills`` ``{"publishCurrentDay": true}``: the policy;
- ``POST {prefix}/bills/adjustments`` with ``action``:

  - ``add``: a line only the bill has (``kind`` PAYMENT or REFUND,
    ``outTradeNo``, ``outRefundNo`` for a refund, ``amountFen``, optional
    ``at`` ISO time, default now, optional ``tradeNo``);
  - ``drop``: the line of ``outTradeNo`` (and ``outRefundNo``) left off the bill;
  - ``amount``: that line's amount written as ``amountFen``;
  - ``duplicate``: that line written twice;
  - ``retime``: that line completed at ``at`` instead (so on that day's bill);

- ``DELETE {prefix}/bills/adjustments``: forget the adjustments.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.plugin import BEIJING, BillUnavailableReason, beijing_day, day_bounds
from providers.kit.simulator import read_fields

__all__ = [
    "ACTIONS",
    "CURRENT_DAY_ENV",
    "BillBook",
    "BillEntry",
    "beijing_today",
    "bill_routes",
    "fee_for",
]

# The setting `make run` and the test suite turn on: simulators publish the current day too.
CURRENT_DAY_ENV = "BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY"


def current_day_default() -> bool:
    return os.environ.get(CURRENT_DAY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


PAYMENT = "PAYMENT"
REFUND = "REFUND"
ACTIONS = ("add", "drop", "amount", "duplicate", "retime")


@dataclass(frozen=True)
class BillEntry:
    """One completed payment or refund, as the platform's ledger holds it.

    ``fee_fen`` is signed: positive for a fee charged, negative for a fee a
    refund returns. ``created_at`` is when the payment was opened (a refund
    carries its payment's), ``at`` when this entry completed. ``extra`` holds
    what a simulator needs for its own columns (a payer id, a trade type, ...).
    """

    kind: str
    out_trade_no: str
    trade_no: str
    amount_fen: int
    at: datetime
    created_at: datetime
    fee_fen: int = 0
    out_refund_no: str | None = None
    refund_no: str | None = None
    subject: str = ""
    status: str = "SUCCEEDED"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.out_trade_no, self.out_refund_no or "")


@dataclass
class Adjustment:
    action: str
    kind: str
    out_trade_no: str
    out_refund_no: str | None = None
    amount_fen: int | None = None
    at: datetime | None = None
    trade_no: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.out_trade_no, self.out_refund_no or "")

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat() if self.at else None
        return data


def fee_for(amount_fen: int, rate: Decimal) -> int:
    """The fee on ``amount_fen`` at ``rate`` (0.006 is 0.6%), rounded half up to the fen."""
    return int((Decimal(amount_fen) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))


class BillBook:
    """A simulator's ledger of completed payments and refunds, and the day bills made from it."""

    def __init__(
        self,
        *,
        fee_rate: Decimal = Decimal("0.006"),
        publish_hour: int = 9,
        publish_current_day: bool | None = None,
    ) -> None:
        if not 0 <= publish_hour <= 23:
            raise ValueError("publish_hour is an hour of the day, 0..23")
        self.fee_rate = fee_rate
        self.publish_hour = publish_hour
        # None: the CURRENT_DAY_ENV setting decides (off unless it is 1/true/yes/on).
        self.publish_current_day = (
            current_day_default() if publish_current_day is None else publish_current_day
        )
        self.entries: list[BillEntry] = []
        self._by_key: dict[tuple[str, str, str], BillEntry] = {}
        self.adjustments: list[Adjustment] = []

    # --- the ledger -------------------------------------------------------------------

    def fee(self, amount_fen: int) -> int:
        return fee_for(amount_fen, self.fee_rate)

    def record_payment(
        self,
        out_trade_no: str,
        trade_no: str,
        amount_fen: int,
        *,
        created_at: datetime,
        at: datetime | None = None,
        subject: str = "",
        **extra: Any,
    ) -> BillEntry:
        """Record a payment the platform completed (once per trade: a repeat is ignored)."""
        if (known := self._by_key.get((PAYMENT, out_trade_no, ""))) is not None:
            return known
        entry = BillEntry(
            kind=PAYMENT,
            out_trade_no=out_trade_no,
            trade_no=trade_no,
            amount_fen=amount_fen,
            at=at or datetime.now(UTC),
            created_at=created_at,
            fee_fen=self.fee(amount_fen),
            subject=subject,
            extra=dict(extra),
        )
        self.entries.append(entry)
        self._by_key[entry.key] = entry
        return entry

    def record_refund(
        self,
        out_trade_no: str,
        out_refund_no: str,
        amount_fen: int,
        *,
        refund_no: str | None = None,
        at: datetime | None = None,
        **extra: Any,
    ) -> BillEntry:
        """Record a refund the platform paid out, of a payment recorded before."""
        if (known := self._by_key.get((REFUND, out_trade_no, out_refund_no))) is not None:
            return known
        payment = self.payment(out_trade_no)
        if payment is None:
            raise LookupError(f"no payment {out_trade_no} to refund")
        entry = BillEntry(
            kind=REFUND,
            out_trade_no=out_trade_no,
            trade_no=payment.trade_no,
            amount_fen=amount_fen,
            at=at or datetime.now(UTC),
            created_at=payment.created_at,
            fee_fen=-self.fee(amount_fen),
            out_refund_no=out_refund_no,
            refund_no=refund_no or secrets.token_hex(8),
            subject=payment.subject,
            extra={**payment.extra, **extra},
        )
        self.entries.append(entry)
        self._by_key[entry.key] = entry
        return entry

    def payment(self, out_trade_no: str) -> BillEntry | None:
        return self._by_key.get((PAYMENT, out_trade_no, ""))

    # --- publication ------------------------------------------------------------------

    def availability(self, day: date, now: datetime | None = None) -> BillUnavailableReason | None:
        """None when the bill of ``day`` is published; else why not (NOT_READY)."""
        moment = (now or datetime.now(UTC)).astimezone(BEIJING)
        today = moment.date()
        if day > today:
            return BillUnavailableReason.NOT_READY
        if self.publish_current_day:
            return None
        if day == today:
            return BillUnavailableReason.NOT_READY
        if day == today - timedelta(days=1) and moment.hour < self.publish_hour:
            return BillUnavailableReason.NOT_READY
        return None

    def entries_of(self, day: date, now: datetime | None = None) -> list[BillEntry]:
        """The lines of the bill of ``day``, adjustments applied, in completion order.

        For the current day (``publish_current_day``) only what completed so far.
        """
        start, end = day_bounds(day)
        cutoff = min(end, now or datetime.now(UTC))
        lines: list[BillEntry] = []
        for entry in [*self.entries, *self._added()]:
            adjusted = self._adjusted(entry)
            for copy in adjusted:
                if start <= copy.at < cutoff:
                    lines.append(copy)
        lines.sort(key=lambda e: e.at)
        return lines

    def has_business(self, day: date) -> bool:
        """Whether anything (adjustments included) falls on ``day``."""
        return bool(self.entries_of(day))

    def _added(self) -> Iterator[BillEntry]:
        for adj in self.adjustments:
            if adj.action != "add":
                continue
            payment = self.payment(adj.out_trade_no)
            amount = adj.amount_fen or 0
            at = adj.at or datetime.now(UTC)  # set when the adjustment was made
            yield BillEntry(
                kind=adj.kind,
                out_trade_no=adj.out_trade_no,
                trade_no=adj.trade_no or (payment.trade_no if payment else secrets.token_hex(10)),
                amount_fen=amount,
                at=at,
                created_at=payment.created_at if payment else at,
                fee_fen=self.fee(amount) * (1 if adj.kind == PAYMENT else -1),
                out_refund_no=adj.out_refund_no,
                refund_no=secrets.token_hex(8) if adj.kind == REFUND else None,
                subject=payment.subject if payment else "bill only",
                extra=dict(payment.extra) if payment else {},
            )

    def _adjusted(self, entry: BillEntry) -> list[BillEntry]:
        copies = [entry]
        for adj in self.adjustments:
            if adj.action == "add" or adj.key != entry.key:
                continue
            if adj.action == "drop":
                return []
            if adj.action == "amount" and adj.amount_fen is not None:
                copies = [replace(c, amount_fen=adj.amount_fen) for c in copies]
            elif adj.action == "retime" and adj.at is not None:
                copies = [replace(c, at=adj.at) for c in copies]
            elif adj.action == "duplicate":
                copies = [*copies, copies[-1]]
        return copies

    # --- controls ---------------------------------------------------------------------

    def adjust(self, fields: dict[str, Any]) -> Adjustment:
        """Add an adjustment from a control request's fields; ValueError when they are bad."""
        action = str(fields.get("action", ""))
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        kind = str(fields.get("kind") or (REFUND if fields.get("outRefundNo") else PAYMENT))
        if kind not in (PAYMENT, REFUND):
            raise ValueError("kind must be PAYMENT or REFUND")
        out_trade_no = str(fields.get("outTradeNo") or "")
        if not out_trade_no:
            raise ValueError("outTradeNo is required")
        out_refund_no = fields.get("outRefundNo") or None
        if kind == REFUND and not out_refund_no:
            raise ValueError("a refund line needs outRefundNo")
        amount = fields.get("amountFen")
        amount_fen = None if amount in (None, "") else int(amount)
        if action in ("add", "amount") and (amount_fen is None or amount_fen < 0):
            raise ValueError("amountFen (a non-negative count of fen) is required")
        at_text = fields.get("at")
        at = datetime.fromisoformat(str(at_text)) if at_text else None
        if at is not None and at.tzinfo is None:
            raise ValueError("at must carry a timezone")
        if action == "retime" and at is None:
            raise ValueError("retime needs at")
        if action == "add" and at is None:
            at = datetime.now(UTC)
        adjustment = Adjustment(
            action=action,
            kind=kind,
            out_trade_no=out_trade_no,
            out_refund_no=str(out_refund_no) if out_refund_no else None,
            amount_fen=amount_fen,
            at=at.astimezone(UTC) if at else None,
            trade_no=str(fields["tradeNo"]) if fields.get("tradeNo") else None,
        )
        self.adjustments.append(adjustment)
        return adjustment

    def policy_json(self) -> dict[str, Any]:
        return {
            "publishCurrentDay": self.publish_current_day,
            "publishHour": self.publish_hour,
            "adjustments": [a.as_json() for a in self.adjustments],
        }


def bill_routes(prefix: str, book: BillBook) -> list[Route]:
    """The bill controls under ``prefix`` (see the module's docstring)."""

    async def policy(request: Request) -> Response:
        if request.method == "PUT":
            try:
                fields = await read_fields(request)
            except ValueError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            value = fields.get("publishCurrentDay")
            if isinstance(value, str):
                value = value.lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                return JSONResponse({"error": "publishCurrentDay must be true or false"}, 400)
            book.publish_current_day = value
        return JSONResponse(book.policy_json())

    async def adjustments(request: Request) -> Response:
        if request.method == "DELETE":
            book.adjustments.clear()
            return JSONResponse(book.policy_json())
        try:
            adjustment = book.adjust(await read_fields(request))
        except (ValueError, TypeError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse(adjustment.as_json(), status_code=201)

    return [
        Route(f"{prefix}/bills", policy, methods=["GET", "PUT"]),
        Route(f"{prefix}/bills/adjustments", adjustments, methods=["POST", "DELETE"]),
    ]


def beijing_today(now: datetime | None = None) -> date:
    return beijing_day(now or datetime.now(UTC))
