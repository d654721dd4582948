"""A UnionPay ACP 5.1.0 gateway on loopback, for tests and the demo.

It checks requests the way the gateway does (merchant signature against the
certificate named by ``certId``, required fields, ``txnAmt`` in fen, currency
156, one ``orderId`` per merchant, refunds within the paid amount, voids only
in full and on the payment's settlement day), answers in
the gateway's ``k=v&k=v`` format signed with the platform's key and carrying
``signPubKeyCert``, and sends signed back notifications to ``backUrl``.

Endpoints the adapter calls: ``/gateway/api/{frontTransReq,appTransReq,
backTransReq,queryTrans}.do``. The payer's side: ``GET /pay/{tn}`` shows a pay
page, ``POST /pay/{tn}`` with ``outcome=success|fail|close`` settles it
(success sends the back notification, unless ``deliver=0``, and, for a
browser, posts the front notification to ``frontUrl``). UnionPay notifies successes only.

Payment codes at the counter (被扫: the merchant scans the payer's 云闪付 code):
``backTransReq.do`` with ``txnType=01 txnSubType=06 bizType=000000`` and the
code as ``qrNo``. A UnionPay code is 19 digits, ``62`` then 17 digits; the
simulator reads the payer's behaviour from its last digit:

- ``1``: paid at once: ``respCode=00`` with ``origRespCode=00``, ``queryId``
  and the paid fields; the back notification goes to ``backUrl``;
- ``2``: the payer confirms on the phone: ``respCode=00`` (accepted, not
  paid, with ``queryId``); the first 2 queries answer ``origRespCode=05``
  (交易处理中), the 3rd finds it paid, and the simulator then sends the back
  notification to ``backUrl``;
- ``3``: the payer never confirms: ``origRespCode=05`` until cancelled;
- any other digit: declined, ``respCode=01`` (nothing is taken).

A code that is not 62 + 17 digits is refused (``respCode=10``), a code used
before is refused (``respCode=01`` 付款码已使用; only a digest of each code is
kept), and the same ``orderId`` again is a duplicate (``respCode=12``). A
消费撤销 (``txnType=31 txnSubType=00``, ``origQryId`` = the sale's
``queryId``, the full ``txnAmt``; ``backUrl`` optional for ``bizType=000000``)
of a sale still pending cancels it (the payer's confirm can no longer take
anything; a query answers ``origRespCode=01`` 交易已撤销); of a paid sale it
returns the money, on the sale's settlement day only (``respCode=39`` after).

Controls for tests and the demo:

- ``GET /control/notifications/{orderId}?index=-1``: a notification's body, not sent;
- ``POST /control/notifications/{orderId}/redeliver`` (form ``count``, ``delay``,
  ``index``): send it again, several times, later, or an older one (out of order);
- ``POST /control/faults`` (JSON ``endpoint``, ``mode``
  error|stall|lost_answer|bad_signature, ``count``): make the next calls of an
  endpoint fail;
- ``POST /control/notifications/resign`` (JSON ``body``: a notification the
  simulator made, form-encoded; and any of ``txnAmt``, ``merId``, ``orderId``):
  that notification with those fields changed, signed anew with UnionPay's
  genuine key (for the checks after the signature); 404 for a body it never made;
- ``GET /control/transactions/{orderId}``: the simulator's view, as JSON;
- ``GET /control/transactions/{orderId}/taken``: the ledger of a consume,
  ``{"orderId", "takenFen"}``: paid minus refunded or cancelled (0 if never paid);
- ``POST /control/transactions/{orderId}/confirm`` (form ``deliver=0`` to keep
  the notification): the payer of a pending payment-code sale confirms now;
  409 once the sale is cancelled (a late confirm takes nothing);
- the bill controls of :func:`providers.kit.bills.bill_routes` under ``/control``
  (``GET``/``PUT /control/bills``, ``POST``/``DELETE /control/bills/adjustments``).

Daily bills: every payment and refund that succeeds is recorded in a
:class:`~providers.kit.bills.BillBook` (fees at its rate), and ``POST /``
answers the file transfer (文件传输类交易, ``txnType=76``), as UnionPay's
``filedownload.95516.com`` does: a signed form, checked like every back-end
request (signature, ``accessType=0``, ``txnTime`` the current Beijing time
within ten minutes), ``settleDate`` MMDD naming the most recent such day not
after today (Beijing), ``fileType=00``. The answer is signed, ``k=v&``, with
``fileName`` and ``fileContent`` = Base64(zlib(ZIP)) holding the ZM file and
the RD report of that day (see :mod:`providers.unionpay.bills`). The settle
day is the Beijing calendar day (the real platform cuts its day at 23:00; a
``retime`` adjustment moves a line to another day). A day with nothing on it
answers ``respCode=98`` (文件不存在); a day not published yet (today, unless
``publish_current_day``; yesterday before the book's publish hour) answers
``respCode=99`` with respMsg 对账文件尚未生成 (not generated yet, ask again later).
The fault mode ``denied`` answers HTTP 500 with an empty body, as UnionPay
answers a merId without file transfer permission.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import itertools
import logging
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from api.plugin import BEIJING
from providers.kit.bills import BillBook, BillEntry, beijing_today, bill_routes
from providers.kit.driver import CODE_BEHAVIOURS
from providers.kit.simulator import Fault, FaultQueue, Notifier, control_routes, page, pay_page
from providers.unionpay import bills, message

logger = logging.getLogger("branchpay.providers.unionpay.simulator")

ENDPOINTS = (
    "frontTransReq.do",
    "appTransReq.do",
    "backTransReq.do",
    "queryTrans.do",
    "fileTransfer",
)
DELIVERY_TRIES = 3
# error: HTTP 500 before doing anything; stall: the same, after stall_seconds;
# lost_answer: the request is carried out, then HTTP 500 instead of its answer;
# bad_signature: the answer is altered after signing; denied: HTTP 500 with an empty
# body (what UnionPay answers a merId without file transfer permission).
FAULT_MODES = frozenset({"error", "stall", "lost_answer", "bad_signature", "denied"})
AFTER_PROCESSING = frozenset({"lost_answer", "bad_signature"})
# Required in every consume, refund and void.
TRANSACTION_FIELDS = (
    "txnType",
    "txnSubType",
    "bizType",
    "channelType",
    "orderId",
    "txnTime",
    "txnAmt",
    "currencyCode",
    "backUrl",
)
FILE_TRANSFER_FIELDS = ("txnType", "txnSubType", "bizType", "txnTime", "settleDate", "fileType")
# How far a file transfer's txnTime may be from the simulator's clock.
TXN_TIME_TOLERANCE = timedelta(minutes=10)
RESP_NO_FILE = ("98", "文件不存在")
RESP_NOT_GENERATED = ("99", "对账文件尚未生成\N{FULLWIDTH COMMA}请稍后再试")
MERCHANT_NAME = "branchpay模拟商户"
# A UnionPay payment code (云闪付 付款码): 62 and 17 digits; here its last digit is the
# payer's behaviour.
PAYMENT_CODE = re.compile(r"62\d{17}")
# A "confirm" payer: the consume and this many queries find it pending, the next one paid.
CONFIRMING_QUERIES = 2
# What /control/notifications/resign may change in a notification it made.
RESIGNABLE = ("txnAmt", "merId", "orderId")


class Refused(Exception):
    """A request the gateway turns down with ``respCode``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass
