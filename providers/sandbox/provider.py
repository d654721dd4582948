"""The sandbox adapter: branchpay's side of the sandbox gateway simulator.

Requests to the simulator and its notifications are JSON signed with
HMAC-SHA256 under the branch's shared secret (see
:mod:`providers.sandbox.signing`). Failure policy: create is sent once (a
time-out may have opened the attempt, so it is ``outcome_unknown``); query,
close and refund (the simulator refunds each ``out_refund_no`` once) are safe
to repeat and are retried with backoff before a retryable GatewayError.

Counter sales (``PAYMENT_CODE``, codes ``99`` + 16 digits): ``pay_with_code``
posts the scanned code to ``/api/code-payments`` (the simulator answers a
repeated ``out_trade_no`` with its state and never charges twice, so it is
retried like a query; a time-out is still ``outcome_unknown``); ``reverse``
posts ``/api/payments/{out_trade_no}/reverse``. The code is never logged, put
in an error or kept in an event. A payment fact carries the simulator's
notification id whether it comes from the pay answer, a query or the
notification, so it is applied once.

Notifications name the merchant account they belong to (``merchant_id``);
one naming another account than this branch's raises ``NotificationMismatch``
after the signature verifies (one without it, from a simulator before
``merchant_id`` was sent, is read as this branch's).

Service-provider mode: the sandbox's ``merchant_id`` is its sub-merchant setting, so
an ``[accounts.<name>.sandbox]`` table may hold the gateway and the shared secret once
and each branch under it give only its own ``merchant_id``; a notification signed with
that shared secret for another branch's merchant account is then a mismatch.

Daily bills: the branch's payments go to the simulator's merchant account
``merchant_id`` (default: the branch code), whose bill of a Beijing day
``download_bill`` fetches (``GET /api/bills/{day}``, signed like every call;
retried like a query until the first byte of the file is written) and
``read_bill`` reads line by line (the layout is in :mod:`providers.sandbox.bills`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any, BinaryIO, ClassVar
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, Field, SecretStr, model_validator

from api.plugin import (
    ActionKind,
    AttemptState,
    BillLine,
    BillTotals,
    BillUnavailable,
    BillUnavailableReason,
    EventKind,
    GatewayError,
    GatewaySettings,
    NotificationMismatch,
    NotificationRejected,
    NotificationReply,
    NotificationRequest,
    PaymentAction,
    PaymentMethod,
    PaymentRequest,
    Provider,
    ProviderEvent,
    QueryResult,
    RefundRequest,
    RefundResult,
    RefundState,
    ReverseResult,
    ReverseState,
    TransientFailure,
    call_gateway,
)
from providers.sandbox import bills, signing

logger = logging.getLogger("branchpay.providers.sandbox")

_EVENT_KINDS = {
    "payment.succeeded": EventKind.PAYMENT_SUCCEEDED,
    "payment.failed": EventKind.PAYMENT_FAILED,
    "payment.closed": EventKind.PAYMENT_CLOSED,
    "refund.succeeded": EventKind.REFUND_SUCCEEDED,
}
_STATES = {s.value: s for s in AttemptState}
_STATE_EVENTS = {
    "SUCCEEDED": EventKind.PAYMENT_SUCCEEDED,
    "FAILED": EventKind.PAYMENT_FAILED,
    "CLOSED": EventKind.PAYMENT_CLOSED,
}
# Refusals the simulator answers for a refund it will never make.
_REFUND_REFUSALS = frozenset({"REFUND_EXCEEDS_PAID", "NOT_PAID", "NOT_FOUND", "REFUND_NO_REUSED"})
# Code payments the simulator surely refused (no attempt was charged).
_CODE_REFUSALS = frozenset({"CODE_INVALID", "CODE_USED"})
_BILL_UNAVAILABLE = {
    "BILL_NOT_READY": BillUnavailableReason.NOT_READY,
    "NO_BILL": BillUnavailableReason.NO_BILL,
}


class SandboxSettings(GatewaySettings):
    """A branch's ``[branches.<code>.providers.sandbox]`` table."""

    secret: SecretStr = Field(
        min_length=16, description="HMAC-SHA256 key shared with the simulator"
    )
    backoff_seconds: float = Field(default=0.2, ge=0, le=10)
    merchant_id: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Za-z_.-]{1,64}$",
        description="the simulator's merchant account of this branch (default: the branch code)",
    )

    @model_validator(mode="before")
    @classmethod
    def _retries_is_max_attempts(cls, data: Any) -> Any:
        # Before plugin API 2 the sandbox said `retries` (extra tries); keep reading it.
        if isinstance(data, dict) and "retries" in data:
            data = dict(data)
            retries = data.pop("retries")
            if "max_attempts" not in data and isinstance(retries, int):
                data["max_attempts"] = retries + 1
        return data


