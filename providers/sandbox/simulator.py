"""The sandbox payment gateway: a Starlette app that plays the platform on loopback.

It keeps attempts in memory and behaves like a small real platform:

- ``POST /api/payments`` opens an attempt (idempotent for the same number and amount);
- ``GET /pay/{out_trade_no}`` is the payer's page; ``POST`` there with the form
  field ``outcome`` = ``success`` | ``fail`` | ``close`` settles the attempt and
  sends the signed notification to the attempt's ``notify_url`` in the
  background, retrying with backoff until branchpay answers 2xx;
- ``POST /app/open`` takes the APP payload the adapter signed and returns the pay URL;
- ``GET /api/payments/{out_trade_no}`` queries, ``POST /api/refunds`` refunds
  (idempotent per ``out_refund_no``, never beyond the paid amount; notifies too),
  ``POST /api/payments/{out_trade_no}/close`` closes an unpaid attempt;
- ``GET /api/bills/{YYYY-MM-DD}?merchant_id=M`` serves merchant M's daily bill
  of that Beijing day (see :mod:`providers.sandbox.bills` for the file);
- ``POST /api/code-payments`` charges a payment code scanned at a counter, and
  ``POST /api/payments/{out_trade_no}/reverse`` voids a counter sale (below).

Payment codes (``PAYMENT_CODE``): 18 digits, ``99`` then 16 digits. The last
digit says what the payer does, so tests choose it:

- ``1``: paid at once (answer 200, status ``SUCCEEDED``);
- ``2``: the payer confirms on the phone: the pay call and the first 2 queries
  answer 202 / ``PENDING`` with ``payer_confirming``; the 3rd query finds it
  paid, and the simulator then sends the payment's signed notification to the
  attempt's ``notify_url`` (as for a paid page, retried until 2xx);
- ``3``: the payer never confirms: ``PENDING`` until reversed or expired;
- any other digit: declined (no balance): status ``FAILED``, ``failure``
  ``CODE_DECLINED``.

A code that is not a sandbox code answers 400 ``CODE_INVALID``; a code already
used for another attempt answers 400 ``CODE_USED`` (payment codes are one-time;
the simulator keeps only a digest of each code, never the code). Paying the same
``out_trade_no`` again answers its current state and never charges twice.

A reverse voids the attempt and answers 200 with ``action``: ``close`` (it was
unpaid, e.g. the payer still confirming: a later confirm cannot charge it),
``refund`` (it was paid: what was left after refunds goes back to the payer,
shown on the bill as a refund numbered ``rv...``) or ``none`` (already closed
or failed, or never seen). The attempt reads ``CLOSED`` afterwards.

Each attempt belongs to the merchant account named by ``merchant_id`` in the
create request (default ``sandbox``): branches sharing one simulator each get a
bill of their own. Every payment the simulator completes and every refund it
pays is recorded in its :class:`~providers.kit.bills.BillBook`, with the book's
fee (0.6%, half up to the fen; a refund returns its share).

A bill answers 404 with a JSON ``code``:

- ``BILL_NOT_READY``: the day's bill is not published yet (day D is published
  on D+1 from 09:00 Beijing time; a day still to come never is). Ask again later.
  With ``publish_current_day`` every day up to now is published, today so far included.
- ``NO_BILL``: there is no bill for that published day and never will be: the
  merchant had no payment or refund completed that day, or the day lies before
  the simulator started (its ledger begins then; the message says which).

Every ``/api`` request must carry a valid signature (see
:mod:`providers.sandbox.signing`) or gets 401. Test controls, unauthenticated
like the pay page, live under ``/control``: settle without delivering and get
the signed notification back, read the latest notification, re-deliver it
(``count`` times), re-sign a notification it sent with its amount, merchant or
out_trade_no changed (``/control/notifications/resign``), read what its ledger
holds as taken from the payer for an attempt (``/control/payments/{no}/taken``:
paid minus refunded and reversed), inject faults (5xx answers, stalls) into
``/api`` calls, and change bills (``/control/bills``, see :mod:`providers.kit.bills`).

Every notification names the merchant account it belongs to (``merchant_id``),
under the signature.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import json
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from api.plugin import BillUnavailableReason, beijing_day
from providers.kit.bills import BillBook, bill_routes
from providers.kit.driver import CODE_BEHAVIOURS
from providers.kit.simulator import (
    Fault,
    FaultQueue,
    Notifier,
    Signer,
    control_routes,
    page,
    pay_page,
)
from providers.sandbox import bills, signing

logger = logging.getLogger("branchpay.providers.sandbox.simulator")

OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z]{8,32}$")
METHODS = frozenset({"PAGE", "WAP", "QR_CODE", "APP"})
PAYMENT_CODE = re.compile(r"99\d{16}")
# The last digit of a payment code: what the payer does (anything else: declined).
CONFIRMING_QUERIES = 2  # "confirm": the queries that still find the payer confirming
OUTCOMES = {"success": "SUCCEEDED", "fail": "FAILED", "close": "CLOSED"}
EVENT_TYPES = {
    "SUCCEEDED": "payment.succeeded",
    "FAILED": "payment.failed",
    "CLOSED": "payment.closed",
}
MAX_BODY_BYTES = 64 * 1024
DEFAULT_MERCHANT = bills.DEFAULT_MERCHANT
MERCHANT_ID = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class Refund:
    out_refund_no: str
    refund_no: str
    refund_fen: int
    created_at: datetime
    notification_id: str


@dataclass
class Attempt:
    out_trade_no: str
    trade_no: str
    amount_fen: int
    currency: str
    subject: str
    method: str
    notify_url: str
    return_url: str | None
    expires_at: datetime
    merchant_id: str = DEFAULT_MERCHANT
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "PENDING"
    settled_at: datetime | None = None
    notification_id: str | None = None
    refunds: dict[str, Refund] = field(default_factory=dict)
    # A counter sale: what the payer does ("pay", "confirm", "never", "decline"),
    # the queries left before a confirming payer has paid, and what the sale took.
    code_behaviour: str | None = None
    confirming_queries: int = 0
    paid_fen: int = 0
    reversed_fen: int = 0
    # Bodies of the notifications sent for this attempt, oldest first; the
    # body (and so its id) is fixed once made, only the signature is renewed.
    notifications: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def refunded_fen(self) -> int:
        return sum(r.refund_fen for r in self.refunds.values())

    @property
    def taken_fen(self) -> int:
        """The ledger: what the payer has paid for this attempt and not had back."""
        return self.paid_fen - self.refunded_fen - self.reversed_fen

    @property
    def payer_confirming(self) -> bool:
        return self.status == "PENDING" and self.code_behaviour in ("confirm", "never")

    def as_json(self) -> dict[str, Any]:
        return {
            "out_trade_no": self.out_trade_no,
            "trade_no": self.trade_no,
            "method": self.method,
            "merchant_id": self.merchant_id,
            "status": self.status,
            "payer_confirming": self.payer_confirming,
            "amount_fen": self.amount_fen,
            "currency": self.currency,
            "refunded_fen": self.refunded_fen,
            "reversed_fen": self.reversed_fen,
            "settled_at": self.settled_at.isoformat() if self.settled_at else None,
            "notification_id": self.notification_id,
            "refunds": [
                {
                    "out_refund_no": r.out_refund_no,
                    "refund_no": r.refund_no,
                    "refund_fen": r.refund_fen,
                    "notification_id": r.notification_id,
                }
                for r in self.refunds.values()
            ],
        }


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _now() -> datetime:
    return datetime.now(UTC)


class SandboxGateway:
    """The simulator's state and handlers; :func:`create_app` wraps it in Starlette."""

    def __init__(
        self,
        secret: bytes,
        *,
        retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0),
        book: BillBook | None = None,
    ):
        self._secret = secret
        self.retry_delays = retry_delays
        self.started_at = _now()
        self.book = book or BillBook()
        self.attempts: dict[str, Attempt] = {}
        # Digests of the payment codes charged, by attempt: a code pays one attempt only.
        self.used_codes: dict[str, str] = {}
        self.faults = FaultQueue()
        self.notifier = Notifier(retry_delays=retry_delays, timeout=5.0)

    # --- notifications -------------------------------------------------------------

    def _record_notification(self, attempt: Attempt, payload: dict[str, Any]) -> str:
        notification_id = "ntf_" + uuid.uuid4().hex
        body = json.dumps({"id": notification_id, **payload}, separators=(",", ":")).encode()
        attempt.notifications.append((notification_id, body))
        return notification_id

    def _signed(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", **signing.signed_headers(self._secret, body)}

    def _signer(self, body: bytes) -> Signer:
        return lambda: (self._signed(body), body)

    def _deliver_in_background(self, url: str, body: bytes) -> None:
        self.notifier.in_background(url, self._signer(body))

    # --- rules --------------------------------------------------------------------

    def _expire(self, attempt: Attempt) -> None:
        if attempt.status == "PENDING" and _now() >= attempt.expires_at:
            attempt.status = "CLOSED"
            attempt.settled_at = attempt.expires_at

    def _settle(self, attempt: Attempt, outcome: str) -> str | None:
        """Apply the payer's outcome; the notification id, or None if already settled."""
        self._expire(attempt)
        if attempt.status != "PENDING":
            return None
        attempt.status = OUTCOMES[outcome]
        attempt.settled_at = _now()
        if attempt.status == "SUCCEEDED":
            attempt.paid_fen = attempt.amount_fen
            self.book.record_payment(
                attempt.out_trade_no,
                attempt.trade_no,
                attempt.amount_fen,
                created_at=attempt.created_at,
                at=attempt.settled_at,
                subject=attempt.subject,
                merchant_id=attempt.merchant_id,
            )
        attempt.notification_id = self._record_notification(
            attempt,
            {
                "type": EVENT_TYPES[attempt.status],
                "merchant_id": attempt.merchant_id,
                "out_trade_no": attempt.out_trade_no,
                "trade_no": attempt.trade_no,
                "amount_fen": attempt.amount_fen,
                "currency": attempt.currency,
                "occurred_at": attempt.settled_at.isoformat(),
            },
        )
        return attempt.notification_id

    async def _authenticate(self, request: Request) -> tuple[bytes, Response | None]:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return body, _error(413, "TOO_LARGE", "request body too large")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            signing.verify(
                self._secret,
                request.headers.get(signing.TIMESTAMP_HEADER),
                request.headers.get(signing.SIGNATURE_HEADER),
                signing.request_payload(request.method, target, body),
            )
        except signing.SignatureInvalid as exc:
            return body, _error(401, "UNAUTHORIZED", str(exc))
        fault = self.faults.take(request.url.path)
        if fault is not None:
            if fault.seconds:
                await asyncio.sleep(fault.seconds)
            if fault.status is not None:
                return body, _error(fault.status, "INJECTED_FAULT", "injected by /control/faults")
        return body, None

    # --- API ----------------------------------------------------------------------

    @staticmethod
    def _new_attempt(data: Any, method: str) -> Attempt | Response:
        """The attempt a create or code-pay request opens, or the refusal to answer."""
        try:
            out_trade_no = str(data["out_trade_no"])
            amount_fen = data["amount_fen"]
            currency = str(data["currency"])
            notify_url = str(data["notify_url"])
            expires_at = datetime.fromisoformat(str(data["expires_at"]))
            subject = str(data.get("subject") or "")
            return_url = data.get("return_url")
            merchant_id = str(data.get("merchant_id") or DEFAULT_MERCHANT)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "INVALID_REQUEST", f"malformed payment: {type(exc).__name__}")
        problems = []
        if not OUT_TRADE_NO.match(out_trade_no):
            problems.append("out_trade_no must be 8..32 characters [0-9A-Za-z]")
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
            problems.append("amount_fen must be a positive integer")
        if currency != "CNY":
            problems.append("currency must be CNY")
        if method not in METHODS | {"PAYMENT_CODE"}:
            problems.append(f"method must be one of {sorted(METHODS)}")
        if expires_at.tzinfo is None:
            problems.append("expires_at must carry a UTC offset")
        if not notify_url.startswith(("http://", "https://")):
            problems.append("notify_url must be an http(s) URL")
        if not MERCHANT_ID.match(merchant_id):
            problems.append("merchant_id must be 1..64 characters [0-9A-Za-z_.-]")
        if problems:
            return _error(400, "INVALID_REQUEST", "; ".join(problems))
        return Attempt(
            out_trade_no=out_trade_no,
            trade_no="sbx" + uuid.uuid4().hex[:20],
            amount_fen=amount_fen,
            currency=currency,
            subject=subject,
            method=method,
            notify_url=notify_url,
            return_url=str(return_url) if return_url else None,
            expires_at=expires_at.astimezone(UTC),
            merchant_id=merchant_id,
        )

    def _same_attempt(self, new: Attempt) -> Attempt | Response | None:
        """The attempt already open under the new one's number, or why it cannot be reused."""
        existing = self.attempts.get(new.out_trade_no)
        if existing is None:
            return None
        if (existing.amount_fen, existing.currency) != (new.amount_fen, new.currency):
            return _error(409, "DUPLICATE_OUT_TRADE_NO", "out_trade_no used for another amount")
        if (existing.method == "PAYMENT_CODE") != (new.method == "PAYMENT_CODE"):
            return _error(
                409, "DUPLICATE_OUT_TRADE_NO", "out_trade_no used for another kind of payment"
            )
        return existing

    async def create_payment(self, request: Request) -> Response:
        body, refused = await self._authenticate(request)
        if refused:
            return refused
        try:
            data = json.loads(body)
            method = str(data["method"])
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "INVALID_REQUEST", f"malformed payment: {type(exc).__name__}")
        if method not in METHODS:
            return _error(400, "INVALID_REQUEST", f"method must be one of {sorted(METHODS)}")
        new = self._new_attempt(data, method)
        if isinstance(new, Response):
            return new
        existing = self._same_attempt(new)
        if isinstance(existing, Response):
            return existing
        if existing is not None:
            attempt = existing
            status = 200
        else:
            attempt = new
            self.attempts[attempt.out_trade_no] = attempt
            status = 201
        pay_url = f"{str(request.base_url).rstrip('/')}/pay/{attempt.out_trade_no}"
        return JSONResponse({**attempt.as_json(), "pay_url": pay_url}, status_code=status)

    async def pay_with_code(self, request: Request) -> Response:
        body, refused = await self._authenticate(request)
        if refused:
            return refused
        try:
            data = json.loads(body)
            auth_code = str(data["auth_code"])
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "INVALID_REQUEST", f"malformed code payment: {type(exc).__name__}")
        new = self._new_attempt(data, "PAYMENT_CODE")
        if isinstance(new, Response):
            return new
        existing = self._same_attempt(new)
        if isinstance(existing, Response):
            return existing
        if existing is not None:
            # The same sale sent again (a retry after a lost answer): its state, no new charge.
            self._expire(existing)
            return self._code_answer(existing)
        # The code itself is never echoed in an answer or kept: only its digest.
        if not PAYMENT_CODE.fullmatch(auth_code):
            return _error(400, "CODE_INVALID", "auth_code is not a sandbox payment code")
        digest = hashlib.sha256(auth_code.encode()).hexdigest()
        if digest in self.used_codes:
            return _error(400, "CODE_USED", "the payment code was used already; scan a new one")
        self.used_codes[digest] = new.out_trade_no
        attempt = new
        attempt.code_behaviour = CODE_BEHAVIOURS.get(auth_code[-1], "decline")
        self.attempts[attempt.out_trade_no] = attempt
        if attempt.code_behaviour == "pay":
            self._settle(attempt, "success")
        elif attempt.code_behaviour == "decline":
            self._settle(attempt, "fail")
        elif attempt.code_behaviour == "confirm":
            attempt.confirming_queries = CONFIRMING_QUERIES
        return self._code_answer(attempt)

    @staticmethod
    def _code_answer(attempt: Attempt) -> Response:
        answer = attempt.as_json()
        if attempt.code_behaviour == "decline":
            answer["failure"] = "CODE_DECLINED"
        return JSONResponse(answer, status_code=202 if attempt.payer_confirming else 200)

    def _confirm_on_query(self, attempt: Attempt) -> None:
        """A "confirm" payer, still confirming, has paid once enough queries came."""
        if not (attempt.payer_confirming and attempt.code_behaviour == "confirm"):
            return
        if attempt.confirming_queries > 0:
            attempt.confirming_queries -= 1
            return
        if self._settle(attempt, "success") is not None:
            self._deliver_in_background(attempt.notify_url, attempt.notifications[-1][1])

    async def query(self, request: Request) -> Response:
        _, refused = await self._authenticate(request)
        if refused:
            return refused
        attempt = self.attempts.get(request.path_params["out_trade_no"])
        if attempt is None:
            return _error(404, "NOT_FOUND", "no such attempt")
        self._expire(attempt)
        self._confirm_on_query(attempt)
        return JSONResponse(attempt.as_json())

    async def reverse(self, request: Request) -> Response:
        _, refused = await self._authenticate(request)
        if refused:
            return refused
        out_trade_no = request.path_params["out_trade_no"]
        attempt = self.attempts.get(out_trade_no)
        if attempt is None:
            return JSONResponse(
                {"out_trade_no": out_trade_no, "status": "UNKNOWN", "action": "none"}
            )
        self._expire(attempt)
        action = "none"
        if attempt.status == "PENDING":
            action = "close"
            attempt.status = "CLOSED"
            attempt.settled_at = _now()
        elif attempt.status == "SUCCEEDED":
            action = "refund"
            attempt.status = "CLOSED"
            left = attempt.taken_fen
            if left:
                attempt.reversed_fen += left
                self.book.record_refund(
                    attempt.out_trade_no,
                    "rv" + uuid.uuid4().hex[:20],
                    left,
                    refund_no="sbv" + uuid.uuid4().hex[:20],
                    at=_now(),
                )
        return JSONResponse({**attempt.as_json(), "action": action})

    async def close(self, request: Request) -> Response:
        _, refused = await self._authenticate(request)
        if refused:
            return refused
        out_trade_no = request.path_params["out_trade_no"]
        attempt = self.attempts.get(out_trade_no)
        if attempt is None:
            # Like the real platforms' "trade not exist": nothing to close.
            return JSONResponse({"out_trade_no": out_trade_no, "status": "UNKNOWN"})
        self._expire(attempt)
        if attempt.status == "SUCCEEDED":
            return _error(409, "ALREADY_PAID", "a paid attempt cannot be closed; refund it")
        if attempt.status == "PENDING":
            attempt.status = "CLOSED"
            attempt.settled_at = _now()
        return JSONResponse(attempt.as_json())

    async def refund(self, request: Request) -> Response:
        body, refused = await self._authenticate(request)
        if refused:
            return refused
        try:
            data = json.loads(body)
            out_trade_no = str(data["out_trade_no"])
            out_refund_no = str(data["out_refund_no"])
            refund_fen = data["refund_fen"]
            notify_url = data.get("notify_url")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "INVALID_REQUEST", f"malformed refund: {type(exc).__name__}")
        if not OUT_TRADE_NO.match(out_refund_no):
            return _error(400, "INVALID_REQUEST", "out_refund_no must be 8..32 [0-9A-Za-z]")
        if not isinstance(refund_fen, int) or isinstance(refund_fen, bool) or refund_fen <= 0:
            return _error(400, "INVALID_REQUEST", "refund_fen must be a positive integer")
        attempt = self.attempts.get(out_trade_no)
        if attempt is None:
            return _error(404, "NOT_FOUND", "no such attempt")
        previous = attempt.refunds.get(out_refund_no)
        if previous is not None:
            if previous.refund_fen != refund_fen:
                return _error(409, "REFUND_NO_REUSED", "out_refund_no used for another amount")
            return JSONResponse(self._refund_json(attempt, previous))
        if any(out_refund_no in a.refunds for a in self.attempts.values()):
            return _error(409, "REFUND_NO_REUSED", "out_refund_no belongs to another attempt")
        if attempt.status != "SUCCEEDED":
            return _error(409, "NOT_PAID", "only a paid attempt can be refunded")
        if attempt.refunded_fen + refund_fen > attempt.amount_fen:
            return _error(
                400,
                "REFUND_EXCEEDS_PAID",
                f"refund of {refund_fen} fen exceeds the "
                f"{attempt.amount_fen - attempt.refunded_fen} fen left",
            )
        refund_no = "sbr" + uuid.uuid4().hex[:20]
        created_at = _now()
        notification_id = self._record_notification(
            attempt,
            {
                "type": "refund.succeeded",
                "merchant_id": attempt.merchant_id,
                "out_trade_no": attempt.out_trade_no,
                "trade_no": attempt.trade_no,
                "out_refund_no": out_refund_no,
                "refund_no": refund_no,
                "amount_fen": refund_fen,
                "currency": attempt.currency,
                "occurred_at": created_at.isoformat(),
            },
        )
        refund = Refund(out_refund_no, refund_no, refund_fen, created_at, notification_id)
        attempt.refunds[out_refund_no] = refund
        self.book.record_refund(
            attempt.out_trade_no,
            out_refund_no,
            refund_fen,
            refund_no=refund_no,
            at=created_at,
        )
        self._deliver_in_background(
            str(notify_url or attempt.notify_url), attempt.notifications[-1][1]
        )
        return JSONResponse(self._refund_json(attempt, refund))

    @staticmethod
    def _refund_json(attempt: Attempt, refund: Refund) -> dict[str, Any]:
        return {
            "out_trade_no": attempt.out_trade_no,
            "out_refund_no": refund.out_refund_no,
            "refund_no": refund.refund_no,
            "refund_fen": refund.refund_fen,
            "refunded_fen": attempt.refunded_fen,
            "status": "SUCCEEDED",
            "notification_id": refund.notification_id,
        }

    # --- bills -----------------------------------------------------------------------

    async def bill(self, request: Request) -> Response:
        _, refused = await self._authenticate(request)
        if refused:
            return refused
        try:
            day = date.fromisoformat(request.path_params["day"])
        except ValueError:
            return _error(400, "INVALID_REQUEST", "the bill day must be YYYY-MM-DD")
        merchant_id = request.query_params.get("merchant_id") or DEFAULT_MERCHANT
        if not MERCHANT_ID.match(merchant_id):
            return _error(400, "INVALID_REQUEST", "merchant_id must be 1..64 [0-9A-Za-z_.-]")
        now = _now()
        if self.book.availability(day, now) is BillUnavailableReason.NOT_READY:
            return _error(
                404, "BILL_NOT_READY", f"the bill of {day} is not published yet; ask again later"
            )
        entries = bills.entries_for(self.book.entries_of(day, now), merchant_id)
        if not entries:
            started = beijing_day(self.started_at)
            why = (
                f"the simulator's ledger begins on {started}"
                if day < started
                else "no payment or refund completed that day"
            )
            return _error(404, "NO_BILL", f"no bill for {day}: {why}")
        return StreamingResponse(
            bills.write_bill(merchant_id, day, entries, generated_at=now),
            media_type=bills.MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="sandbox-{day}.csv"'},
        )

    # --- APP and the payer's page ---------------------------------------------------

    async def open_app_payload(self, request: Request) -> Response:
        body = await request.body()
        try:
            data = json.loads(body)
            fields = {k: data[k] for k in ("out_trade_no", "amount_fen", "currency", "timestamp")}
            signing.verify(
                self._secret,
                str(data["timestamp"]),
                str(data["signature"]),
                json.dumps(fields, sort_keys=True, separators=(",", ":")).encode(),
            )
        except (ValueError, KeyError, TypeError):
            return _error(400, "INVALID_REQUEST", "malformed app payload")
        except signing.SignatureInvalid as exc:
            return _error(401, "UNAUTHORIZED", str(exc))
        attempt = self.attempts.get(str(fields["out_trade_no"]))
        if attempt is None or attempt.amount_fen != fields["amount_fen"]:
            return _error(404, "NOT_FOUND", "no such attempt for that amount")
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"pay_url": f"{base}/pay/{attempt.out_trade_no}"})

    async def pay_page(self, request: Request) -> Response:
        attempt = self.attempts.get(request.path_params["out_trade_no"])
        if attempt is None:
            return HTMLResponse("<h1>No such payment</h1>", status_code=404)
        self._expire(attempt)
        return HTMLResponse(
            pay_page(
                "Sandbox pay",
                heading="Sandbox payment",
                lines=[attempt.subject, attempt.currency],
                amount_fen=attempt.amount_fen,
                settled=attempt.status.lower() if attempt.status != "PENDING" else None,
            )
        )

    def _settle_or_refuse(self, attempt: Attempt, outcome: str) -> Response | None:
        """Settle with the payer's outcome; the refusal to answer, if it cannot be."""
        if outcome not in OUTCOMES:
            return _error(400, "INVALID_REQUEST", "outcome must be success, fail or close")
        if self._settle(attempt, outcome) is None:
            return _error(409, "ALREADY_SETTLED", f"the attempt is already {attempt.status}")
        return None

    async def pay(self, request: Request) -> Response:
        attempt = self.attempts.get(request.path_params["out_trade_no"])
        wants_json = "application/json" in request.headers.get("accept", "")
        if attempt is None:
            return _error(404, "NOT_FOUND", "no such attempt")
        form = await request.form()
        refused = self._settle_or_refuse(attempt, str(form.get("outcome", "")))
        if refused is not None:
            return refused
        self._deliver_in_background(attempt.notify_url, attempt.notifications[-1][1])
        if wants_json:
            return JSONResponse(attempt.as_json())
        back = (
            f'<p><a href="{html.escape(attempt.return_url)}">Back to the shop</a></p>'
            if attempt.return_url
            else ""
        )
        return HTMLResponse(page("Sandbox pay", back, heading=f"Payment {attempt.status.lower()}"))

    # --- test controls --------------------------------------------------------------

    def _signed_notification(self, body: bytes) -> dict[str, Any]:
        return {
            "headers": {k.lower(): v for k, v in self._signed(body).items()},
            "body": body.decode(),
        }

    async def control_settle(self, request: Request) -> Response:
        attempt = self.attempts.get(request.path_params["out_trade_no"])
        if attempt is None:
            return _error(404, "NOT_FOUND", "no such attempt")
        data = await request.json()
        refused = self._settle_or_refuse(attempt, str(data.get("outcome", "")))
        if refused is not None:
            return refused
        body = attempt.notifications[-1][1]
        if data.get("deliver", False):
            self._deliver_in_background(attempt.notify_url, body)
        return JSONResponse({**attempt.as_json(), "notification": self._signed_notification(body)})

    async def control_latest(self, request: Request) -> Response:
        attempt = self.attempts.get(request.path_params["out_trade_no"])
        if attempt is None or not attempt.notifications:
            return _error(404, "NOT_FOUND", "no notification for that attempt")
        return JSONResponse(self._signed_notification(attempt.notifications[-1][1]))

    async def control_redeliver(self, request: Request) -> Response:
        attempt = self.attempts.get(request.path_params["out_trade_no"])
        if attempt is None or not attempt.notifications:
            return _error(404, "NOT_FOUND", "no notification for that attempt")
        try:
            count = int(request.query_params.get("count", "1"))
        except ValueError:
            return _error(400, "INVALID_REQUEST", "count must be an integer")
        if not 1 <= count <= 100:
            return _error(400, "INVALID_REQUEST", "count must be 1..100")
        body = attempt.notifications[-1][1]
        signer = self._signer(body)
        statuses = [
            (await self.notifier.deliver(attempt.notify_url, signer, retry_delays=())).status
            for _ in range(count)
        ]
        return JSONResponse({"notification_id": attempt.notifications[-1][0], "statuses": statuses})

    async def control_taken(self, request: Request) -> Response:
        out_trade_no = request.path_params["out_trade_no"]
        attempt = self.attempts.get(out_trade_no)
        taken = attempt.taken_fen if attempt is not None else 0
        return JSONResponse({"out_trade_no": out_trade_no, "taken_fen": taken})

    async def control_resign(self, request: Request) -> Response:
        """A notification this simulator sent, one thing changed, signed with the genuine key."""
        try:
            data = await request.json()
            body = str(data["body"]).encode()
            sent = json.loads(body)
            if not isinstance(sent, dict):
                raise TypeError("the body is not a JSON object")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "INVALID_REQUEST", f"malformed resign request: {type(exc).__name__}")
        attempt = self.attempts.get(str(sent.get("out_trade_no", "")))
        if attempt is None or all(known != body for _, known in attempt.notifications):
            return _error(404, "NOT_FOUND", "the simulator never sent that notification")
        changes = {
            name: data[name]
            for name in ("amount_fen", "merchant_id", "out_trade_no")
            if data.get(name) is not None
        }
        if not changes:
            return _error(400, "INVALID_REQUEST", "name amount_fen, merchant_id or out_trade_no")
        changed = json.dumps({**sent, **changes}, separators=(",", ":")).encode()
        return JSONResponse(self._signed_notification(changed))

    async def control_faults(self, request: Request) -> Response:
        data = await request.json()
        fault = Fault(
            kind="api",
            remaining=int(data.get("count", 1)),
            status=int(data["status"]) if data.get("status") is not None else None,
            seconds=float(data.get("delay", 0.0)),
            target="/api/",
            prefix=True,
        )
        return JSONResponse({"pending_faults": self.faults.add(fault)})