class Transaction:
    mer_id: str
    order_id: str
    txn_time: str
    txn_type: str
    txn_sub_type: str
    biz_type: str
    amount_fen: int
    back_url: str
    front_url: str = ""
    pay_timeout: str = ""
    req_reserved: str = ""
    status: str = "pending"  # pending | success | failed | abandoned | cancelled
    tn: str = ""
    query_id: str = ""
    trace_no: str = ""
    trace_time: str = ""
    settle_date: str = ""
    original: Transaction | None = None
    refunded_fen: int = 0
    # A payment-code sale (txnSubType 06): what the payer does, and queries left to confirm.
    code_behaviour: str = ""
    confirming_queries: int = 0
    notifications: list[dict[str, str]] = field(default_factory=list)
    deliveries: list[int | None] = field(default_factory=list)


class Gateway:
    """The simulator's state and behaviour, behind the HTTP routes."""

    def __init__(
        self,
        sign_key: RSAPrivateKey,
        sign_cert: x509.Certificate,
        merchants: Mapping[str, x509.Certificate],
        delivery_backoff: float,
        publish_current_day: bool | None = None,
    ) -> None:
        self.delivery_backoff = delivery_backoff
        self.book = BillBook(publish_current_day=publish_current_day)
        self.sign_key = sign_key
        self.sign_cert_pem = sign_cert.public_bytes(Encoding.PEM).decode("ascii")
        self.merchants = dict(merchants)
        self.transactions: dict[tuple[str, str], Transaction] = {}
        self.by_tn: dict[str, Transaction] = {}
        # Digests of the payment codes taken (codes are one-time; the code itself is not kept).
        self.used_codes: set[str] = set()
        self.faults = FaultQueue(one_per_target=True)
        # UnionPay takes HTTP 200 as receipt; its 1, 2, 4, 5 minute schedule, shortened.
        self.notifier = Notifier(
            retry_delays=[delivery_backoff * 2**n for n in range(DELIVERY_TRIES - 1)],
            accept=lambda response: response.status_code == 200,
            timeout=5.0,
        )
        self._serial = itertools.count(1)

    # --- signing --------------------------------------------------------------------

    def signed(self, fields: dict[str, str]) -> dict[str, str]:
        out = {
            "version": message.VERSION,
            "encoding": "UTF-8",
            "signMethod": message.SIGN_METHOD_RSA,
            **fields,
            "signPubKeyCert": self.sign_cert_pem,
        }
        out["signature"] = message.sign(out, self.sign_key)
        return out

    def next_number(self) -> str:
        """A 21-digit tn or queryId: the Beijing second, then digits no restart repeats."""
        stamp = datetime.now(BEIJING).strftime("%y%m%d%H%M%S")
        return f"{stamp}{next(self._serial) % 1000:03d}{secrets.randbelow(10**6):06d}"

    # --- request validation ----------------------------------------------------------

    def check(self, fields: dict[str, str], required: tuple[str, ...]) -> None:
        """The gateway's checks common to every request."""
        for name in ("version", "encoding", "signMethod", "certId", "merId", "signature"):
            if not fields.get(name):
                raise Refused("13", f"{name} missing")
        if fields["version"] != message.VERSION:
            raise Refused("10", "version must be 5.1.0")
        if fields["signMethod"] != message.SIGN_METHOD_RSA:
            raise Refused("10", "signMethod must be 01")
        cert = self.merchants.get(fields["merId"])
        if cert is None:
            raise Refused("31", "unknown merId")
        if fields["certId"] != message.cert_id(cert):
            raise Refused("11", "certId is not the merchant's signing certificate")
        public = cert.public_key()
        assert isinstance(public, RSAPublicKey)
        try:
            message.verify(fields, public)
        except message.SignatureInvalid as exc:
            raise Refused("11", f"验证签名失败: {exc}") from None
        for name in required:
            if not fields.get(name):
                raise Refused("13", f"{name} missing")
        if fields.get("accessType") != "0":
            raise Refused("10", "accessType must be 0")
        order_id = fields.get("orderId", "")
        if "orderId" in required and not (
            8 <= len(order_id) <= 40 and order_id.isascii() and order_id.isalnum()
        ):
            raise Refused("10", "orderId must be 8..40 letters and digits")
        try:
            message.parse_beijing_time(fields.get("txnTime", ""))
        except ValueError:
            raise Refused("10", "txnTime must be YYYYMMDDhhmmss") from None
        if "txnAmt" in required:
            try:
                message.parse_fen(fields["txnAmt"])
            except ValueError:
                raise Refused("10", "txnAmt must be 1..12 digits of fen") from None
            if int(fields["txnAmt"]) == 0:
                raise Refused("10", "txnAmt must be positive")
        if "currencyCode" in required and fields["currencyCode"] != message.CURRENCY_CNY:
            raise Refused("10", "currencyCode must be 156")

    def register(self, fields: dict[str, str], **extra: Any) -> Transaction:
        key = (fields["merId"], fields["orderId"])
        if key in self.transactions:
            raise Refused("12", "重复交易")
        txn = Transaction(
            mer_id=fields["merId"],
            order_id=fields["orderId"],
            txn_time=fields["txnTime"],
            txn_type=fields["txnType"],
            txn_sub_type=fields["txnSubType"],
            biz_type=fields["bizType"],
            amount_fen=int(fields["txnAmt"]),
            back_url=fields.get("backUrl", ""),
            front_url=fields.get("frontUrl", ""),
            pay_timeout=fields.get("payTimeout", ""),
            req_reserved=fields.get("reqReserved", ""),
            **extra,
        )
        self.transactions[key] = txn
        return txn

    def consume(self, fields: dict[str, str], channels: tuple[str, ...]) -> Transaction:
        self.check(fields, TRANSACTION_FIELDS)
        if (fields["txnType"], fields["txnSubType"], fields["bizType"]) != ("01", "01", "000201"):
            raise Refused("10", "not a consume (txnType 01, txnSubType 01, bizType 000201)")
        if fields["channelType"] not in channels:
            raise Refused("10", "channelType not allowed here")
        if fields.get("payTimeout"):
            try:
                message.parse_beijing_time(fields["payTimeout"])
            except ValueError:
                raise Refused("10", "payTimeout must be YYYYMMDDhhmmss") from None
        txn = self.register(fields, tn=self.next_number())
        self.by_tn[txn.tn] = txn
        return txn

    def qr_consume(self, fields: dict[str, str], base_url: str) -> dict[str, str]:
        self.check(fields, TRANSACTION_FIELDS)
        if (fields["txnSubType"], fields["bizType"]) != ("07", "000000"):
            raise Refused("10", "a QR consume is txnSubType 07, bizType 000000")
        txn = self.register(fields, tn=self.next_number())
        self.by_tn[txn.tn] = txn
        return {"respCode": "00", "respMsg": "成功", "qrCode": f"{base_url}/pay/{txn.tn}"}

    def code_consume(self, fields: dict[str, str]) -> dict[str, str]:
        """A consume with the payer's payment code (被扫, txnSubType 06): the synchronous answer.

        The payer's behaviour is the code's last digit (see the module docstring).
        """
        self.check(fields, (*TRANSACTION_FIELDS, "qrNo"))
        if (fields["txnSubType"], fields["bizType"]) != ("06", "000000"):
            raise Refused("10", "a payment-code consume is txnSubType 06, bizType 000000")
        code = fields["qrNo"]
        if not PAYMENT_CODE.fullmatch(code):
            raise Refused("10", "qrNo is not a UnionPay payment code")
        if (fields["merId"], fields["orderId"]) in self.transactions:
            raise Refused("12", "重复交易")
        digest = hashlib.sha256(code.encode()).hexdigest()
        if digest in self.used_codes:
            raise Refused("01", "付款码已使用")
        self.used_codes.add(digest)
        behaviour = CODE_BEHAVIOURS.get(code[-1], "decline")
        if behaviour == "decline":
            raise Refused("01", "交易失败: 余额不足")
        txn = self.register(fields, query_id=self.next_number(), code_behaviour=behaviour)
        if behaviour == "confirm":
            txn.confirming_queries = CONFIRMING_QUERIES
        if behaviour == "pay":
            self.succeed(txn)
            self.deliver_later(txn, txn.notifications[-1], 0)
            return self.result_fields(txn) | {"origRespCode": "00", "origRespMsg": "成功"}
        # Accepted, not paid: the payer confirms on the phone; query or await the notification.
        return {
            "txnType": txn.txn_type,
            "txnSubType": txn.txn_sub_type,
            "bizType": txn.biz_type,
            "queryId": txn.query_id,
            "txnAmt": str(txn.amount_fen),
            "currencyCode": message.CURRENCY_CNY,
            "respCode": "00",
            "respMsg": "成功[受理]",
        }

    def confirm_on_query(self, txn: Transaction) -> None:
        """A confirming payer has paid once enough queries came; UnionPay then notifies."""
        if txn.status != "pending" or txn.code_behaviour != "confirm":
            return
        if txn.confirming_queries > 0:
            txn.confirming_queries -= 1
            return
        self.succeed(txn)
        self.deliver_later(txn, txn.notifications[-1], 0)

    def cancel_pending(self, fields: dict[str, str], original: Transaction) -> Transaction:
        """A 消费撤销 of a payment-code sale the payer has not confirmed: it can never pay."""
        if int(fields["txnAmt"]) != original.amount_fen:
            raise Refused("36", "消费撤销金额必须等于原交易金额")
        txn = self.register(fields, original=original)
        original.status = "cancelled"
        txn.status = "success"
        txn.query_id = self.next_number()
        txn.trace_time = datetime.now(BEIJING).strftime("%m%d%H%M%S")
        return txn

    def taken_fen(self, order_id: str) -> int:
        """What the payer has paid for a consume, less what was refunded or cancelled."""
        txn = next(
            (
                t
                for t in self.transactions.values()
                if t.order_id == order_id and t.original is None
            ),
            None,
        )
        if txn is None or txn.status != "success":
            return 0
        return txn.amount_fen - txn.refunded_fen

    def refund(self, fields: dict[str, str]) -> Transaction:
        """A 退货 (txnType 04) or, same settlement day and in full, a 消费撤销 (txnType 31)."""
        required: tuple[str, ...] = (*TRANSACTION_FIELDS, "origQryId")
        if fields.get("bizType") == "000000":
            # The cancel of a payment-code sale: its outcome is in the answer and the query.
            required = tuple(name for name in required if name != "backUrl")
        self.check(fields, required)
        if fields["txnSubType"] != "00":
            raise Refused("10", "a refund is txnSubType 00")
        if (fields["merId"], fields["orderId"]) in self.transactions:
            raise Refused("12", "重复交易")
        original = next(
            (
                t
                for t in self.transactions.values()
                if t.query_id == fields["origQryId"] and t.mer_id == fields["merId"]
            ),
            None,
        )
        if (
            original is not None
            and fields["txnType"] == "31"
            and original.code_behaviour
            and original.status == "pending"
        ):
            return self.cancel_pending(fields, original)
        if original is None or original.txn_type != "01" or original.status != "success":
            raise Refused("35", "原交易不存在或状态不正确")
        amount = int(fields["txnAmt"])
        if fields["txnType"] == "31":
            if amount != original.amount_fen:
                raise Refused("36", "消费撤销金额必须等于原交易金额")
            if original.refunded_fen:
                raise Refused("35", "原交易已退货或已撤销")
            today = message.beijing_time(datetime.now(UTC))
            if message.settlement_day(today) != message.settlement_day(original.txn_time):
                raise Refused("39", "交易不在受理时间范围内")
        if original.refunded_fen + amount > original.amount_fen:
            raise Refused("36", "退货金额超过原交易可退金额")
        txn = self.register(fields, original=original)
        original.refunded_fen += amount
        self.succeed(txn)
        return txn

    # --- settling and notifying --------------------------------------------------------

    def succeed(self, txn: Transaction) -> None:
        now = datetime.now(BEIJING)
        txn.status = "success"
        txn.query_id = txn.query_id or self.next_number()
        txn.trace_no = f"{secrets.randbelow(10**6):06d}"
        txn.trace_time = now.strftime("%m%d%H%M%S")
        txn.settle_date = now.strftime("%m%d")
        txn.notifications.append(self.signed(self.result_fields(txn)))
        self.record(txn, now.astimezone(UTC))

    def record(self, txn: Transaction, at: datetime) -> None:
        """Enter a successful payment or refund in the bill book."""
        if txn.original is None:
            self.book.record_payment(
                txn.order_id,
                txn.query_id,
                txn.amount_fen,
                created_at=message.parse_beijing_time(txn.txn_time),
                at=at,
                mer_id=txn.mer_id,
                trace_no=txn.trace_no,
                trace_time=txn.trace_time,
            )
            return
        self.book.record_refund(
            txn.original.order_id,
            txn.order_id,
            txn.amount_fen,
            refund_no=txn.query_id,
            at=at,
            refund_txn_type=txn.txn_type,
            trace_no=txn.trace_no,
            orig_trace_no=txn.original.trace_no,
            orig_trace_time=txn.original.trace_time,
        )

    # --- the file transfer (对账文件) ---------------------------------------------------

    def file_transfer(self, fields: dict[str, str]) -> dict[str, str]:
        """Answer a 文件传输 request: the ZIP of a settle date's bill, or why there is none."""
        self.check(fields, FILE_TRANSFER_FIELDS)
        if (fields["txnType"], fields["txnSubType"], fields["bizType"]) != ("76", "01", "000000"):
            raise Refused("10", "a file transfer is txnType 76, txnSubType 01, bizType 000000")
        sent = message.parse_beijing_time(fields["txnTime"])
        if abs(datetime.now(UTC) - sent) > TXN_TIME_TOLERANCE:
            raise Refused("10", "txnTime must be the current Beijing time")
        if fields["fileType"] != "00":
            raise Refused("10", "fileType must be 00")
        try:
            day = bills.settle_day(fields["settleDate"], beijing_today())
        except ValueError:
            raise Refused("10", "settleDate must be MMDD") from None
        echo = {
            "txnType": "76",
            "txnSubType": "01",
            "bizType": "000000",
            "accessType": "0",
            "settleDate": fields["settleDate"],
            "fileType": "00",
        }
        if self.book.availability(day) is not None:
            return echo | dict(zip(("respCode", "respMsg"), RESP_NOT_GENERATED, strict=True))
        mer_id = fields["merId"]
        entries = [e for e in self.book.entries_of(day) if e.extra.get("mer_id", mer_id) == mer_id]
        if not entries:
            return echo | dict(zip(("respCode", "respMsg"), RESP_NO_FILE, strict=True))
        content = bills.bill_zip(
            day,
            mer_id,
            (bills.zm_record(zm_values(entry, mer_id)) for entry in entries),
            bills.rd_report(
                day, mer_id, rd_rows(entries), merchant_name=MERCHANT_NAME, made=beijing_today()
            ),
        )
        return echo | {
            "respCode": "00",
            "respMsg": "成功[0000000]",
            "fileName": bills.zip_name(day, mer_id),
            "fileContent": base64.b64encode(zlib.compress(content)).decode("ascii"),
        }

    def result_fields(self, txn: Transaction) -> dict[str, str]:
        """What notifications and query answers say about a transaction."""
        fields = {
            "txnType": txn.txn_type,
            "txnSubType": txn.txn_sub_type,
            "bizType": txn.biz_type,
            "accessType": "0",
            "merId": txn.mer_id,
            "orderId": txn.order_id,
            "txnTime": txn.txn_time,
            "txnAmt": str(txn.amount_fen),
            "currencyCode": message.CURRENCY_CNY,
            "queryId": txn.query_id,
            "traceNo": txn.trace_no,
            "traceTime": txn.trace_time,
            "settleDate": txn.settle_date,
            "settleAmt": str(txn.amount_fen),
            "settleCurrencyCode": message.CURRENCY_CNY,
            "respCode": "00",
            "respMsg": "成功[0000000]",
        }
        if txn.req_reserved:
            fields["reqReserved"] = txn.req_reserved
        if txn.original is not None:
            fields["origQryId"] = txn.original.query_id
        else:
            # The card number is masked, as UnionPay does.
            fields |= {"accNo": "6216********0018", "payType": "0001", "payCardType": "01"}
        return {k: v for k, v in fields.items() if v}

    async def deliver(self, txn: Transaction, notification: dict[str, str]) -> int | None:
        """POST a notification to backUrl; UnionPay takes HTTP 200 as receipt."""
        return await self._deliver(txn, notification, 0.0)

    async def _deliver(
        self, txn: Transaction, notification: dict[str, str], delay: float
    ) -> int | None:
        body = urlencode(notification).encode("utf-8")
        sent = await self.notifier.deliver(
            txn.back_url,
            lambda: ({"content-type": "application/x-www-form-urlencoded;charset=UTF-8"}, body),
            ref=txn.order_id,
            delay=delay,
        )
        txn.deliveries.append(sent.status)
        return sent.status

    def deliver_later(self, txn: Transaction, notification: dict[str, str], delay: float) -> None:
        self.notifier.later(self._deliver(txn, notification, delay))

    def query(self, fields: dict[str, str]) -> dict[str, str]:
        self.check(fields, ("txnType", "txnSubType", "bizType", "orderId", "txnTime"))
        if fields["txnType"] != "00":
            raise Refused("10", "a query is txnType 00")
        txn = self.transactions.get((fields["merId"], fields["orderId"]))
        if txn is None or txn.txn_time != fields["txnTime"] or txn.status == "abandoned":
            raise Refused("34", "查无此交易")
        self.confirm_on_query(txn)
        answer = (
            self.result_fields(txn)
            if txn.status == "success"
            else {
                "txnType": txn.txn_type,
                "txnSubType": txn.txn_sub_type,
                "bizType": txn.biz_type,
                "merId": txn.mer_id,
                "orderId": txn.order_id,
                "txnTime": txn.txn_time,
                "txnAmt": str(txn.amount_fen),
                "currencyCode": message.CURRENCY_CNY,
                **({"queryId": txn.query_id} if txn.query_id else {}),
            }
        )
        orig = {
            "success": ("00", "成功"),
            "pending": ("05", "交易处理中"),
            "cancelled": ("01", "交易已撤销"),
        }.get(txn.status, ("01", "交易失败"))
        answer |= {
            "respCode": "00",
            "respMsg": "成功",
            "origRespCode": orig[0],
            "origRespMsg": orig[1],
        }
        return answer

    def take_fault(self, endpoint: str) -> Fault | None:
        return self.faults.take(endpoint)


