"""The Example Pay adapter: QR code and desktop page payments.

Calls are JSON with a ``sign`` field; notifications are form posts with a
``sign`` field (see :mod:`branchpay_example_provider.signing`) and are answered
``success`` or ``fail`` in plain text, like many Chinese platforms do.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import httpx
from pydantic import BaseModel, Field, SecretStr

from api.plugin import (
    ActionKind,
    AttemptState,
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
    TransientFailure,
    call_gateway,
)
from branchpay_example_provider import signing

logger = logging.getLogger("branchpay_example_provider")

_EVENTS = {
    "paid": EventKind.PAYMENT_SUCCEEDED,
    "failed": EventKind.PAYMENT_FAILED,
    "closed": EventKind.PAYMENT_CLOSED,
    "refunded": EventKind.REFUND_SUCCEEDED,
}
_STATES = {
    "WAITING": AttemptState.PENDING,
    "PAID": AttemptState.SUCCEEDED,
    "FAILED": AttemptState.FAILED,
    "CLOSED": AttemptState.CLOSED,
}


class ExamplePaySettings(GatewaySettings):
    """A branch's ``[branches.<code>.providers.example]`` table.

    ``gateway``, ``timeout_seconds``, ``max_attempts`` and ``backoff_seconds``
    come from :class:`api.plugin.GatewaySettings`.
    """

    merchant_id: str = Field(min_length=1)
    api_key: SecretStr = Field(min_length=16)
    gateway: str = "https://api.examplepay.invalid"


class ExamplePayProvider(Provider):
    name: ClassVar[str] = "example"
    display_name: ClassVar[str] = "Example Pay"
    methods: ClassVar[tuple[PaymentMethod, ...]] = (PaymentMethod.QR_CODE, PaymentMethod.PAGE)
    Settings: ClassVar[type[BaseModel]] = ExamplePaySettings

    settings: ExamplePaySettings

    @property
    def _key(self) -> bytes:
        return self.settings.api_key.get_secret_value().encode()

    async def _call(self, path: str, fields: dict[str, Any]) -> dict[str, Any]:
        body = {"merchant_id": self.settings.merchant_id, **fields}
        body["sign"] = signing.sign(self._key, body)
        url = self.settings.gateway.rstrip("/") + path

        async def send() -> httpx.Response:
            response = await self.http.post(url, json=body, timeout=self.settings.timeout_seconds)
            if response.status_code >= 500:
                raise TransientFailure(f"HTTP {response.status_code}")
            return response

        # Example Pay opens an order once per out_trade_no but answers a repeat
        # with an error, so only query, close and refund are repeated.
        response = await call_gateway(
            send,
            settings=self.settings,
            operation=f"Example Pay {path}",
            repeatable=path != "/orders",
            changes_state=path != "/orders/query",
            logger=logger,
        )
        answer: dict[str, Any] = response.json()
        # Trust nothing the gateway says unless it carries the gateway's signature.
        if not signing.is_genuine(self._key, answer):
            raise GatewayError("Example Pay answer is not signed with our key")
        if answer.get("result") == "BAD_SIGN":
            raise GatewayError("Example Pay refused our signature (check api_key)")
        return answer

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        answer = await self._call(
            "/orders",
            {
                "out_trade_no": request.out_trade_no,
                "amount": request.amount_fen,
                "subject": request.subject,
                "notify_url": request.notify_url,
            },
        )
        if answer.get("result") != "OK":
            raise GatewayError(f"Example Pay refused the order: {answer.get('reason', '')}")
        pay_url = str(answer["pay_url"])
        if request.method is PaymentMethod.QR_CODE:
            return PaymentAction(kind=ActionKind.QR_CODE, qr_code=pay_url, url=pay_url)
        return PaymentAction(kind=ActionKind.REDIRECT, url=pay_url)

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        try:
            fields = dict(parse_qsl(request.body.decode(), strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            raise NotificationRejected("malformed form body") from None
        if "sign" not in fields:
            raise NotificationRejected("missing sign")
        if not signing.is_genuine(self._key, fields):
            raise NotificationRejected("sign does not match")
        if fields.get("merchant_id") != self.settings.merchant_id:
            # Genuine, but another merchant's: answered as accepted, changes nothing.
            raise NotificationMismatch("merchant_id is not this branch's")
        kind = _EVENTS.get(fields.get("event", ""))
        if kind is None:
            return None
        try:
            amount_fen = int(fields["amount"])
            occurred_at = datetime.fromtimestamp(int(fields["time"]), UTC)
            return ProviderEvent(
                kind=kind,
                event_id=fields["notify_id"],
                out_trade_no=fields["out_trade_no"],
                amount_fen=amount_fen,
                currency="CNY",
                occurred_at=occurred_at,
                out_refund_no=fields.get("out_refund_no"),
            )
        except (KeyError, ValueError):
            raise NotificationRejected("malformed notification fields") from None

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        return NotificationReply(200 if accepted else 400, b"success" if accepted else b"fail")

    async def query(self, out_trade_no: str) -> QueryResult:
        answer = await self._call("/orders/query", {"out_trade_no": out_trade_no})
        if answer.get("result") == "NOT_FOUND":
            return QueryResult(state=AttemptState.UNKNOWN)
        return QueryResult(state=_STATES[str(answer["status"])], amount_fen=int(answer["amount"]))

    async def refund(self, request: RefundRequest) -> RefundResult:
        answer = await self._call(
            "/refunds",
            {
                "out_trade_no": request.out_trade_no,
                "out_refund_no": request.out_refund_no,
                "amount": request.refund_fen,
                "notify_url": request.notify_url,
            },
        )
        if answer.get("result") == "OK":
            return RefundResult(RefundState.SUCCEEDED)
        return RefundResult(RefundState.FAILED, message=str(answer.get("reason", "")))

    async def close(self, out_trade_no: str) -> None:
        answer = await self._call("/orders/close", {"out_trade_no": out_trade_no})
        if answer.get("result") not in ("OK", "NOT_FOUND"):
            raise GatewayError(f"Example Pay refused to close: {answer.get('reason', '')}")
