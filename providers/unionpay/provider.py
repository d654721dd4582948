"""The UnionPay adapter: the ACP 5.1.0 online gateway (全渠道), signMethod 01.

Methods: PAGE and WAP are front consumes (the payer's browser posts a signed
form to ``frontTransReq.do``), APP asks ``appTransReq.do`` for a ``tn`` the
UnionPay app SDK takes, QR_CODE asks ``backTransReq.do`` for a merchant-
presented code (bizType 000000, txnSubType 07). Query is ``queryTrans.do``
(txnType 00). A refund is a 退货 (txnType 04) on ``backTransReq.do``, or a
消费撤销 (void, txnType 31) when it is for the full amount within the payment's
settlement day (23:00 to 23:00 Beijing time), which the gateway settles at once
and without a fee.

Counter sales (PAYMENT_CODE, 云闪付 codes of 19 digits starting 62):
``pay_with_code`` is the consume with the payer's code (txnType 01,
txnSubType 06, bizType 000000, ``qrNo``) on ``backTransReq.do``, sent once;
``reverse`` queries the sale and sends a 消费撤销 (txnType 31, ``origQryId``)
of the full amount under the orderId ``<out_trade_no>rv``. The code is never
logged, put in an error or kept in an event.

UnionPay names a transaction by ``merId`` + ``orderId`` + ``txnTime``, and the
contract hands query, refund and close only ``out_trade_no`` (which is our
``orderId``). The contract also promises that every ``out_trade_no`` and
``out_refund_no`` starts with its 12-digit UTC creation time (YYMMDDhhmmss),
so the ``txnTime`` is that moment in Beijing time: derived from the number
alone, the same when the attempt is opened and whenever (and in whichever
process) it is queried, refunded or closed. A number without that prefix is
refused before anything is sent.

UnionPay has no call that closes an unpaid online consume: it stops taking
payment at ``payTimeout`` (set from ``expires_at``). ``close`` therefore checks
the attempt is not paid and marks it closed here; a payment the platform still
takes before ``payTimeout`` wins over the mark (query reports SUCCEEDED and the
notification is accepted), as with any close/pay race.

Retries: only query, refund (the same ``orderId`` + ``txnTime`` is refused as
a duplicate, respCode 12, never refunded twice) and the bill download are
repeated, with exponential backoff; opening APP and QR_CODE attempts is tried once.

Daily bills: :meth:`UnionpayProvider.download_bill` is the file transfer
(文件传输类交易, ``txnType=76``, ``settleDate`` MMDD, ``fileType=00``) to
``file_transfer`` (``filedownload.95516.com``). The answer is verified like any
back-end answer; its ``fileContent`` (Base64 of zlib-deflated ZIP bytes) is
spooled while it arrives (it is signed, so nothing is trusted before its
end), then inflated in chunks into the destination: the ZIP itself.
``respCode=98`` (文件不存在) is ``NO_BILL``; ``99`` is ``NOT_READY`` (UnionPay
documents 99 only as 通用错误; its FAQ names 98 and 99 as the file transfer's
answers, and the simulator answers 99 for a day it has not published). HTTP 500
with an empty body is how UnionPay turns away a merId without file transfer
permission: a GatewayError, not retried. :meth:`~UnionpayProvider.read_bill`
reads the ZIP's ZM file record by record (see :mod:`providers.unionpay.bills`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import tempfile
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import IO, BinaryIO, ClassVar
from urllib.parse import parse_qsl, urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

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
    beijing_day,
    call_gateway,
    load_private_key,
)
from providers.unionpay import bills, message
from providers.unionpay.settings import UnionpaySettings, load_cert

logger = logging.getLogger("branchpay.providers.unionpay")

FRONT_PATH = "/gateway/api/frontTransReq.do"
APP_PATH = "/gateway/api/appTransReq.do"
BACK_PATH = "/gateway/api/backTransReq.do"
QUERY_PATH = "/gateway/api/queryTrans.do"

TXN_QUERY = "00"
TXN_CONSUME = "01"
TXN_REFUND = "04"
TXN_VOID = "31"
TXN_SUB_QR = "07"
TXN_SUB_CODE = "06"  # 二维码消费 with the payer's code (被扫)
BIZ_GATEWAY_PAY = "000201"
BIZ_QR = "000000"
CHANNEL_PC = "07"
CHANNEL_MOBILE = "08"

RESP_OK = "00"
RESP_DUPLICATE = "12"
RESP_NOT_FOUND = "34"
# "Outcome not known yet, query later" in respCode and origRespCode.
RESP_IN_DOUBT = frozenset({"03", "04", "05"})
# The file transfer: 文件不存在, and (our reading of 99 通用错误) not generated yet.
TXN_FILE_TRANSFER = "76"
RESP_NO_FILE = "98"
RESP_NOT_GENERATED = "99"
FILE_CONTENT = "fileContent"
# The answer's other fields together (signPubKeyCert is the largest, ~2 KiB).
MAX_ANSWER_FIELDS_BYTES = 256 * 1024
# fileContent stays in memory up to this size, then goes to a temporary file.
SPOOL_BYTES = 1 << 20
CHUNK_BYTES = 64 * 1024

MAX_NOTIFICATION_BYTES = 64 * 1024
_REQUIRED_NOTIFICATION_FIELDS = (
    "version",
    "signMethod",
    "signature",
    "signPubKeyCert",
    "merId",
    "orderId",
    "txnTime",
    "txnType",
    "respCode",
    "txnAmt",
)


def txn_time_of(number: str) -> str | None:
    """The txnTime a number names: its 12-digit UTC creation-time prefix, in Beijing time.

    None when the number does not start with a valid YYMMDDhhmmss.
    """
    head = number[:12]
    if len(head) < 12 or not head.isascii() or not head.isdigit():
        return None
    try:
        made = datetime.strptime(head, "%y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return message.beijing_time(made)


class UnionpayProvider(Provider):
    name: ClassVar[str] = "unionpay"
    display_name: ClassVar[str] = "UnionPay"
    methods: ClassVar[tuple[PaymentMethod, ...]] = (
        PaymentMethod.PAGE,
        PaymentMethod.WAP,
        PaymentMethod.QR_CODE,
        PaymentMethod.APP,
        PaymentMethod.PAYMENT_CODE,
    )
    Settings: ClassVar[type[UnionpaySettings]] = UnionpaySettings
    # 云闪付 payment codes: 19 digits starting 62 (channels.md 1.4, a weak source).
    payment_code_pattern: ClassVar[re.Pattern[str] | None] = re.compile(r"62\d{17}")

    settings: UnionpaySettings

    def __init__(self, settings: UnionpaySettings, *, branch: str, http: httpx.AsyncClient) -> None:
        super().__init__(settings, branch=branch, http=http)
        self._sign_key = load_private_key(settings.sign_cert_private_key.get_secret_value())
        self._cert_id = message.cert_id(load_cert(settings.sign_cert))
        self._middle = load_cert(settings.middle_cert)
        self._root = load_cert(settings.root_cert)

    # --- messages -----------------------------------------------------------------

    def _base_fields(
        self, txn_type: str, sub_type: str, biz_type: str, channel: str
    ) -> dict[str, str]:
        return {
            "version": message.VERSION,
            "encoding": "UTF-8",
            "signMethod": message.SIGN_METHOD_RSA,
            "certId": self._cert_id,
            "txnType": txn_type,
            "txnSubType": sub_type,
            "bizType": biz_type,
            "channelType": channel,
            "accessType": "0",
            "merId": self.settings.mer_id,
        }

    def _signed(self, fields: dict[str, str]) -> dict[str, str]:
        # The gateway signs and checks only the fields that carry a value.
        filled = {k: v for k, v in fields.items() if v}
        filled["signature"] = message.sign(filled, self._sign_key)
        return filled

    def _verify_platform(self, fields: dict[str, str], *, digest_hex: bytes | None = None) -> None:
        """Raise SignatureInvalid unless UnionPay signed ``fields`` (whose digest may be given)."""
        if fields.get("signMethod") != message.SIGN_METHOD_RSA:
            raise message.SignatureInvalid("signMethod is not 01")
        pem = fields.get("signPubKeyCert")
        if not pem:
            raise message.SignatureInvalid("signPubKeyCert missing")
        cert = message.load_certificate(pem)
        message.verify_platform_cert(
            cert,
            middle=self._middle,
            root=self._root,
            validate_owner=self.settings.validate_cn_name,
        )
        public = cert.public_key()
        if not isinstance(public, RSAPublicKey):
            raise message.SignatureInvalid("signPubKeyCert does not hold an RSA key")
        message.verify(fields, public, digest_hex=digest_hex)

    async def _call(
        self,
        path: str,
        fields: dict[str, str],
        *,
        repeatable: bool,
        retry_codes: frozenset[str] = frozenset(),
    ) -> dict[str, str]:
        """POST a signed request and return UnionPay's verified answer.

        Repeats (with backoff) only when ``repeatable``: on transport errors,
        HTTP 5xx and the answer codes in ``retry_codes``.
        """
        body = urlencode(self._signed(fields)).encode("utf-8")
        return await call_gateway(
            lambda: self._send(path, body, fields, retry_codes),
            settings=self.settings,
            operation=f"UnionPay {path.rsplit('/', 1)[-1]}",
            repeatable=repeatable,
            changes_state=path != QUERY_PATH,
            logger=logger,
        )

    async def _send(
        self, path: str, body: bytes, fields: dict[str, str], retry_codes: frozenset[str]
    ) -> dict[str, str]:
        """One try; raises :class:`TransientFailure` for what a repeat may cure."""
        response = await self.http.post(
            self.settings.gateway + path,
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded;charset=UTF-8"},
            timeout=self.settings.timeout_seconds,
        )
        if response.status_code >= 500:
            raise TransientFailure(f"HTTP {response.status_code}")
        if response.status_code != 200:
            # The gateway turned the HTTP request away before reading the transaction.
            raise GatewayError(f"UnionPay answered HTTP {response.status_code}")
        answer = self._trusted_answer(path, response.text, fields)
        code = answer.get("respCode", "")
        if code in retry_codes:
            raise TransientFailure(f"respCode {code}")
        return answer

    def _trusted_answer(self, path: str, text: str, sent: dict[str, str]) -> dict[str, str]:
        try:
            answer = message.parse_response(text)
            self._verify_platform(answer)
        except (ValueError, message.SignatureInvalid) as exc:
            logger.error("unionpay %s: answer rejected: %s", path, exc)
            raise GatewayError(
                f"UnionPay's answer failed verification: {exc}", outcome_unknown=True
            ) from None
        for name in ("merId", "orderId", "txnTime"):
            if name in answer and answer[name] != sent[name]:
                logger.error("unionpay %s: answer names another %s", path, name)
                raise GatewayError(f"UnionPay's answer names another {name}", outcome_unknown=True)
        return answer

    # --- create -------------------------------------------------------------------

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        if request.method is PaymentMethod.PAYMENT_CODE:
            raise GatewayError("a PAYMENT_CODE sale is charged with pay_with_code, not opened")
        if request.currency != "CNY":
            raise GatewayError("UnionPay online payments are in CNY only")
        if not _valid_order_id(request.out_trade_no):
            raise GatewayError("orderId must be 8..40 letters and digits")
        txn_time = txn_time_of(request.out_trade_no)
        if txn_time is None:
            raise GatewayError(
                "UnionPay needs the out_trade_no to start with its 12-digit UTC creation time "
                "(YYMMDDhhmmss): it is the transaction's txnTime"
            )
        if request.method is PaymentMethod.QR_CODE:
            fields = self._base_fields(TXN_CONSUME, TXN_SUB_QR, BIZ_QR, CHANNEL_MOBILE)
        else:
            channel = CHANNEL_PC if request.method is PaymentMethod.PAGE else CHANNEL_MOBILE
            fields = self._base_fields(TXN_CONSUME, "01", BIZ_GATEWAY_PAY, channel)
        fields |= {
            "orderId": request.out_trade_no,
            "txnTime": txn_time,
            "txnAmt": message.format_fen(request.amount_fen),
            "currencyCode": message.CURRENCY_CNY,
            "backUrl": request.notify_url,
            "payTimeout": message.beijing_time(request.expires_at),
        }
        if request.method in (PaymentMethod.PAGE, PaymentMethod.WAP):
            fields["frontUrl"] = request.return_url or ""
            form = message.auto_submit_form(
                self.settings.gateway + FRONT_PATH, self._signed(fields)
            )
            return PaymentAction(kind=ActionKind.FORM_POST, form_html=form)
        path = BACK_PATH if request.method is PaymentMethod.QR_CODE else APP_PATH
        answer = await self._call(path, fields, repeatable=False)
        code = answer.get("respCode", "")
        if code in RESP_IN_DOUBT:
            raise GatewayError(
                f"UnionPay has not decided yet (respCode {code})", outcome_unknown=True
            )
        if code != RESP_OK:
            raise GatewayError(f"UnionPay refused the payment: {code} {answer.get('respMsg', '')}")
        if request.method is PaymentMethod.QR_CODE:
            qr_code = answer.get("qrCode")
            if not qr_code:
                raise GatewayError("UnionPay's answer has no qrCode", outcome_unknown=True)
            return PaymentAction(kind=ActionKind.QR_CODE, qr_code=qr_code)
        tn = answer.get("tn")
        if not tn:
            raise GatewayError("UnionPay's answer has no tn", outcome_unknown=True)
        return PaymentAction(kind=ActionKind.APP_SDK, app_payload=tn)

    # --- notifications ------------------------------------------------------------

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        try:
            fields = self._notification_fields(request)
            self._verify_platform(fields)
        except (NotificationRejected, message.SignatureInvalid) as exc:
            logger.warning("unionpay notification for branch %s rejected: %s", self.branch, exc)
            raise NotificationRejected(str(exc)) from None
        if fields["merId"] != self.settings.mer_id:
            # Genuine (UnionPay signed it) but another merchant's: kept aside and answered.
            raise NotificationMismatch(
                f"the notification is for merId {fields['merId'][:32]!r}, "
                f"not this branch's {self.settings.mer_id!r}"
            )
        try:
            event = self._event(fields)
        except ValueError as exc:
            logger.warning("unionpay notification for branch %s rejected: %s", self.branch, exc)
            raise NotificationRejected(str(exc)) from None
        if event is None:
            logger.info(
                "unionpay notification for branch %s: txnType %s respCode %s, nothing to apply",
                self.branch,
                fields["txnType"],
                fields["respCode"],
            )
        return event

    def _notification_fields(self, request: NotificationRequest) -> dict[str, str]:
        if request.method.upper() != "POST":
            raise NotificationRejected("not a POST")
        if len(request.body) > MAX_NOTIFICATION_BYTES:
            raise NotificationRejected("body larger than 64 KiB")
        try:
            pairs = parse_qsl(
                request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=True
            )
        except (UnicodeDecodeError, ValueError):
            raise NotificationRejected("malformed body: not a UTF-8 form") from None
        fields = dict(pairs)
        if len(fields) != len(pairs):
            raise NotificationRejected("malformed body: a field appears twice")
        missing = [name for name in _REQUIRED_NOTIFICATION_FIELDS if not fields.get(name)]
        if missing:
            raise NotificationRejected(f"malformed body: missing {', '.join(missing)}")
        if fields["version"] != message.VERSION:
            raise NotificationRejected("version is not 5.1.0")
        return fields

    def _event(self, fields: dict[str, str]) -> ProviderEvent | None:
        """The fact a verified notification or query answer reports, if any."""
        txn_type = fields["txnType"]
        if txn_type not in (TXN_CONSUME, TXN_REFUND, TXN_VOID):
            return None
        code = fields.get("origRespCode") or fields["respCode"]
        if code in RESP_IN_DOUBT:
            return None
        if fields.get("currencyCode", message.CURRENCY_CNY) != message.CURRENCY_CNY:
            raise ValueError("currencyCode is not 156 (CNY)")
        amount_fen = message.parse_fen(fields["txnAmt"])
        txn_time = message.parse_beijing_time(fields["txnTime"])
        query_id = fields.get("queryId") or ""
        event_id = f"unionpay:{fields['merId']}:{txn_type}:" + (
            query_id or f"{fields['orderId']}:{fields['txnTime']}"
        )
        detail = {
            name: fields[name]
            for name in (
                "txnType",
                "respCode",
                "respMsg",
                "queryId",
                "txnTime",
                "settleDate",
                "traceNo",
            )
            if fields.get(name)
        }
        if txn_type == TXN_CONSUME:
            kind = EventKind.PAYMENT_SUCCEEDED if code == RESP_OK else EventKind.PAYMENT_FAILED
            out_trade_no, out_refund_no = fields["orderId"], None
        else:
            # A refund names its payment only through reqReserved, which we fill;
            # one started elsewhere (the merchant console) cannot be matched here.
            out_trade_no, out_refund_no = fields.get("reqReserved", ""), fields["orderId"]
            if not out_trade_no:
                return None
            kind = EventKind.REFUND_SUCCEEDED if code == RESP_OK else EventKind.REFUND_FAILED
        return ProviderEvent(
            kind=kind,
            event_id=event_id,
            out_trade_no=out_trade_no,
            amount_fen=amount_fen,
            currency="CNY",
            occurred_at=_occurred_at(fields.get("traceTime", ""), txn_time),
            provider_trade_no=query_id or None,
            out_refund_no=out_refund_no,
            detail=detail,
        )

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        # UnionPay takes HTTP 200 as receipt and re-delivers on anything else.
        if accepted:
            return NotificationReply(status_code=200, body=b"ok")
        return NotificationReply(status_code=400, body=b"fail")

    # --- query, refund, close -------------------------------------------------------

    async def _query(self, order_id: str, txn_time: str) -> dict[str, str]:
        # A query names no channel; empty fields are left out of the request.
        fields = self._base_fields(TXN_QUERY, "00", BIZ_GATEWAY_PAY, "")
        fields |= {"orderId": order_id, "txnTime": txn_time}
        return await self._call(QUERY_PATH, fields, repeatable=True, retry_codes=RESP_IN_DOUBT)

    async def query(self, out_trade_no: str) -> QueryResult:
        txn_time = txn_time_of(out_trade_no)
        if txn_time is None:
            # Such a number is refused at create, so the gateway cannot know it.
            return QueryResult(state=AttemptState.UNKNOWN)
        answer = await self._query(out_trade_no, txn_time)
        # UnionPay has no close call to ask about later: branchpay's store remembers
        # the attempts closed here, for every process and across restarts.
        closed = await self.marks.has(self._closed_mark(out_trade_no))
        code = answer.get("respCode", "")
        if code == RESP_NOT_FOUND:
            return QueryResult(state=AttemptState.CLOSED if closed else AttemptState.UNKNOWN)
        if code != RESP_OK:
            raise GatewayError(f"UnionPay could not query: {code} {answer.get('respMsg', '')}")
        orig = answer.get("origRespCode", "")
        if orig in RESP_IN_DOUBT:
            return QueryResult(state=AttemptState.CLOSED if closed else AttemptState.PENDING)
        try:
            event = self._event(answer)
        except ValueError as exc:
            raise GatewayError(f"UnionPay's query answer is unusable: {exc}") from None
        state = AttemptState.SUCCEEDED if orig == RESP_OK else AttemptState.FAILED
        return QueryResult(
            state=state,
            provider_trade_no=answer.get("queryId") or None,
            amount_fen=event.amount_fen if event else None,
            events=(event,) if event else (),
        )

    async def refund(self, request: RefundRequest) -> RefundResult:
        if request.currency != "CNY":
            raise GatewayError("UnionPay refunds are in CNY only")
        if not 1 <= request.refund_fen <= request.total_fen:
            return RefundResult(state=RefundState.FAILED, message="refund exceeds the paid amount")
        if not _valid_order_id(request.out_refund_no):
            raise GatewayError("the refund orderId must be 8..40 letters and digits")
        paid_txn_time = txn_time_of(request.out_trade_no)
        txn_time = txn_time_of(request.out_refund_no)
        if paid_txn_time is None or txn_time is None:
            raise GatewayError(
                "UnionPay needs out_trade_no and out_refund_no to start with their 12-digit UTC "
                "creation time (YYMMDDhhmmss): it is each transaction's txnTime"
            )
        paid = await self.query(request.out_trade_no)
        if paid.state is not AttemptState.SUCCEEDED or not paid.provider_trade_no:
            return RefundResult(
                state=RefundState.FAILED, message=f"the attempt is {paid.state.value}, not paid"
            )
        # A full refund inside the payment's settlement day is a void (消费撤销):
        # instant and free of fees. The gateway takes a void only on that day,
        # and an automatic refund's number carries its attempt's time, so today
        # must be that day too. A repeat on a later day sends a 退货 under the
        # same orderId, which the gateway refuses as a duplicate (respCode 12);
        # the refund already made is then queried, never made twice.
        payment_day = message.settlement_day(paid_txn_time)
        today = message.settlement_day(message.beijing_time(datetime.now(UTC)))
        void = (
            message.settlement_day(txn_time) == payment_day == today
            and request.refund_fen == paid.amount_fen
        )
        fields = self._base_fields(
            TXN_VOID if void else TXN_REFUND, "00", BIZ_GATEWAY_PAY, CHANNEL_PC
        )
        fields |= {
            "orderId": request.out_refund_no,
            "txnTime": txn_time,
            "txnAmt": message.format_fen(request.refund_fen),
            "currencyCode": message.CURRENCY_CNY,
            "origQryId": paid.provider_trade_no,
            "backUrl": request.notify_url or "",
            "reqReserved": request.out_trade_no,
        }
        answer = await self._call(BACK_PATH, fields, repeatable=True)
        code = answer.get("respCode", "")
        if code == RESP_OK:
            return RefundResult(
                state=RefundState.PENDING, provider_refund_no=answer.get("queryId") or None
            )
        if code == RESP_DUPLICATE or code in RESP_IN_DOUBT:
            return await self._refund_state(request.out_refund_no, txn_time)
        return RefundResult(
            state=RefundState.FAILED, message=f"{code} {answer.get('respMsg', '')}".strip()
        )

    async def _refund_state(self, out_refund_no: str, txn_time: str) -> RefundResult:
        answer = await self._query(out_refund_no, txn_time)
        code = answer.get("respCode", "")
        if code == RESP_NOT_FOUND:
            return RefundResult(state=RefundState.PENDING, message="submitted; not visible yet")
        if code != RESP_OK:
            raise GatewayError(f"UnionPay could not query the refund: {code}")
        return _refund_result(answer)

    # --- payment codes at the counter ------------------------------------------------

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        """The consume with the payer's code (txnType 01, txnSubType 06, ``qrNo``), sent once.

        ``respCode=00`` with ``origRespCode=00`` is paid; ``00`` alone (accepted),
        ``03``/``04``/``05`` or an ``origRespCode`` in doubt is PENDING (branchpay
        queries, then reverses); ``12`` (the gateway has this orderId already) is
        answered by a query; any other code is a refusal: FAILED, nothing taken.
        The code is never logged, put in an error or kept.
        """
        if not request.auth_code:
            raise GatewayError("a PAYMENT_CODE sale needs the scanned auth_code")
        if self.payment_code_pattern is None or not self.payment_code_pattern.fullmatch(
            request.auth_code
        ):
            raise GatewayError("the scanned code is not a UnionPay payment code (62 + 17 digits)")
        if request.currency != "CNY":
            raise GatewayError("UnionPay payments are in CNY only")
        txn_time = txn_time_of(request.out_trade_no)
        if not _valid_order_id(request.out_trade_no) or txn_time is None:
            raise GatewayError(
                "UnionPay needs an orderId of 8..40 letters and digits that starts with its "
                "12-digit UTC creation time (YYMMDDhhmmss): it is the transaction's txnTime"
            )
        fields = self._base_fields(TXN_CONSUME, TXN_SUB_CODE, BIZ_QR, CHANNEL_MOBILE)
        fields |= {
            "orderId": request.out_trade_no,
            "txnTime": txn_time,
            "txnAmt": message.format_fen(request.amount_fen),
            "currencyCode": message.CURRENCY_CNY,
            "qrNo": request.auth_code,
            "backUrl": request.notify_url,
        }
        answer = await self._call(BACK_PATH, fields, repeatable=False)
        code = answer.get("respCode", "")
        orig = answer.get("origRespCode", "")
        if code == RESP_DUPLICATE:
            # UnionPay has this sale already (sent before): its state, never a second charge.
            try:
                queried = await self.query(request.out_trade_no)
            except GatewayError as exc:
                raise GatewayError(
                    f"UnionPay has the sale already and could not be queried: {exc}",
                    retryable=True,
                    outcome_unknown=True,
                ) from None
            if queried.state is AttemptState.UNKNOWN:
                return QueryResult(state=AttemptState.PENDING)
            return queried
        if code in RESP_IN_DOUBT or (code == RESP_OK and (not orig or orig in RESP_IN_DOUBT)):
            # Accepted, not final: the payer confirms on the phone.
            return QueryResult(
                state=AttemptState.PENDING, provider_trade_no=answer.get("queryId") or None
            )
        if code == RESP_OK and orig == RESP_OK:
            try:
                event = self._event(answer)
            except ValueError as exc:
                raise GatewayError(
                    f"UnionPay's answer is unusable: {exc}", outcome_unknown=True
                ) from None
            if event is None or event.kind is not EventKind.PAYMENT_SUCCEEDED:
                raise GatewayError("UnionPay's paid answer names no payment", outcome_unknown=True)
            return QueryResult(
                state=AttemptState.SUCCEEDED,
                provider_trade_no=event.provider_trade_no,
                amount_fen=event.amount_fen,
                events=(event,),
            )
        logger.info(
            "unionpay code sale %s refused: respCode %s origRespCode %s",
            request.out_trade_no,
            code,
            orig or "-",
        )
        return QueryResult(state=AttemptState.FAILED)

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        """Void a counter sale with a 消费撤销 (txnType 31, ``origQryId``) of the full amount.

        The sale is queried first: not found or failed, nothing was taken
        (DONE); pending or paid, the cancel is sent under the orderId
        ``<out_trade_no>rv`` and the sale's txnTime, so a repeat is refused as
        a duplicate (respCode 12) and the cancel itself is queried. A paid
        sale past its settlement day cannot be cancelled (respCode 39): PAID.
        """
        txn_time = txn_time_of(out_trade_no)
        if txn_time is None:
            return ReverseResult(ReverseState.DONE, message="never sent: nothing taken")
        answer = await self._query(out_trade_no, txn_time)
        code = answer.get("respCode", "")
        if code == RESP_NOT_FOUND:
            return ReverseResult(ReverseState.DONE, message="UnionPay has no such sale")
        if code != RESP_OK:
            raise GatewayError(f"UnionPay could not query: {code} {answer.get('respMsg', '')}")
        orig = answer.get("origRespCode", "")
        if orig != RESP_OK and orig not in RESP_IN_DOUBT:
            return ReverseResult(ReverseState.DONE, message=f"not paid ({orig}): nothing taken")
        query_id = answer.get("queryId", "")
        if not query_id:
            return ReverseResult(ReverseState.RETRY, message="no queryId to cancel yet")
        cancel_no = _cancel_number(out_trade_no)
        fields = self._base_fields(TXN_VOID, "00", BIZ_QR, CHANNEL_MOBILE)
        fields |= {
            "orderId": cancel_no,
            "txnTime": txn_time,
            "txnAmt": answer.get("txnAmt", ""),
            "currencyCode": message.CURRENCY_CNY,
            "origQryId": query_id,
            "reqReserved": out_trade_no,
        }
        cancelled = await self._call(BACK_PATH, fields, repeatable=True)
        code = cancelled.get("respCode", "")
        if code == RESP_OK:
            return ReverseResult(ReverseState.DONE, message="cancelled")
        if code == RESP_DUPLICATE:
            state = await self._query(cancel_no, txn_time)
            if state.get("respCode") == RESP_OK and state.get("origRespCode") == RESP_OK:
                return ReverseResult(ReverseState.DONE, message="cancelled")
            return ReverseResult(ReverseState.RETRY, message="the cancel is not final yet")
        if code in RESP_IN_DOUBT:
            return ReverseResult(ReverseState.RETRY, message=f"respCode {code}")
        if orig == RESP_OK:
            # UnionPay keeps the paid sale (e.g. past its settlement day): so do we.
            return ReverseResult(ReverseState.PAID, message=f"not cancelled: {code}")
        return ReverseResult(ReverseState.RETRY, message=f"not cancelled yet: {code}")

    async def close(self, out_trade_no: str) -> None:
        if txn_time_of(out_trade_no) is None:
            logger.info("unionpay close of %s: never opened here, nothing to close", out_trade_no)
            return
        result = await self.query(out_trade_no)
        if result.state is AttemptState.SUCCEEDED:
            raise GatewayError("the attempt is paid; refund it instead of closing it")
        await self.marks.add(self._closed_mark(out_trade_no))

    def _closed_mark(self, out_trade_no: str) -> str:
        return f"closed:{self.settings.mer_id}:{out_trade_no}"

    # --- daily bills --------------------------------------------------------------

    async def download_bill(self, day: date, destination: BinaryIO) -> None:
        now = datetime.now(UTC)
        today = beijing_day(now)
        if day > today:
            raise BillUnavailable(
                f"UnionPay has no bill of {day} yet: the day has not come (Beijing time)",
                reason=BillUnavailableReason.NOT_READY,
            )
        if not bills.most_recent(day, today):
            raise BillUnavailable(
                f"UnionPay names a settle date by month and day only: {day:%m%d} asks for "
                f"{bills.settle_day(f'{day:%m%d}', today)}, so the bill of {day} cannot be had",
                reason=BillUnavailableReason.NO_BILL,
            )
        fields = self._base_fields(TXN_FILE_TRANSFER, "01", BIZ_QR, "")
        fields |= {
            "txnTime": message.beijing_time(now),
            "settleDate": f"{day:%m%d}",
            "fileType": "00",
        }
        body = urlencode(self._signed(fields)).encode("utf-8")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            answer = await call_gateway(
                lambda: self._fetch_file(body, fields, spool),
                settings=self.settings,
                operation="UnionPay file transfer",
                repeatable=True,
                changes_state=False,
                logger=logger,
            )
            code, text = answer.get("respCode", ""), answer.get("respMsg", "")
            if code == RESP_NO_FILE:
                raise BillUnavailable(
                    f"UnionPay has no bill of {day}: {code} {text}".strip(),
                    reason=BillUnavailableReason.NO_BILL,
                )
            if code == RESP_NOT_GENERATED:
                raise BillUnavailable(
                    f"UnionPay has not generated the bill of {day} yet: {code} {text}".strip(),
                    reason=BillUnavailableReason.NOT_READY,
                )
            if code != RESP_OK:
                raise GatewayError(f"UnionPay refused the file transfer: {code} {text}".strip())
            if spool.seek(0, 2) == 0:
                raise BillRejected("UnionPay's file transfer answer has no fileContent")
            _inflate(spool, destination)

    async def _fetch_file(
        self, body: bytes, sent: dict[str, str], spool: IO[bytes]
    ) -> dict[str, str]:
        """One try of the file transfer: the verified answer, ``fileContent`` left in ``spool``."""
        spool.seek(0)
        spool.truncate()
        url = self.settings.file_transfer_url
        async with self.http.stream(
            "POST",
            url,
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded;charset=UTF-8"},
            timeout=self.settings.timeout_seconds,
        ) as response:
            if response.status_code >= 500:
                head = b""
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if head.strip():
                        break
                if not head.strip():
                    raise GatewayError(
                        "UnionPay answered the file transfer with HTTP 500 and no body: this "
                        "merId has no file transfer permission (test and self-service merIds "
                        "never have it)"
                    )
                raise TransientFailure(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise GatewayError(f"UnionPay answered HTTP {response.status_code}")
            reader = _StreamedAnswer(FILE_CONTENT, spool)
            try:
                async for chunk in response.aiter_bytes():
                    reader.feed(chunk)
                fields = reader.close()
            except ValueError as exc:
                logger.error("unionpay file transfer: answer rejected: %s", exc)
                raise GatewayError(f"UnionPay's answer is malformed: {exc}") from None
        try:
            digest = (
                message.canonical_digest(fields, {FILE_CONTENT: lambda: _chunks(spool)})
                if reader.spooled
                else None
            )
            self._verify_platform(fields, digest_hex=digest)
        except (ValueError, message.SignatureInvalid) as exc:
            logger.error("unionpay file transfer: answer rejected: %s", exc)
            raise GatewayError(f"UnionPay's answer failed verification: {exc}") from None
        if "merId" in fields and fields["merId"] != sent["merId"]:
            # Another merchant's file: refused like a file naming another merchant.
            logger.error("unionpay file transfer: answer names another merchant")
            raise BillRejected("UnionPay's file transfer answer is another merchant's (merId)")
        for name in ("txnTime", "settleDate"):
            if name in fields and fields[name] != sent[name]:
                logger.error("unionpay file transfer: answer names another %s", name)
                raise GatewayError(f"UnionPay's answer names another {name}")
        return fields

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        return bills.read_bill(source, self.settings.mer_id)


class _StreamedAnswer:
    """A gateway answer (``k=v&k=v``, no URL-encoding) parsed as its bytes arrive.

    Like :func:`message.parse_response`: a key ends at the first ``=``, a value
    at an ``&`` outside ``{...}`` / ``[...]``. The value of ``spooled_name`` (a
    Base64 text, which holds no ``&``) goes to ``spool`` instead of memory;
    the other fields together are bounded by :data:`MAX_ANSWER_FIELDS_BYTES`.
    """

    def __init__(self, spooled_name: str, spool: IO[bytes]) -> None:
        self.spooled_name = spooled_name.encode("ascii")
        self.spool = spool
        self.spooled = False
        self.fields: dict[str, str] = {}
        self._key = bytearray()
        self._value = bytearray()
        self._in_key = True
        self._spooling = False
        self._closer = 0
        self._held = b""  # whitespace at the spooled value's end, kept back until more comes
        self._size = 0
        self._started = False

    def feed(self, chunk: bytes) -> None:
        if not self._started:
            chunk = chunk.lstrip()
            self._started = bool(chunk)
        position = 0
        while position < len(chunk):
            if self._in_key:
                end = chunk.find(b"=", position)
                piece = chunk[position:] if end < 0 else chunk[position:end]
                self._grow(len(piece))
                self._key += piece
                if end < 0:
                    return
                self._in_key = False
                self._spooling = bytes(self._key) == self.spooled_name
                position = end + 1
            elif self._spooling:
                end = chunk.find(b"&", position)
                self._spool_write(chunk[position:] if end < 0 else chunk[position:end])
                if end < 0:
                    return
                self.spool.write(self._held)
                self._held = b""
                self._finish()
                position = end + 1
            else:
                byte = chunk[position]
                position += 1
                if self._closer:
                    if byte == self._closer:
                        self._closer = 0
                elif byte == ord("{"):
                    self._closer = ord("}")
                elif byte == ord("["):
                    self._closer = ord("]")
                if byte == ord("&") and not self._closer:
                    self._finish()
                else:
                    self._grow(1)
                    self._value.append(byte)

    def close(self) -> dict[str, str]:
        if self._in_key:
            if self._key.strip():
                raise ValueError("answer ends with a field that has no '='")
            return self.fields
        if not self._spooling:
            self._value = bytearray(self._value.rstrip())
        self._held = b""
        self._finish()
        return self.fields

    def _spool_write(self, data: bytes) -> None:
        data = self._held + data
        kept = data.rstrip()
        self._held = data[len(kept) :]
        self.spool.write(kept)

    def _grow(self, size: int) -> None:
        self._size += size
        if self._size > MAX_ANSWER_FIELDS_BYTES:
            raise ValueError("the answer's fields are larger than UnionPay sends")

    def _finish(self) -> None:
        try:
            key = self._key.decode("utf-8")
            value = "" if self._spooling else self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the answer is not UTF-8") from None
        if self._spooling:
            self.spooled = True
        self.fields[key] = value
        self._key, self._value = bytearray(), bytearray()
        self._in_key, self._spooling, self._closer = True, False, 0


def _chunks(spool: IO[bytes]) -> Iterator[bytes]:
    spool.seek(0)
    while chunk := spool.read(CHUNK_BYTES):
        yield chunk


def _inflate(spool: IO[bytes], destination: BinaryIO) -> None:
    """fileContent (Base64 of zlib-deflated bytes) from ``spool`` into ``destination``, in chunks.

    Output is taken at most :data:`CHUNK_BYTES` at a time from the inflater,
    so a highly compressed file never sits whole in memory.
    """
    inflater = zlib.decompressobj()
    carry = b""
    try:
        for chunk in _chunks(spool):
            data = carry + chunk.translate(None, b" \t\r\n")
            usable = len(data) - len(data) % 4
            carry = data[usable:]
            pending = base64.b64decode(data[:usable], validate=True)
            while pending:
                destination.write(inflater.decompress(pending, CHUNK_BYTES))
                pending = inflater.unconsumed_tail
        if carry:
            raise BillRejected("UnionPay's fileContent is not Base64 (its length)")
        destination.write(inflater.flush())
    except binascii.Error:
        raise BillRejected("UnionPay's fileContent is not Base64") from None
    except zlib.error as exc:
        raise BillRejected(f"UnionPay's fileContent does not inflate: {exc}") from None
    if not inflater.eof:
        raise BillRejected("UnionPay's fileContent is cut short")


def _cancel_number(out_trade_no: str) -> str:
    """The orderId of a counter sale's cancel: one per sale, so a repeat is a duplicate."""
    return f"{out_trade_no}rv"