def create_app(
    *,
    sign_key: RSAPrivateKey,
    sign_cert: x509.Certificate,
    merchants: Mapping[str, x509.Certificate],
    delivery_backoff: float = 0.2,
    publish_current_day: bool | None = None,
) -> Starlette:
    """The simulator: UnionPay's signing key and certificate, and each merId's signing certificate.

    A notification branchpay does not take (HTTP 200) is tried again after
    ``delivery_backoff`` seconds, doubling, three tries in all: UnionPay's own
    1, 2, 4, 5 minute schedule shortened for tests and demos.
    ``publish_current_day``: the bill of the current Beijing day is served too
    (so far); None leaves it to ``BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY``.
    """
    gateway = Gateway(sign_key, sign_cert, merchants, delivery_backoff, publish_current_day)

    def answer(fields: dict[str, str], request_fields: dict[str, str], endpoint: str) -> Response:
        echo: dict[str, str] = {
            k: request_fields[k] for k in ("merId", "orderId", "txnTime") if k in request_fields
        }
        body = message.format_response(gateway.signed({**echo, **fields}))
        fault = gateway.faults.take(endpoint, kinds=AFTER_PROCESSING)
        if fault is not None:
            if fault.kind == "lost_answer":
                return PlainTextResponse("system busy", status_code=500)
            body = body.replace("respMsg=", "respMsg=x", 1)
        return PlainTextResponse(body, media_type="text/plain;charset=UTF-8")

    async def read_form(request: Request) -> dict[str, str]:
        form = await request.form()
        return {k: v for k, v in form.multi_items() if isinstance(v, str)}

    async def injected(endpoint: str) -> Response | None:
        fault = gateway.faults.peek(endpoint)
        if fault is None or fault.kind in AFTER_PROCESSING:
            return None
        gateway.take_fault(endpoint)
        if fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
        if fault.kind == "denied":
            return Response(b"", status_code=500)
        return PlainTextResponse("system busy", status_code=500)

    async def front(request: Request) -> Response:
        if (failed := await injected("frontTransReq.do")) is not None:
            return failed
        fields = await read_form(request)
        try:
            txn = gateway.consume(fields, ("07", "08"))
        except Refused as exc:
            return HTMLResponse(_page("交易失败", f"{exc.code} {exc.text}"), status_code=400)
        return HTMLResponse(_pay_page(txn))

    async def app_trans(request: Request) -> Response:
        if (failed := await injected("appTransReq.do")) is not None:
            return failed
        fields = await read_form(request)
        try:
            txn = gateway.consume(fields, ("08",))
        except Refused as exc:
            return answer({"respCode": exc.code, "respMsg": exc.text}, fields, "appTransReq.do")
        return answer({"respCode": "00", "respMsg": "成功", "tn": txn.tn}, fields, "appTransReq.do")

    async def back_trans(request: Request) -> Response:
        if (failed := await injected("backTransReq.do")) is not None:
            return failed
        fields = await read_form(request)
        try:
            if fields.get("txnType") == "01" and fields.get("txnSubType") == "06":
                result = gateway.code_consume(fields)
            elif fields.get("txnType") == "01":
                result = gateway.qr_consume(fields, str(request.base_url).rstrip("/"))
            elif fields.get("txnType") in ("04", "31"):
                txn = gateway.refund(fields)
                if txn.back_url and txn.notifications:
                    gateway.deliver_later(txn, txn.notifications[-1], 0)
                result = {"respCode": "00", "respMsg": "成功[0000000]", "queryId": txn.query_id}
            else:
                raise Refused("10", "txnType not served by backTransReq.do")
        except Refused as exc:
            result = {"respCode": exc.code, "respMsg": exc.text}
        return answer(result, fields, "backTransReq.do")

    async def query_trans(request: Request) -> Response:
        if (failed := await injected("queryTrans.do")) is not None:
            return failed
        fields = await read_form(request)
        try:
            result = gateway.query(fields)
        except Refused as exc:
            result = {"respCode": exc.code, "respMsg": exc.text}
        return answer(result, fields, "queryTrans.do")

    async def file_transfer(request: Request) -> Response:
        if (failed := await injected("fileTransfer")) is not None:
            return failed
        fields = await read_form(request)
        try:
            result = gateway.file_transfer(fields)
        except Refused as exc:
            result = {"respCode": exc.code, "respMsg": exc.text}
        return answer(result, fields, "fileTransfer")

    async def pay_page(request: Request) -> Response:
        txn = gateway.by_tn.get(request.path_params["tn"])
        if txn is None:
            return HTMLResponse(_page("交易不存在", ""), status_code=404)
        return HTMLResponse(_pay_page(txn))

    async def pay(request: Request) -> Response:
        txn = gateway.by_tn.get(request.path_params["tn"])
        if txn is None:
            return JSONResponse({"error": "unknown tn"}, status_code=404)
        form = await read_form(request)
        outcome = form.get("outcome", "")
        if outcome not in ("success", "fail", "close"):
            return JSONResponse({"error": "outcome must be success, fail or close"}, 400)
        if txn.status != "pending":
            return JSONResponse({"error": f"the attempt is already {txn.status}"}, 409)
        if txn.pay_timeout and datetime.now(UTC) > message.parse_beijing_time(txn.pay_timeout):
            return JSONResponse({"error": "payTimeout has passed"}, 409)
        delivered: int | None = None
        if outcome == "success":
            gateway.succeed(txn)
            if form.get("deliver", "1") != "0":
                delivered = await gateway.deliver(txn, txn.notifications[-1])
        else:
            txn.status = "failed" if outcome == "fail" else "abandoned"
        result = {"orderId": txn.order_id, "status": txn.status, "delivered": delivered}
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(result)
        if outcome == "success" and txn.front_url:
            return HTMLResponse(message.auto_submit_form(txn.front_url, txn.notifications[-1]))
        return HTMLResponse(_page("支付结果", f"{txn.order_id}: {txn.status}"))

    def _notification_of(request: Request) -> tuple[Transaction, dict[str, str]] | Response:
        txn = next(
            (
                t
                for t in gateway.transactions.values()
                if t.order_id == request.path_params["order"]
            ),
            None,
        )
        if txn is None or not txn.notifications:
            return JSONResponse({"error": "no notification for this orderId"}, 404)
        try:
            index = int(request.query_params.get("index", "-1"))
            return txn, txn.notifications[index]
        except (ValueError, IndexError):
            return JSONResponse({"error": "no such notification index"}, 404)

    async def notification_body(request: Request) -> Response:
        found = _notification_of(request)
        if isinstance(found, Response):
            return found
        return PlainTextResponse(
            urlencode(found[1]), media_type="application/x-www-form-urlencoded"
        )

    async def redeliver(request: Request) -> Response:
        form = await read_form(request)
        found = _notification_of(request)
        if isinstance(found, Response):
            return found
        txn, notification = found
        count = int(form.get("count", "1"))
        delay = float(form.get("delay", "0"))
        if delay:
            for _ in range(count):
                gateway.deliver_later(txn, notification, delay)
            return JSONResponse({"scheduled": count}, status_code=202)
        statuses = [await gateway.deliver(txn, notification) for _ in range(count)]
        return JSONResponse({"delivered": statuses})

    async def resign(request: Request) -> Response:
        """A notification this simulator made, one field changed, signed with UnionPay's key."""
        try:
            spec = await request.json()
            sent = dict(parse_qsl(str(spec["body"]), keep_blank_values=True))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"malformed resign request: {type(exc).__name__}"}, 400)
        made = any(sent in t.notifications for t in gateway.transactions.values())
        if not made:
            return JSONResponse({"error": "the simulator never made that notification"}, 404)
        changes = {
            name: str(spec[name])
            for name in RESIGNABLE
            if isinstance(spec, dict) and spec.get(name) is not None
        }
        if not changes:
            return JSONResponse({"error": f"name one of {', '.join(RESIGNABLE)}"}, 400)
        unsigned = {k: v for k, v in sent.items() if k != "signature"}
        return PlainTextResponse(
            urlencode(gateway.signed(unsigned | changes)),
            media_type="application/x-www-form-urlencoded",
        )

    async def faults(request: Request) -> Response:
        spec = await request.json()
        endpoint, mode = spec.get("endpoint"), spec.get("mode")
        if endpoint not in ENDPOINTS or mode not in FAULT_MODES:
            return JSONResponse({"error": "endpoint or mode unknown"}, 400)
        gateway.faults.add(
            Fault(
                kind=mode,
                remaining=int(spec.get("count", 1)),
                target=endpoint,
                seconds=float(spec.get("stall_seconds", 30)),
            )
        )
        return JSONResponse({"ok": True})

    async def taken(request: Request) -> Response:
        order_id = request.path_params["order"]
        return JSONResponse({"orderId": order_id, "takenFen": gateway.taken_fen(order_id)})

    async def confirm(request: Request) -> Response:
        """The payer of a pending payment-code sale confirms on the phone now."""
        form = await read_form(request)
        txn = next(
            (
                t
                for t in gateway.transactions.values()
                if t.order_id == request.path_params["order"] and t.code_behaviour
            ),
            None,
        )
        if txn is None:
            return JSONResponse({"error": "no payment-code sale with this orderId"}, 404)
        if txn.status != "pending":
            # Cancelled (or settled) already: a late confirm takes nothing.
            return JSONResponse({"error": f"the sale is {txn.status}"}, 409)
        gateway.succeed(txn)
        delivered: int | None = None
        if form.get("deliver", "1") != "0":
            delivered = await gateway.deliver(txn, txn.notifications[-1])
        return JSONResponse({"orderId": txn.order_id, "status": txn.status, "delivered": delivered})

    async def transaction(request: Request) -> Response:
        txn = next(
            (
                t
                for t in gateway.transactions.values()
                if t.order_id == request.path_params["order"]
            ),
            None,
        )
        if txn is None:
            return JSONResponse({"error": "unknown orderId"}, 404)
        return JSONResponse(
            {
                "orderId": txn.order_id,
                "txnTime": txn.txn_time,
                "status": txn.status,
                "txnAmt": txn.amount_fen,
                "refundedFen": txn.refunded_fen,
                "queryId": txn.query_id,
                "txnType": txn.txn_type,
                "tn": txn.tn,
                "deliveries": txn.deliveries,
                "notifications": len(txn.notifications),
            }
        )

    app = Starlette(
        routes=[
            Route("/gateway/api/frontTransReq.do", front, methods=["POST"]),
            Route("/gateway/api/appTransReq.do", app_trans, methods=["POST"]),
            Route("/gateway/api/backTransReq.do", back_trans, methods=["POST"]),
            Route("/gateway/api/queryTrans.do", query_trans, methods=["POST"]),
            # filedownload.95516.com takes the file transfer at its root.
            Route("/", file_transfer, methods=["POST"]),
            Route("/pay/{tn}", pay_page, methods=["GET"]),
            Route("/pay/{tn}", pay, methods=["POST"]),
            Route("/control/notifications/resign", resign, methods=["POST"]),
            Route("/control/notifications/{order}", notification_body, methods=["GET"]),
            Route("/control/notifications/{order}/redeliver", redeliver, methods=["POST"]),
            Route("/control/faults", faults, methods=["POST"]),
            Route("/control/transactions/{order}", transaction, methods=["GET"]),
            Route("/control/transactions/{order}/taken", taken, methods=["GET"]),
            Route("/control/transactions/{order}/confirm", confirm, methods=["POST"]),
            *bill_routes("/control", gateway.book),
            *control_routes("/control", notifier=gateway.notifier, faults=gateway.faults),
        ],
        lifespan=gateway.notifier.lifespan,
    )
    app.state.gateway = gateway
    return app


