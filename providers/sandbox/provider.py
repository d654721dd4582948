"""The sandbox adapter: branchpay's side of the sandbox gateway simulator.

Requests to the simulator and its notifications are JSON signed with
HMAC-SHA256 under the branch's shared secret (see
:mod:`providers.sandbox.signing`). Failure policy: create is sent once (a
time-out may have opened the attempt, so it is ``outcome_unknown``); query,
close and refund (the simulator refunds each ``out_refund_no`` once) are safe
to repeat and are retried with backoff before a retryable GatewayError.

Daily bills: the branch's payments go to the simulator's merchant account
``merchant_id`` (default: the branch code), whose bill of a Beijing day
``download_bill`` fetches (``GET /api/bills/{day}``, signed like every call;
retried like a query until the first byte of the file is written) and
``read_bill`` reads line by line (the layout is in :mod:`providers.sandbox.bills`).
"""

from __future__ import annotations

import json
import logging
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
    )
    Settings: ClassVar[type[BaseModel]] = SandboxSettings

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
        except (ValueError, KeyError, TypeError) as exc:
            raise NotificationRejected(f"malformed body: {type(exc).__name__}") from None
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
        status = str(data["status"])
        state = _STATES.get(status)
        if state is None:
            raise GatewayError(f"sandbox reported an unknown status {status!r}")
        events: list[ProviderEvent] = []
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