def create_app(
    secret: bytes,
    *,
    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0),
    publish_current_day: bool | None = None,
) -> Starlette:
    """The sandbox gateway; ``secret`` is the HMAC key it shares with the branch's adapter.

    ``publish_current_day``: publish every day's bill up to now, today so far
    included (None: the ``BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY`` setting decides,
    see :mod:`providers.kit.bills`); off, day D is published on D+1 at 09:00 Beijing.
    """
    if not secret:
        raise ValueError("the sandbox simulator needs a non-empty secret")
    book = BillBook(publish_current_day=publish_current_day)
    gateway = SandboxGateway(secret, retry_delays=retry_delays, book=book)
    routes: list[tuple[str, Endpoint, list[str]]] = [
        ("/api/payments", gateway.create_payment, ["POST"]),
        ("/api/payments/{out_trade_no}", gateway.query, ["GET"]),
        ("/api/payments/{out_trade_no}/close", gateway.close, ["POST"]),
        ("/api/payments/{out_trade_no}/reverse", gateway.reverse, ["POST"]),
        ("/api/code-payments", gateway.pay_with_code, ["POST"]),
        ("/api/refunds", gateway.refund, ["POST"]),
        ("/api/bills/{day}", gateway.bill, ["GET"]),
        ("/app/open", gateway.open_app_payload, ["POST"]),
        ("/pay/{out_trade_no}", gateway.pay_page, ["GET"]),
        ("/pay/{out_trade_no}", gateway.pay, ["POST"]),
        ("/control/payments/{out_trade_no}/settle", gateway.control_settle, ["POST"]),
        ("/control/notifications/{out_trade_no}/latest", gateway.control_latest, ["GET"]),
        ("/control/notifications/{out_trade_no}/redeliver", gateway.control_redeliver, ["POST"]),
        ("/control/notifications/resign", gateway.control_resign, ["POST"]),
        ("/control/payments/{out_trade_no}/taken", gateway.control_taken, ["GET"]),
        ("/control/faults", gateway.control_faults, ["POST"]),
    ]
    app = Starlette(
        routes=[
            *(Route(path, endpoint, methods=methods) for path, endpoint, methods in routes),
            *bill_routes("/control", book),
            *control_routes("/control", notifier=gateway.notifier, faults=gateway.faults),
        ],
        lifespan=gateway.notifier.lifespan,
    )
    app.state.gateway = gateway
    return app


def serve(port: int, secret: bytes) -> None:
    """Serve the simulator on 127.0.0.1:``port`` until interrupted (for ``make run``)."""
    uvicorn.run(create_app(secret), host="127.0.0.1", port=port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the branchpay sandbox gateway simulator.")
    parser.add_argument("--port", type=int, default=8009)
    parser.add_argument(
        "--secret-file",
        type=Path,
        help="file holding the shared secret (default: $BRANCHPAY_SANDBOX_SECRET)",
    )
    args = parser.parse_args(argv)
    if args.secret_file:
        secret = args.secret_file.read_bytes().strip()
    else:
        secret = os.environ.get("BRANCHPAY_SANDBOX_SECRET", "").encode()
    if not secret:
        parser.error("give --secret-file or set BRANCHPAY_SANDBOX_SECRET")
    serve(args.port, secret)


if __name__ == "__main__":
    main()