def _valid_order_id(number: str) -> bool:
    """UnionPay's orderId: 8 to 40 ASCII letters and digits."""
    return 8 <= len(number) <= 40 and number.isascii() and number.isalnum()


def _refund_result(answer: dict[str, str]) -> RefundResult:
    """A refund's state from a successful query of it."""
    orig = answer.get("origRespCode", "")
    query_id = answer.get("queryId") or None
    if orig == RESP_OK:
        return RefundResult(state=RefundState.SUCCEEDED, provider_refund_no=query_id)
    if orig in RESP_IN_DOUBT:
        return RefundResult(state=RefundState.PENDING, provider_refund_no=query_id)
    return RefundResult(
        state=RefundState.FAILED, message=f"{orig} {answer.get('origRespMsg', '')}".strip()
    )


def _occurred_at(trace_time: str, txn_time: datetime) -> datetime:
    """When UnionPay settled it: traceTime (MMDDhhmmss, Beijing) in the year of txnTime.

    Falls back to txnTime when traceTime is missing or unreadable.
    """
    if len(trace_time) != 10 or not trace_time.isdigit():
        return txn_time
    local_year = txn_time.astimezone(BEIJING).year
    try:
        moment = message.parse_beijing_time(f"{local_year}{trace_time}")
    except ValueError:
        return txn_time
    # An order opened on 31 December and paid on 1 January.
    if moment < txn_time - timedelta(days=1):
        moment = message.parse_beijing_time(f"{local_year + 1}{trace_time}")
    return moment