class SandboxProvider(Provider):
    """Test payments through the sandbox simulator, for demos and tests."""

    name: ClassVar[str] = "sandbox"
    display_name: ClassVar[str] = "Sandbox (test payments)"
    methods: ClassVar[tuple[PaymentMethod, ...]] = (
        PaymentMethod.PAGE,
        PaymentMethod.WAP,
        PaymentMethod.QR_CODE,
        PaymentMethod.APP,
        PaymentMethod.PAYMENT_CODE,
    )
    Settings: ClassVar[type[BaseModel]] = SandboxSettings
    payment_code_pattern: ClassVar[re.Pattern[str] | None] = re.compile(r"99\d{16}")
    # Service-provider mode: an [accounts.<name>.sandbox] table holds the gateway and the
    # shared secret; each branch under it gives its own merchant account.
    sub_merchant_settings: ClassVar[tuple[str, ...]] = ("merchant_id",)

    settings: SandboxSettings

    @property
    def _secret(self) -> bytes:
        # A secret read from a file often ends in a newline the simulator never sees.
        return self.settings.secret.get_secret_value().strip().encode()

    def _url(self, path: str) -> str:
        return str(self.settings.gateway).rstrip("/") + path

    @property
    def merchant_id(self) -> str:
        """The simulator's merchant account this branch's payments and bills belong to."""
        return self.settings.merchant_id or self.branch

    # --- calls to the simulator -------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        *,
        repeatable: bool = True,
    ) -> httpx.Response:
        """A signed request; the simulator treats all but create idempotently."""
        body = json.dumps(payload, separators=(",", ":")).encode() if payload is not None else b""

        async def send() -> httpx.Response:
            headers = signing.signed_headers(
                self._secret, signing.request_payload(method, path, body)
            )
            if payload is not None:
                headers["Content-Type"] = "application/json"
            response = await self.http.request(
                method,
                self._url(path),
                content=body,
                headers=headers,
                timeout=self.settings.timeout_seconds,
            )
            if response.status_code >= 500:
                raise TransientFailure(f"HTTP {response.status_code}")
            if response.status_code == 401:
                raise GatewayError("sandbox refused the request signature (check the secret)")
            return response

        return await call_gateway(
            send,
            settings=self.settings,
            operation=f"sandbox {method} {path}",
            repeatable=repeatable,
            changes_state=method != "GET",
            logger=logger,
        )

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise GatewayError(f"sandbox answered {response.status_code} without JSON") from None
        if not isinstance(data, dict):
            raise GatewayError("sandbox answered a JSON value that is not an object")
        return data

    # --- Provider -------------------------------------------------------------------

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        if request.method is PaymentMethod.PAYMENT_CODE:
            raise GatewayError("a PAYMENT_CODE sale is charged with pay_with_code, not opened")
        payload = {
            "out_trade_no": request.out_trade_no,
            "amount_fen": request.amount_fen,
            "currency": request.currency,
            "subject": request.subject,
            "method": request.method.value,
            "notify_url": request.notify_url,
            "return_url": request.return_url,
            "expires_at": request.expires_at.isoformat(),
            "merchant_id": self.merchant_id,
        }
        # Creating is not retried here: the caller decides with the attempt in hand.
        response = await self._call("POST", "/api/payments", payload, repeatable=False)
        data = self._json(response)
        if response.status_code not in (200, 201):
            raise GatewayError(f"sandbox refused the payment: {data.get('message', '')}")
        pay_url = str(data["pay_url"])
        if request.method is PaymentMethod.QR_CODE:
            return PaymentAction(kind=ActionKind.QR_CODE, qr_code=pay_url, url=pay_url)
        if request.method is PaymentMethod.APP:
            return PaymentAction(kind=ActionKind.APP_SDK, app_payload=self._app_payload(request))
        return PaymentAction(kind=ActionKind.REDIRECT, url=pay_url)

    def _app_payload(self, request: PaymentRequest) -> str:
        fields: dict[str, Any] = {
            "out_trade_no": request.out_trade_no,
            "amount_fen": request.amount_fen,
            "currency": request.currency,
            "timestamp": int(time.time()),
        }
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        signature = signing.sign(self._secret, fields["timestamp"], canonical)
        return json.dumps({**fields, "signature": signature}, separators=(",", ":"))

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        try:
            signing.verify(
                self._secret,
                request.headers.get(signing.TIMESTAMP_HEADER.lower()),
                request.headers.get(signing.SIGNATURE_HEADER.lower()),
                request.body,
            )
        except signing.SignatureInvalid as exc:
            raise NotificationRejected(str(exc)) from None
        try:
            data = json.loads(request.body)
            kind = _EVENT_KINDS.get(str(data["type"]))
            event_id = str(data["id"])
            out_trade_no = str(data["out_trade_no"])
            amount_fen = data["amount_fen"]
            currency = str(data["currency"])
            occurred_at = datetime.fromisoformat(str(data["occurred_at"]))
            merchant_id = data.get("merchant_id")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NotificationRejected(f"malformed body: {type(exc).__name__}") from None
        if merchant_id is not None and merchant_id != self.merchant_id:
            raise NotificationMismatch(
                f"the notification is for merchant account {str(merchant_id)[:64]!r}, "
                f"not this branch's {self.merchant_id!r}"
            )
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen < 0:
            raise NotificationRejected("malformed body: amount_fen is not a whole number of fen")
        if occurred_at.tzinfo is None:
            raise NotificationRejected("malformed body: occurred_at has no UTC offset")
        if kind is None:
            return None
        return ProviderEvent(
            kind=kind,
            event_id=event_id,
            out_trade_no=out_trade_no,
            amount_fen=amount_fen,
            currency=currency,
            occurred_at=occurred_at,
            provider_trade_no=data.get("trade_no"),
            out_refund_no=data.get("out_refund_no"),
            detail={"refund_no": data["refund_no"]} if data.get("refund_no") else {},
        )

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        if accepted:
            return NotificationReply(200, b'{"code":"SUCCESS"}', "application/json")
        return NotificationReply(
            400, b'{"code":"FAIL","message":"notification rejected"}', "application/json"
        )

    async def query(self, out_trade_no: str) -> QueryResult:
        response = await self._call("GET", f"/api/payments/{out_trade_no}")
        data = self._json(response)
        if response.status_code == 404:
            return QueryResult(state=AttemptState.UNKNOWN)
        if response.status_code != 200:
            raise GatewayError(f"sandbox query failed: {data.get('message', '')}")
        return self._attempt_state(out_trade_no, data)

    @staticmethod
    def _attempt_state(out_trade_no: str, data: dict[str, Any]) -> QueryResult:
        """The simulator's view of an attempt (a query's or a code payment's answer)."""
        status = str(data.get("status"))
        state = _STATES.get(status)
        if state is None:
            raise GatewayError(f"sandbox reported an unknown status {status[:32]!r}")
        events: list[ProviderEvent] = []
        # The notification's id names the fact, so a query, a code payment's
        # answer and the notification itself all give the same event.
        if status in _STATE_EVENTS and data.get("notification_id") and data.get("settled_at"):
            events.append(
                ProviderEvent(
                    kind=_STATE_EVENTS[status],
                    event_id=str(data["notification_id"]),
                    out_trade_no=out_trade_no,
                    amount_fen=int(data["amount_fen"]),
                    currency=str(data["currency"]),
                    occurred_at=datetime.fromisoformat(str(data["settled_at"])),
                    provider_trade_no=data.get("trade_no"),
                )
            )
        return QueryResult(
            state=state,
            provider_trade_no=data.get("trade_no"),
            amount_fen=int(data["amount_fen"]),
            events=tuple(events),
        )

    async def refund(self, request: RefundRequest) -> RefundResult:
        payload = {
            "out_trade_no": request.out_trade_no,
            "out_refund_no": request.out_refund_no,
            "refund_fen": request.refund_fen,
            "reason": request.reason,
            "notify_url": request.notify_url,
        }
        response = await self._call("POST", "/api/refunds", payload)
        data = self._json(response)
        if response.status_code == 200:
            return RefundResult(RefundState.SUCCEEDED, provider_refund_no=data.get("refund_no"))
        if data.get("code") in _REFUND_REFUSALS:
            return RefundResult(RefundState.FAILED, message=str(data.get("message", "")))
        raise GatewayError(f"sandbox refund failed: {data.get('message', '')}")

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        if not request.auth_code:
            raise GatewayError("a PAYMENT_CODE sale needs the scanned auth_code")
        payload = {
            "out_trade_no": request.out_trade_no,
            "amount_fen": request.amount_fen,
            "currency": request.currency,
            "subject": request.subject,
            "auth_code": request.auth_code,
            "notify_url": request.notify_url,
            "expires_at": request.expires_at.isoformat(),
            "merchant_id": self.merchant_id,
        }
        response = await self._call("POST", "/api/code-payments", payload)
        data = self._json(response)
        if response.status_code in (200, 202):
            return self._attempt_state(request.out_trade_no, data)
        code = str(data.get("code", ""))
        if response.status_code == 400 and code in _CODE_REFUSALS:
            # Surely refused: nothing was charged, and the sale may be tried with a new code.
            return QueryResult(state=AttemptState.FAILED)
        raise GatewayError(f"sandbox refused the code payment: {code or response.status_code}")

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        response = await self._call("POST", f"/api/payments/{out_trade_no}/reverse")
        data = self._json(response)
        if response.status_code != 200:
            raise GatewayError(f"sandbox refused the reverse: {data.get('code', '')}")
        action = str(data.get("action", ""))
        # close: it was unpaid; refund: it was paid and the money went back; none: nothing to do.
        if action in ("close", "refund", "none"):
            return ReverseResult(ReverseState.DONE, message=action)
        raise GatewayError(f"sandbox answered a reverse with an unknown action {action[:32]!r}")

    async def close(self, out_trade_no: str) -> None:
        response = await self._call("POST", f"/api/payments/{out_trade_no}/close")
        if response.status_code != 200:
            data = self._json(response)
            raise GatewayError(f"sandbox refused to close: {data.get('message', '')}")

    # --- daily bills ------------------------------------------------------------------

    async def download_bill(self, day: date, destination: BinaryIO) -> None:
        path = f"/api/bills/{day.isoformat()}?{urlencode({'merchant_id': self.merchant_id})}"
        operation = f"sandbox GET /api/bills/{day.isoformat()}"

        async def send() -> None:
            headers = signing.signed_headers(
                self._secret, signing.request_payload("GET", path, b"")
            )
            async with self.http.stream(
                "GET", self._url(path), headers=headers, timeout=self.settings.timeout_seconds
            ) as response:
                if response.status_code >= 500:
                    raise TransientFailure(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    await response.aread()
                    self._bill_refusal(response, day)
                written = False
                try:
                    async for chunk in response.aiter_bytes():
                        destination.write(chunk)
                        written = True
                except httpx.HTTPError as error:
                    if written:
                        # Part of the file is written: not tried again over it.
                        raise GatewayError(
                            f"{operation} broke off mid-file ({type(error).__name__})",
                            retryable=True,
                        ) from None
                    raise

        await call_gateway(
            send,
            settings=self.settings,
            operation=operation,
            repeatable=True,
            changes_state=False,
            logger=logger,
        )

    def _bill_refusal(self, response: httpx.Response, day: date) -> None:
        if response.status_code == 401:
            raise GatewayError("sandbox refused the request signature (check the secret)")
        data = self._json(response)
        code = str(data.get("code", ""))
        reason = _BILL_UNAVAILABLE.get(code) if response.status_code == 404 else None
        if reason is not None:
            raise BillUnavailable(
                f"sandbox has no bill of {day} yet ({code})"
                if reason is BillUnavailableReason.NOT_READY
                else f"sandbox has no bill of {day}: {data.get('message', code)}",
                reason=reason,
            )
        raise GatewayError(
            f"sandbox refused the bill of {day}: HTTP {response.status_code} {code}".rstrip()
        )

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        return bills.read_bill(source, self.merchant_id)