def _page(title: str, text: str) -> str:
    return page(title, f"<p>{html.escape(text)}</p>", lang="zh")


def _pay_page(txn: Transaction) -> str:
    return pay_page(
        "UnionPay simulator",
        lines=[f"Order {txn.order_id}"],
        amount_fen=txn.amount_fen,
        action=f"/pay/{txn.tn}",
    )


# --- the bill's records -----------------------------------------------------------------


def zm_values(entry: BillEntry, mer_id: str) -> dict[int, str]:
    """The ZM fields of a bill entry (see the layout in :mod:`providers.unionpay.bills`)."""
    refund = entry.kind == "REFUND"
    extra = entry.extra
    txn_type = str(extra.get("refund_txn_type", bills.TXN_REFUND)) if refund else bills.TXN_CONSUME
    # What the merchant is credited (C) or debited (D): the amount, less the fee charged.
    net = (-entry.amount_fen if refund else entry.amount_fen) - entry.fee_fen
    net_field = bills.signed_fen(abs(net), credit=net >= 0)
    values = {
        bills.TXN_CODE: "S30" if refund else "S56",
        2: "48021000",
        3: "00049992",
        bills.TRACE_NO: str(extra.get("trace_no") or f"{abs(hash(entry.key)) % 10**6:06d}"),
        bills.TRANSMIT_TIME: entry.at.astimezone(BEIJING).strftime("%m%d%H%M%S"),
        bills.ACCOUNT: "6216********0018",
        bills.AMOUNT: f"{entry.amount_fen:012d}",
        8: "4814",
        9: "07",
        bills.QUERY_ID: (entry.refund_no or "") if refund else entry.trade_no,
        11: "01",
        bills.ORDER_ID: (entry.out_refund_no or "") if refund else entry.out_trade_no,
        13: "01",
        bills.FEE: bills.signed_fen(abs(entry.fee_fen), credit=entry.fee_fen < 0),
        bills.SETTLE_AMOUNT: net_field,
        18: "0001",
        bills.TXN_TYPE: txn_type,
        bills.BIZ_TYPE: "000201",
        bills.MER_ID: mer_id,
        30: "0" * 15,
        32: "0" * 12,
        bills.NET_AMOUNT: net_field,
        34: "0" * 8,
        36: "0" * 12,
        37: "0" * 12,
        38: "0" * 11,
        40: "7",
    }
    if refund:
        values |= {
            bills.ORIG_TRACE_NO: str(extra.get("orig_trace_no", "")),
            bills.ORIG_TIME: str(extra.get("orig_trace_time", "")),
            bills.ORIG_QUERY_ID: entry.trade_no,
            bills.ORIG_ORDER_ID: entry.out_trade_no,
        }
    return values


def rd_rows(entries: list[BillEntry]) -> dict[str, bills.RdRow]:
    """The RD report's 交易类型 rows of a day's entries, in the order consume, 退货, 撤销."""
    rows: dict[str, bills.RdRow] = {}
    for txn_type in (bills.TXN_CONSUME, bills.TXN_REFUND, bills.TXN_VOID):
        row = bills.RdRow()
        for entry in entries:
            refund = entry.kind == "REFUND"
            kind = str(entry.extra.get("refund_txn_type", bills.TXN_REFUND)) if refund else "01"
            if kind != txn_type:
                continue
            row.count += 1
            if refund:
                row.amount_debit += entry.amount_fen
            else:
                row.amount_credit += entry.amount_fen
            if entry.fee_fen >= 0:
                row.fee_debit += entry.fee_fen
            else:
                row.fee_credit -= entry.fee_fen
        if row.count:
            rows[bills.TYPE_NAMES[txn_type]] = row
    return rows
