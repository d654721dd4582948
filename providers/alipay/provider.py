"""The Alipay adapter: OpenAPI gateway calls and notifications, RSA2 signed.

Payment methods map to Alipay APIs as follows:

- PAGE: ``alipay.trade.page.pay``, a signed gateway URL the browser opens;
- WAP: ``alipay.trade.wap.pay``, the same for mobile browsers;
- QR_CODE: ``alipay.trade.precreate``, a server call returning the code to show;
- APP: ``alipay.trade.app.pay``, the signed order string for the Alipay app SDK;
- JSAPI (mini program, H5 in the Alipay app): ``alipay.trade.create`` for the
  payer (``buyer_id`` for a ``2088`` user id, ``buyer_open_id`` for an OpenID),
  the ``trade_no`` the page hands to ``my.tradePay``;
- PAYMENT_CODE: ``alipay.trade.pay`` (``scene=bar_code``) charges the code a
  clerk scanned, and ``alipay.trade.cancel`` voids a sale left unknown (see
  :meth:`AlipayProvider.pay_with_code` and :meth:`AlipayProvider.reverse`).

Every gateway response is verified with the Alipay public key (in certificate
mode: the key in ``alipay_cert``, and an answer's ``alipay_cert_sn`` must be
that certificate's; every request then carries ``app_cert_sn`` and
``alipay_root_cert_sn``, see :mod:`providers.alipay.certs`) before any of it
is trusted, and so is every notification (over all parameters except ``sign``
and ``sign_type``, sorted). A genuine notification whose ``app_id`` (or
``seller_id``, when set, or ``auth_app_id`` in third-party app authorization
mode) is not the branch's raises ``NotificationMismatch``:
branchpay answers it ``success``, keeps it aside and changes nothing.

Third-party app authorization (第三方应用授权): ``app_id`` and the keys are the
service provider's app; every call carries the merchant app's
``app_auth_token`` (``auth_app_id`` names that app). PAGE, WAP and APP are
not offered then (``methods_with``, so plugins.toml refuses them in the branch's
``methods`` and payment options never show them) and refused if asked for: their
signed URL or order string, token included, would go to the payer's device.

Query, close and refund (with the same ``out_request_no``) are the calls
Alipay documents as safe to repeat; only they are retried, with exponential
back-off. Everything else fails at once with a :class:`GatewayError` that says
whether Alipay may have acted.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, BinaryIO, ClassVar, NoReturn
from urllib.parse import parse_qsl, urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel

from api.plugin import (
    BEIJING,
    ActionKind,
    AttemptState,
    BillLine,
    BillRejected,
    BillTotals,
    BillUnavailable,
    BillUnavailableReason,
    EventKind,
    GatewayError,
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
    from_beijing,
    load_private_key,
    load_public_key,
    to_beijing,
)
from providers.alipay import bills
from providers.alipay.amounts import AmountError, fen_to_yuan, yuan_to_fen
from providers.alipay.certs import cert_sn, load_certificate, load_certificates, root_cert_sn
from providers.alipay.settings import AlipaySettings
from providers.alipay.signing import (
    notification_string,
    request_string,
    response_members,
    sign,
    verify,
)

logger = logging.getLogger("branchpay.providers.alipay")

# Real notifications are around 1-2 KB; anything far larger is not from Alipay.
MAX_NOTIFICATION_BYTES = 16 * 1024

_PRODUCT_CODES: Mapping[PaymentMethod, tuple[str, str]] = {
    PaymentMethod.PAGE: ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
    PaymentMethod.WAP: ("alipay.trade.wap.pay", "QUICK_WAP_WAY"),
    PaymentMethod.QR_CODE: ("alipay.trade.precreate", "FACE_TO_FACE_PAYMENT"),
    PaymentMethod.APP: ("alipay.trade.app.pay", "QUICK_MSECURITY_PAY"),
    PaymentMethod.JSAPI: ("alipay.trade.create", "JSAPI_PAY"),
}
# An Alipay user id (buyer_id); any other payer id is an OpenID (buyer_open_id).
_USER_ID = re.compile(r"2088[0-9]{12}")
_PAID = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
_TRADE_STATES = frozenset({"WAIT_BUYER_PAY", "TRADE_CLOSED", *_PAID})
_OUT_NO = re.compile(r"[0-9A-Za-z_]{1,64}")
_SUBJECT_MAX = 256
# Gateway answers that mean "not processed, try again with the same parameters".
_RETRY_CODES = frozenset({"20000"})
_RETRY_SUB_CODES = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR", "isp.unknow-error"})
# The bill query's refusals. Alipay's own answers do not tell "not generated yet"
# from "no bill" (its docs say BILL_NOT_EXIST, the wild sees isp.bill_not_exist,
# a day not due yet gets 参数不合法); the simulator's isp.bill_not_ready does.
_BILL_NOT_READY = frozenset({bills.NOT_READY})
_BILL_NOT_EXIST = frozenset({bills.NOT_EXIST, "BILL_NOT_EXIST"})
_BILL_BAD_ARGUMENTS = frozenset({bills.BAD_ARGUMENTS, "INVAILID_ARGUMENTS", "INVALID_ARGUMENTS"})
# Day D's bill is written "一般于次日 9 点前" (Beijing); before D+1 10:00 a refusal means "not yet".
_BILL_DUE = time(10)
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True, slots=True)
class GatewayReply:
    """A verified response member of one gateway call."""

    code: str
    sub_code: str | None
    body: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.code == "10000"

    def describe(self) -> str:
        text = f"code {self.code}"
        if self.sub_code:
            text += f" {self.sub_code}"
        sub_msg = self.body.get("sub_msg") or self.body.get("msg")
        if isinstance(sub_msg, str) and sub_msg:
            text += f" ({sub_msg})"
        return text


_AUTHORIZED_METHODS = frozenset(
    {PaymentMethod.QR_CODE, PaymentMethod.PAYMENT_CODE, PaymentMethod.JSAPI}
)


class AlipayProvider(Provider):
    """Alipay OpenAPI with RSA2 keys, in public-key mode or public-key certificate mode."""

    name: ClassVar[str] = "alipay"
    display_name: ClassVar[str] = "Alipay"
    methods: ClassVar[tuple[PaymentMethod, ...]] = (
        PaymentMethod.PAGE,
        PaymentMethod.WAP,
        PaymentMethod.QR_CODE,
        PaymentMethod.APP,
        PaymentMethod.PAYMENT_CODE,
        PaymentMethod.JSAPI,
    )
    Settings: ClassVar[type[BaseModel]] = AlipaySettings
    # JSAPI payers: a user id (2088 + 12 digits) or the OpenID apps made since 2023 get.
    # Third-party app authorization: a branch under a service provider's (ISV's)
    # account names its merchant app and the token that app granted.
    sub_merchant_settings: ClassVar[tuple[str, ...]] = ("auth_app_id", "app_auth_token")
    payer_id_pattern: ClassVar[re.Pattern[str] | None] = re.compile(
        rf"{_USER_ID.pattern}|[0-9A-Za-z_-]{{20,128}}"
    )
    # Alipay's payment codes: 16-24 digits starting 25-30 (alipay.trade.pay's auth_code).
    payment_code_pattern: ClassVar[re.Pattern[str] | None] = re.compile(r"(2[5-9]|30)[0-9]{14,22}")

    @classmethod
    def methods_with(cls, settings: BaseModel) -> tuple[PaymentMethod, ...]:
        if getattr(settings, "app_auth_token", None) is None:
            return cls.methods
        # Server-side calls only: the token never travels to the payer's device.
        return tuple(m for m in cls.methods if m in _AUTHORIZED_METHODS)

    def __init__(self, settings: BaseModel, *, branch: str, http: httpx.AsyncClient) -> None:
        if not isinstance(settings, AlipaySettings):
            raise TypeError("AlipayProvider needs AlipaySettings")
        super().__init__(settings, branch=branch, http=http)
        self.config = settings
        self._private_key = load_private_key(settings.private_key.get_secret_value())
        # Certificate mode: the SNs every request carries, and the one answers must name.
        self._cert_params: dict[str, str] = {}
        self._alipay_cert_sn: str | None = None
        if settings.app_cert and settings.alipay_cert and settings.alipay_root_cert:
            alipay_cert = load_certificate(settings.alipay_cert)
            key = alipay_cert.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise TypeError("alipay_cert holds no RSA key")
            self._alipay_key = key
            self._alipay_cert_sn = cert_sn(alipay_cert)
            self._cert_params = {
                "app_cert_sn": cert_sn(load_certificate(settings.app_cert)),
                "alipay_root_cert_sn": root_cert_sn(load_certificates(settings.alipay_root_cert)),
            }
        elif settings.alipay_public_key:
            self._alipay_key = load_public_key(settings.alipay_public_key)
        else:
            raise TypeError("AlipaySettings has neither alipay_public_key nor the certificates")

    # --- create ---------------------------------------------------------------

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        if request.method is PaymentMethod.PAYMENT_CODE:
            raise GatewayError("a PAYMENT_CODE sale is charged with pay_with_code, not opened")
        if request.method not in _PRODUCT_CODES:
            raise GatewayError(f"Alipay does not offer {request.method}")
        total_amount = self._total_amount(request)
        self._check_out_trade_no(request.out_trade_no)
        api_method, product_code = _PRODUCT_CODES[request.method]
        biz: dict[str, str] = {
            "out_trade_no": request.out_trade_no,
            "total_amount": total_amount,
            "subject": request.subject[:_SUBJECT_MAX],
            "product_code": product_code,
            "time_expire": to_beijing(request.expires_at),
        }
        extra = {"notify_url": request.notify_url}
        if request.method in (PaymentMethod.PAGE, PaymentMethod.WAP) and request.return_url:
            extra["return_url"] = request.return_url
            if request.method is PaymentMethod.WAP:
                biz["quit_url"] = request.return_url

        if request.method is PaymentMethod.JSAPI:
            return await self._create_trade(request, biz, extra)
        if request.method is PaymentMethod.QR_CODE:
            reply = await self._call(
                api_method, biz, extra=extra, repeatable=False, ref=request.out_trade_no
            )
            if not reply.ok:
                raise GatewayError(f"Alipay refused the QR code payment: {reply.describe()}")
            qr_code = reply.body.get("qr_code")
            if reply.body.get("out_trade_no") != request.out_trade_no or not isinstance(
                qr_code, str
            ):
                raise GatewayError(
                    "Alipay's precreate answer does not match the attempt", outcome_unknown=True
                )
            return PaymentAction(kind=ActionKind.QR_CODE, qr_code=qr_code, url=qr_code)

        if self.config.app_auth_token is not None:
            # The signed URL or order string goes to the payer's device, and with
            # it every common parameter: the merchant's token must stay here.
            raise GatewayError(
                f"with third-party app authorization Alipay {request.method} would hand "
                "app_auth_token to the payer's device; use QR_CODE, JSAPI or PAYMENT_CODE"
            )
        params = self._signed_params(api_method, biz, extra)
        logger.info(
            "alipay %s signed for branch %s out_trade_no=%s",
            api_method,
            self.branch,
            request.out_trade_no,
        )
        if request.method is PaymentMethod.APP:
            return PaymentAction(kind=ActionKind.APP_SDK, app_payload=urlencode(params))
        return PaymentAction(
            kind=ActionKind.REDIRECT, url=f"{self.config.gateway}?{urlencode(params)}"
        )

    async def _create_trade(
        self, request: PaymentRequest, biz: dict[str, str], extra: Mapping[str, str]
    ) -> PaymentAction:
        """JSAPI: ``alipay.trade.create`` for the payer; the page pays ``trade_no``."""
        payer_id = request.payer_id
        if (
            not payer_id
            or not self.payer_id_pattern
            or not self.payer_id_pattern.fullmatch(payer_id)
        ):
            raise GatewayError("a JSAPI payment needs the payer's Alipay user id or OpenID")
        biz["buyer_id" if _USER_ID.fullmatch(payer_id) else "buyer_open_id"] = payer_id
        reply = await self._call(
            "alipay.trade.create", biz, extra=extra, repeatable=False, ref=request.out_trade_no
        )
        if not reply.ok:
            raise GatewayError(f"Alipay refused the in-app payment: {reply.describe()}")
        trade_no = reply.body.get("trade_no")
        if reply.body.get("out_trade_no") != request.out_trade_no or not isinstance(trade_no, str):
            raise GatewayError(
                "Alipay's create answer does not match the attempt", outcome_unknown=True
            )
        return PaymentAction(kind=ActionKind.TRADE_PAY, trade_no=trade_no)

    @staticmethod
    def _check_out_trade_no(out_trade_no: str) -> None:
        if not _OUT_NO.fullmatch(out_trade_no):
            raise GatewayError("out_trade_no must be 1-64 letters, digits or underscores")

    @staticmethod
    def _total_amount(request: PaymentRequest) -> str:
        if request.currency != "CNY":
            raise GatewayError("Alipay trades here are in CNY only")
        try:
            return fen_to_yuan(request.amount_fen)
        except AmountError as exc:
            raise GatewayError(f"amount refused: {exc}") from None

    # --- counter sales (PAYMENT_CODE) -------------------------------------------

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        """Charge the scanned code with ``alipay.trade.pay`` (``scene=bar_code``).

        ``10000``: paid (SUCCEEDED with the payment fact, the same event id the
        query and the notification give); ``10003``: the payer confirms on the
        phone (PENDING: branchpay polls :meth:`query`, then :meth:`reverse`);
        ``ACQ.TRADE_HAS_SUCCESS``: paid before (a repeat), read with a query;
        any other refusal: FAILED, nothing was taken. ``20000`` or
        ``ACQ.SYSTEM_ERROR``, a time-out or an unverifiable answer: the outcome
        is unknown (``GatewayError(outcome_unknown=True)``), so branchpay
        follows the sale with queries. The call is sent once. The code is
        never logged, put in an error or kept in an event.
        """
        if not request.auth_code:
            raise GatewayError("a PAYMENT_CODE sale needs the scanned auth_code")
        total_amount = self._total_amount(request)
        self._check_out_trade_no(request.out_trade_no)
        biz = {
            "out_trade_no": request.out_trade_no,
            "scene": "bar_code",
            "auth_code": request.auth_code,
            "subject": request.subject[:_SUBJECT_MAX],
            "total_amount": total_amount,
            "product_code": "FACE_TO_FACE_PAYMENT",
        }
        reply = await self._call(
            "alipay.trade.pay",
            biz,
            extra={"notify_url": request.notify_url},
            repeatable=False,
            ref=request.out_trade_no,
        )
        if reply.code in ("10000", "10003"):
            if reply.body.get("out_trade_no") != request.out_trade_no:
                raise GatewayError(
                    "Alipay's pay answer does not match the sale", outcome_unknown=True
                )
            trade_no = _str_or_none(reply.body.get("trade_no"))
            if reply.code == "10003":
                return QueryResult(AttemptState.PENDING, trade_no, request.amount_fen)
            try:
                amount_fen = yuan_to_fen(str(reply.body.get("total_amount")))
            except AmountError:
                raise GatewayError(
                    "Alipay's pay answer has no valid total_amount", outcome_unknown=True
                ) from None
            paid_at = _parse_beijing_or_now(reply.body.get("gmt_payment"))
            event = self._paid_event(
                request.out_trade_no, amount_fen, paid_at, trade_no, {"trade_status": "PAID"}
            )
            return QueryResult(AttemptState.SUCCEEDED, trade_no, amount_fen, (event,))
        if reply.sub_code == "ACQ.TRADE_HAS_SUCCESS":
            return await self.query(request.out_trade_no)
        logger.info(
            "alipay code sale %s for branch %s declined: %s",
            request.out_trade_no,
            self.branch,
            reply.describe(),
        )
        return QueryResult(state=AttemptState.FAILED)

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        """Void a counter sale with ``alipay.trade.cancel`` (safe to repeat).

        ``retry_flag=Y``: RETRY; ``action`` ``close`` (it was unpaid, and can no
        longer be paid) or ``refund`` (it was paid and the money went back to
        the payer): DONE. A trade Alipay never saw: DONE, nothing was taken.
        Past the cancel window (``ACQ.TRADE_CANCEL_TIME_OUT``) a paid sale is
        kept as PAID. Anything else raises ``GatewayError`` and branchpay asks again.
        """
        reply = await self._call(
            "alipay.trade.cancel", {"out_trade_no": out_trade_no}, repeatable=True, ref=out_trade_no
        )
        if reply.body.get("retry_flag") == "Y":
            return ReverseResult(ReverseState.RETRY, message=reply.describe())
        if reply.sub_code == "ACQ.TRADE_NOT_EXIST":
            return ReverseResult(ReverseState.DONE, message="no such trade")
        if reply.sub_code == "ACQ.TRADE_CANCEL_TIME_OUT":
            state = (await self.query(out_trade_no)).state
            if state is AttemptState.SUCCEEDED:
                return ReverseResult(ReverseState.PAID, message="past the cancel window")
            return ReverseResult(ReverseState.DONE, message="past the cancel window, unpaid")
        if not reply.ok:
            raise GatewayError(f"Alipay refused to cancel the sale: {reply.describe()}")
        action = reply.body.get("action")
        if action in ("close", "refund"):
            return ReverseResult(ReverseState.DONE, message=str(action))
        if action in (None, ""):
            # Alipay names the action only when the trade exists; none means nothing to void.
            return ReverseResult(ReverseState.DONE, message="nothing to cancel")
        raise GatewayError("Alipay answered a cancel with an unknown action")

    # --- notifications --------------------------------------------------------

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        params = self._verified_notification(request)
        notify_type = params.get("notify_type")
        if notify_type != "trade_status_sync":
            logger.info(
                "alipay notification of type %s for branch %s ignored", notify_type, self.branch
            )
            return None
        out_trade_no = self._field(params, "out_trade_no")
        if not _OUT_NO.fullmatch(out_trade_no):
            self._reject("out_trade_no is malformed")
        trade_status = self._field(params, "trade_status")
        if trade_status not in _TRADE_STATES:
            self._reject("trade_status is not one Alipay defines")
        total_fen = self._amount(params, "total_amount")
        trade_no = params.get("trade_no") or None

        logger.info(
            "alipay notification %s for branch %s: out_trade_no=%s trade_status=%s",
            params.get("notify_id", "?"),
            self.branch,
            out_trade_no,
            trade_status,
        )
        out_biz_no = params.get("out_biz_no")
        if out_biz_no:
            return await self._refund_event(params, out_trade_no, out_biz_no, trade_no)
        if trade_status in _PAID:
            occurred = self._time(params, "gmt_payment", "notify_time")
            return self._paid_event(
                out_trade_no, total_fen, occurred, trade_no, _notification_detail(params)
            )
        if trade_status == "TRADE_CLOSED":
            occurred = self._time(params, "gmt_close", "notify_time")
            return ProviderEvent(
                kind=EventKind.PAYMENT_CLOSED,
                event_id=f"alipay:{out_trade_no}:closed",
                out_trade_no=out_trade_no,
                amount_fen=total_fen,
                currency="CNY",
                occurred_at=occurred,
                provider_trade_no=trade_no,
                detail=_notification_detail(params),
            )
        return None  # WAIT_BUYER_PAY: the trade exists, nothing to apply yet

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        # Alipay stops re-delivering only on the exact body "success".
        if accepted:
            return NotificationReply(status_code=200, body=b"success")
        return NotificationReply(status_code=400, body=b"fail")

    def _verified_notification(self, request: NotificationRequest) -> dict[str, str]:
        if request.method.upper() != "POST":
            self._reject("notification is not a POST")
        if len(request.body) > MAX_NOTIFICATION_BYTES:
            self._reject(f"body larger than {MAX_NOTIFICATION_BYTES} bytes")
        content_type = request.headers.get("content-type", "")
        if content_type and not content_type.lower().startswith(
            "application/x-www-form-urlencoded"
        ):
            self._reject("body is not a form")
        try:
            pairs = parse_qsl(
                request.body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=True,
                errors="strict",
            )
        except (UnicodeDecodeError, ValueError):
            self._reject("body is not a UTF-8 urlencoded form")
        params = dict(pairs)
        if len(params) != len(pairs):
            self._reject("body repeats a parameter")
        signature = params.get("sign")
        if not signature:
            self._reject("sign is missing")
        # sign_type is not signed; absent, it can only mean Alipay's default, RSA2.
        if params.get("sign_type", "RSA2") != "RSA2":
            self._reject("sign_type is not RSA2")
        if not self._genuine(params, signature):
            self._reject("sign does not verify with the Alipay public key")
        # Genuine from here on: one for another app or merchant is kept aside, not refused.
        if params.get("app_id") != self.config.app_id:
            self._mismatch("app_id is not this branch's Alipay app")
        if self.config.seller_id and params.get("seller_id") != self.config.seller_id:
            self._mismatch("seller_id is not this branch's merchant")
        if self.config.auth_app_id and params.get("auth_app_id") != self.config.auth_app_id:
            self._mismatch("auth_app_id is not this branch's authorized merchant app")
        return params

    def _genuine(self, params: Mapping[str, str], signature: str) -> bool:
        if verify(self._alipay_key, notification_string(params), signature):
            return True
        # Alipay signs every parameter it sends, empty ones included; some
        # signers drop empty values as in request signing. Without them the
        # signed content is the same, and an empty value carries nothing we use.
        filled = {k: v for k, v in params.items() if v != ""}
        return len(filled) < len(params) and verify(
            self._alipay_key, notification_string(filled), signature
        )

    def _reject(self, reason: str) -> NoReturn:
        logger.warning("alipay notification rejected for branch %s: %s", self.branch, reason)
        raise NotificationRejected(reason)

    def _mismatch(self, reason: str) -> NoReturn:
        logger.warning("alipay notification kept aside for branch %s: %s", self.branch, reason)
        raise NotificationMismatch(reason)

    def _field(self, params: Mapping[str, str], name: str) -> str:
        value = params.get(name)
        if not value:
            self._reject(f"{name} is missing")
        return str(value)

    def _amount(self, params: Mapping[str, str], name: str) -> int:
        try:
            return yuan_to_fen(self._field(params, name))
        except AmountError:
            return self._reject(f"{name} is not a yuan amount with two decimals")

    def _time(self, params: Mapping[str, str], *names: str) -> datetime:
        for name in names:
            value = params.get(name)
            if value:
                try:
                    return _parse_beijing(value)
                except ValueError:
                    return self._reject(f"{name} is not an Alipay time")
        return self._reject(f"{names[-1]} is missing")

    def _paid_event(
        self,
        out_trade_no: str,
        total_fen: int,
        occurred_at: datetime,
        trade_no: str | None,
        detail: Mapping[str, Any],
    ) -> ProviderEvent:
        # TRADE_SUCCESS and the later TRADE_FINISHED report one fact, so one event id.
        return ProviderEvent(
            kind=EventKind.PAYMENT_SUCCEEDED,
            event_id=f"alipay:{out_trade_no}:paid",
            out_trade_no=out_trade_no,
            amount_fen=total_fen,
            currency="CNY",
            occurred_at=occurred_at,
            provider_trade_no=trade_no,
            detail=detail,
        )

    async def _refund_event(
        self, params: Mapping[str, str], out_trade_no: str, out_biz_no: str, trade_no: str | None
    ) -> ProviderEvent | None:
        # The notification carries the trade's cumulative refund_fee, not this
        # refund's amount; the refund query names the amount of out_biz_no itself.
        self._amount(params, "refund_fee")
        occurred = self._time(params, "gmt_refund", "notify_time")
        try:
            refund = await self._query_refund(out_trade_no, out_biz_no)
        except GatewayError as exc:
            # Not an answer we can store yet; refusing makes Alipay deliver it again.
            self._reject(f"refund {out_biz_no} could not be confirmed with Alipay ({exc})")
        if refund is None:
            return None
        return ProviderEvent(
            kind=EventKind.REFUND_SUCCEEDED,
            event_id=f"alipay:{out_trade_no}:refund:{out_biz_no}",
            out_trade_no=out_trade_no,
            amount_fen=refund,
            currency="CNY",
            occurred_at=occurred,
            provider_trade_no=trade_no,
            out_refund_no=out_biz_no,
            detail=_notification_detail(params),
        )

    # --- query, refund, close -------------------------------------------------

    async def query(self, out_trade_no: str) -> QueryResult:
        reply = await self._call(
            "alipay.trade.query",
            {"out_trade_no": out_trade_no},
            repeatable=True,
            ref=out_trade_no,
        )
        if reply.sub_code == "ACQ.TRADE_NOT_EXIST":
            return QueryResult(state=AttemptState.UNKNOWN)
        if not reply.ok:
            raise GatewayError(f"Alipay trade query failed: {reply.describe()}", retryable=True)
        body = reply.body
        if body.get("out_trade_no") != out_trade_no:
            raise GatewayError("Alipay answered the query for another attempt", retryable=True)
        status = body.get("trade_status")
        trade_no = _str_or_none(body.get("trade_no"))
        try:
            amount_fen = yuan_to_fen(str(body.get("total_amount")))
        except AmountError:
            raise GatewayError(
                "Alipay's query answer has no valid total_amount", retryable=True
            ) from None
        if status in _PAID or (status == "TRADE_CLOSED" and body.get("send_pay_date")):
            # A trade closed after payment was refunded in full: it was paid, and
            # the refunds are facts of their own, so it reports as paid.
            paid_at = _parse_beijing_or_now(body.get("send_pay_date"))
            event = self._paid_event(
                out_trade_no, amount_fen, paid_at, trade_no, {"trade_status": status}
            )
            return QueryResult(AttemptState.SUCCEEDED, trade_no, amount_fen, (event,))
        if status == "WAIT_BUYER_PAY":
            return QueryResult(AttemptState.PENDING, trade_no, amount_fen)
        if status == "TRADE_CLOSED":
            closed = ProviderEvent(
                kind=EventKind.PAYMENT_CLOSED,
                event_id=f"alipay:{out_trade_no}:closed",
                out_trade_no=out_trade_no,
                amount_fen=amount_fen,
                currency="CNY",
                occurred_at=datetime.now(UTC),
                provider_trade_no=trade_no,
                detail={"trade_status": status},
            )
            return QueryResult(AttemptState.CLOSED, trade_no, amount_fen, (closed,))
        raise GatewayError("Alipay answered an unknown trade_status", retryable=True)

    async def refund(self, request: RefundRequest) -> RefundResult:
        if request.currency != "CNY":
            raise GatewayError("Alipay trades here are in CNY only")
        try:
            refund_amount = fen_to_yuan(request.refund_fen)
        except AmountError as exc:
            raise GatewayError(f"refund amount refused: {exc}") from None
        if not _OUT_NO.fullmatch(request.out_refund_no):
            raise GatewayError("out_refund_no must be 1-64 letters, digits or underscores")
        biz = {
            "out_trade_no": request.out_trade_no,
            "refund_amount": refund_amount,
            "out_request_no": request.out_refund_no,
        }
        if request.reason:
            biz["refund_reason"] = request.reason[:256]
        # Alipay refunds each out_request_no once, so a repeat after a lost
        # answer is safe and returns fund_change=N instead of paying twice.
        reply = await self._call(
            "alipay.trade.refund", biz, repeatable=True, ref=request.out_trade_no
        )
        if not reply.ok:
            logger.info(
                "alipay refund %s of %s refused: %s",
                request.out_refund_no,
                request.out_trade_no,
                reply.describe(),
            )
            return RefundResult(RefundState.FAILED, message=reply.describe())
        if reply.body.get("out_trade_no") not in (None, request.out_trade_no):
            raise GatewayError(
                "Alipay answered the refund for another attempt",
                retryable=True,
                outcome_unknown=True,
            )
        if reply.body.get("fund_change") == "Y":
            return RefundResult(RefundState.SUCCEEDED, _str_or_none(reply.body.get("trade_no")))
        # fund_change=N: this number was refunded before or is still in progress;
        # Alipay's refund query is the documented way to tell.
        refunded = await self._query_refund(request.out_trade_no, request.out_refund_no)
        if refunded is None:
            return RefundResult(RefundState.PENDING, message="Alipay has not confirmed the refund")
        if refunded != request.refund_fen:
            return RefundResult(
                RefundState.FAILED,
                message="out_refund_no was already used for a different amount",
            )
        return RefundResult(RefundState.SUCCEEDED, _str_or_none(reply.body.get("trade_no")))

    async def _query_refund(self, out_trade_no: str, out_request_no: str) -> int | None:
        """The amount refunded under ``out_request_no``, or None if not (yet) refunded."""
        reply = await self._call(
            "alipay.trade.fastpay.refund.query",
            {"out_trade_no": out_trade_no, "out_request_no": out_request_no},
            repeatable=True,
            ref=out_trade_no,
        )
        if not reply.ok:
            if reply.sub_code == "ACQ.TRADE_NOT_EXIST":
                return None
            raise GatewayError(f"Alipay refund query failed: {reply.describe()}", retryable=True)
        if reply.body.get("refund_status") != "REFUND_SUCCESS":
            return None
        if reply.body.get("out_request_no") != out_request_no:
            raise GatewayError("Alipay answered the refund query for another refund")
        try:
            return yuan_to_fen(str(reply.body.get("refund_amount")))
        except AmountError:
            raise GatewayError(
                "Alipay's refund query has no valid refund_amount", retryable=True
            ) from None

    async def close(self, out_trade_no: str) -> None:
        reply = await self._call(
            "alipay.trade.close", {"out_trade_no": out_trade_no}, repeatable=True, ref=out_trade_no
        )
        if reply.ok or reply.sub_code == "ACQ.TRADE_NOT_EXIST":
            return
        if reply.sub_code == "ACQ.TRADE_STATUS_ERROR":
            # Already closed (fine) or already paid (the caller must know); only a query tells.
            state = (await self.query(out_trade_no)).state
            if state is AttemptState.CLOSED:
                return
            raise GatewayError(f"Alipay cannot close the attempt: it is {state.value.lower()}")
        raise GatewayError(f"Alipay refused to close the attempt: {reply.describe()}")

    # --- daily bills ----------------------------------------------------------

    async def download_bill(self, day: date, destination: BinaryIO) -> None:
        """Ask for the link to the trade bill of ``day`` and write the zip behind it.

        The query is signed and its answer verified like every call; the link is a
        plain GET that lasts 30 seconds, so it is fetched at once, streamed into
        ``destination`` as it arrives. A day without business is an empty bill
        (``bill_file_code=EMPTY_DATA_WITH_BILL_FILE``), downloaded like any other.
        """
        if self._bill_account() is None:
            raise GatewayError(_NO_SELLER_ID)
        reply = await self._call(
            bills.BILL_METHOD,
            {"bill_type": "trade", "bill_date": day.isoformat()},
            repeatable=True,
            ref=day.isoformat(),
        )
        if not reply.ok:
            reason = bill_unavailable_reason(reply.sub_code, day, datetime.now(UTC))
            if reason is BillUnavailableReason.NOT_READY:
                raise BillUnavailable(
                    f"Alipay has not published the bill of {day} yet ({reply.describe()}); "
                    "ask again later",
                    reason=reason,
                )
            if reason is BillUnavailableReason.NO_BILL:
                raise BillUnavailable(
                    f"Alipay has no bill for {day} ({reply.describe()})", reason=reason
                )
            raise GatewayError(
                f"Alipay bill query for {day} failed: {reply.describe()}", retryable=True
            )
        url = reply.body.get("bill_download_url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise GatewayError("Alipay's bill answer has no download URL", retryable=True)
        size = await self._fetch_bill(url, destination)
        logger.info(
            "alipay bill of %s for branch %s downloaded: %d bytes%s",
            day,
            self.branch,
            size,
            " (no business that day)"
            if reply.body.get("bill_file_code") == bills.EMPTY_DATA_WITH_BILL_FILE
            else "",
        )

    async def _fetch_bill(self, url: str, destination: BinaryIO) -> int:
        """GET the bill link into ``destination``; the byte count. Never logs the link."""
        written = 0
        head: bytes | None = b""
        try:
            async with self.http.stream(
                "GET", url, timeout=self.config.timeout_seconds
            ) as response:
                if response.status_code != 200:
                    raise GatewayError(
                        f"Alipay's bill download answered HTTP {response.status_code}",
                        retryable=True,
                    )
                async for chunk in response.aiter_bytes():
                    if head is not None:
                        # An expired link answers text, not a zip: look before writing.
                        head += chunk
                        if len(head) < len(_ZIP_MAGIC):
                            continue
                        if not head.startswith(_ZIP_MAGIC):
                            raise GatewayError(_download_refusal(head), retryable=True)
                        chunk, head = head, None
                    destination.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as error:
            raise GatewayError(
                f"Alipay's bill download failed ({type(error).__name__})", retryable=True
            ) from None
        if head is not None:
            raise GatewayError(_download_refusal(head), retryable=True)
        return written

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        """The lines of a bill :meth:`download_bill` wrote, then its totals, as they are read.

        The bill's ``#账号`` must be this branch's merchant: ``seller_id`` + ``0156``.
        """
        account = self._bill_account()
        if account is None:
            raise BillRejected(_NO_SELLER_ID)
        yield from bills.read_bill(source, account=account)

    def _bill_account(self) -> str | None:
        return bills.account_of(self.config.seller_id) if self.config.seller_id else None

    # --- gateway calls --------------------------------------------------------

    def _signed_params(
        self, api_method: str, biz: Mapping[str, str], extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        params = {
            "app_id": self.config.app_id,
            "method": api_method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": to_beijing(datetime.now(UTC)),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
            **self._cert_params,
        }
        if self.config.app_auth_token is not None:
            # ISV mode: the call acts for the merchant app that granted the token.
            params["app_auth_token"] = self.config.app_auth_token.get_secret_value()
        if extra:
            params.update({k: v for k, v in extra.items() if v})
        params["sign"] = sign(self._private_key, request_string(params))
        return params

    async def _call(
        self,
        api_method: str,
        biz: Mapping[str, str],
        *,
        repeatable: bool,
        ref: str,
        extra: Mapping[str, str] | None = None,
    ) -> GatewayReply:
        reply = await call_gateway(
            lambda: self._call_once(api_method, biz, extra),
            settings=self.config,
            operation=f"Alipay {api_method}",
            repeatable=repeatable,
            changes_state=api_method not in _READ_ONLY,
            logger=logger,
        )
        logger.info(
            "alipay %s for branch %s ref=%s: %s",
            api_method,
            self.branch,
            ref,
            reply.describe() if not reply.ok else "code 10000",
        )
        return reply

    async def _call_once(
        self, api_method: str, biz: Mapping[str, str], extra: Mapping[str, str] | None
    ) -> GatewayReply:
        params = self._signed_params(api_method, biz, extra)
        response = await self.http.post(
            self.config.gateway,
            content=urlencode(params).encode("ascii"),
            headers={"content-type": "application/x-www-form-urlencoded;charset=utf-8"},
            timeout=self.config.timeout_seconds,
        )
        if response.status_code >= 500:
            raise TransientFailure(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise GatewayError(
                f"Alipay {api_method} answered HTTP {response.status_code}",
                outcome_unknown=api_method not in _READ_ONLY,
            )
        reply = self._verified_reply(api_method, response.text, acts=api_method not in _READ_ONLY)
        if reply.code in _RETRY_CODES or reply.sub_code in _RETRY_SUB_CODES:
            raise TransientFailure(reply.describe())
        return reply

    def _verified_reply(self, api_method: str, text: str, *, acts: bool) -> GatewayReply:
        """The response member, once its signature verifies; ``acts``: the call may change state."""
        member = api_method.replace(".", "_") + "_response"
        try:
            members = response_members(text)
        except ValueError:
            raise GatewayError(
                f"Alipay {api_method} answered something that is not JSON", outcome_unknown=acts
            ) from None
        raw = members.get(member) or members.get("error_response")
        if raw is None:
            raise GatewayError(f"Alipay {api_method} answer has no {member}", outcome_unknown=acts)
        signature_json = members.get("sign")
        signature = json.loads(signature_json) if signature_json else None
        if not isinstance(signature, str) or not signature:
            # Alipay leaves gateway-level refusals (bad app id, bad signature)
            # unsigned; nothing in them can be trusted beyond "it did not work".
            raise GatewayError(
                f"Alipay {api_method} answer is unsigned; check app_id and keys",
                outcome_unknown=acts,
            )
        if not verify(self._alipay_key, raw, signature):
            raise GatewayError(
                f"Alipay {api_method} answer failed signature verification", outcome_unknown=acts
            )
        sn_json = members.get("alipay_cert_sn")
        if self._alipay_cert_sn is not None and sn_json is not None:
            sn = json.loads(sn_json)
            if sn != self._alipay_cert_sn:
                # Alipay renewed its certificate: the one we hold cannot vouch for the answer.
                raise GatewayError(
                    f"Alipay {api_method} answer names alipay_cert_sn {str(sn)[:40]!r}, not "
                    "alipay_cert's: download the new Alipay public key certificate "
                    "(alipay.open.app.alipaycert.download) and update alipay_cert",
                    outcome_unknown=acts,
                )
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise GatewayError(f"Alipay {api_method} answer is malformed", outcome_unknown=acts)
        return GatewayReply(
            code=str(body.get("code", "")),
            sub_code=_str_or_none(body.get("sub_code")),
            body=body,
        )


_READ_ONLY = frozenset(
    {"alipay.trade.query", "alipay.trade.fastpay.refund.query", bills.BILL_METHOD}
)
_NO_SELLER_ID = (
    "Alipay bills need seller_id (the merchant PID, 2088 and 12 digits) in the branch's "
    "settings: a bill is accepted only when its account is that merchant's"
)


def bill_unavailable_reason(
    sub_code: str | None, day: date, now: datetime
) -> BillUnavailableReason | None:
    """What a refusal of the bill query for ``day`` means at ``now``; None: a plain failure.

    A refusal that only says "no bill" or "bad arguments" before the day is due
    (D+1 10:00 Beijing) means the bill is not written yet; "no bill" after that
    is believed.
    """
    if sub_code in _BILL_NOT_READY:
        return BillUnavailableReason.NOT_READY
    if sub_code not in _BILL_NOT_EXIST and sub_code not in _BILL_BAD_ARGUMENTS:
        return None
    due = datetime.combine(day + timedelta(days=1), _BILL_DUE, tzinfo=BEIJING)
    if now < due:
        return BillUnavailableReason.NOT_READY
    return BillUnavailableReason.NO_BILL if sub_code in _BILL_NOT_EXIST else None


def _download_refusal(head: bytes) -> str:
    text = re.sub(r"<[^>]*>|\s+", " ", head[:300].decode("gb18030", errors="replace")).strip()
    return (
        f"Alipay refused the bill download ({text[:80] or 'empty answer'}): "
        "a bill link lasts 30 seconds; run again"
    )


# Notification fields safe to keep with the event: no buyer identity.
_DETAIL_FIELDS = (
    "notify_id",
    "notify_time",
    "trade_status",
    "receipt_amount",
    "buyer_pay_amount",
    "refund_fee",
    "out_biz_no",
)


def _notification_detail(params: Mapping[str, str]) -> dict[str, str]:
    return {k: params[k] for k in _DETAIL_FIELDS if params.get(k)}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse_beijing(text: str) -> datetime:
    """Alipay's ``yyyy-MM-dd HH:mm:ss`` (refunds add ``.SSS``) Beijing time, as UTC."""
    return from_beijing(text, "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S")


def _parse_beijing_or_now(value: object) -> datetime:
    if isinstance(value, str) and value:
        try:
            return _parse_beijing(value)
        except ValueError:
            pass
    return datetime.now(UTC)
