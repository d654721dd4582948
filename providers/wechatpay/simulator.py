"""A WeChat Pay API v3 gateway on loopback, for tests and the demo.

It checks requests the way WeChat Pay does (the ``WECHATPAY2-SHA256-RSA2048``
Authorization header against the merchant's public key and certificate
serial, a five-minute clock window, required parameters, integer fen amounts,
``out_trade_no`` re-use, refunds once per ``out_refund_no`` and never past the
paid amount, close semantics) and signs every answer with the platform private
key under the platform public key id. Callbacks are encrypted with the
merchant's APIv3 key and signed the same way.

Beside the API it offers:

- ``GET /pay/{out_trade_no}``: a small pay page; ``POST`` there with the form
  field ``outcome=success|fail|close`` settles the attempt (``deliver=0``
  keeps the callback back). Like WeChat Pay, only a successful payment and a
  finished refund produce a callback.
- ``GET /control/notifications/{out_trade_no}``: every callback of the
  attempt with freshly signed headers (``?timestamp=`` signs at another
  time), without sending anything.
- ``POST /control/notifications/{out_trade_no}/deliver`` with JSON
  ``{"order": [1, 0], "count": 2, "delay_seconds": 1, "background": true}``:
  (re)sends callbacks, as duplicates, late or out of order.
- ``POST /control/faults`` with JSON ``{"kind": "error"|"stall"|"unsigned"|
  "forged"|"corrupt", "times": 1, "stall_seconds": 1, "path": "/v3/refund"}``:
  the next matching API calls fail (500), answer late after acting, or answer
  without or with a wrong signature; ``corrupt`` spoils the next bill file
  written (at ``GET /v3/bill/tradebill``): one amount changes after the
  hash was taken, so its ``hash_value`` no longer matches.
  ``DELETE /control/faults`` clears them.
- ``PUT /control/signing`` with JSON ``{"callbacks": "public_key" |
  "certificate", "replies": "requested" | "certificate"}`` (for a simulator
  made with a ``platform_certificate``: a merchant mid-switch from platform
  certificates to the public key): callbacks are signed with the public key
  (``Wechatpay-Serial`` its ``PUB_KEY_ID_...``, the default) or with the
  platform certificate (its serial); replies with the public key when the
  request's ``Wechatpay-Serial`` names its id and with the certificate
  otherwise (``requested``, as WeChat Pay does), or always with the
  certificate (the switch not started in the console).
- ``POST /control/notifications/resign`` with JSON ``{"body": "...",
  "amount_fen": 8801, "merchant": "...", "out_trade_no": "..."}`` (any of
  the last three): a callback this simulator made, its resource decrypted,
  that field changed (``amount.total``, or ``amount.refund`` of a refund;
  ``mchid``, or ``sub_mchid`` of a partner transaction; ``out_trade_no``),
  sealed again with the merchant's APIv3 key and signed now with the
  platform's genuine key: what WeChat Pay itself could have sent. Nothing is
  delivered. A body it never made answers 404.

Orders: ``POST /v3/pay/transactions/{native|h5|app|jsapi}``; a JSAPI (and
mini program) order needs ``payer.openid`` and answers its ``prepay_id``; the
pay page settles it like any other.

A merchant with ``sub_merchants`` is a service provider (服务商): the partner
APIs (``/v3/pay/partner/transactions/{kind}``, ``.../codepay``, and query,
close and reverse under ``/v3/pay/partner/transactions/out-trade-no/{no}``)
take ``sp_appid``/``sp_mchid`` and one of its ``sub_mchid`` (400 ``NO_AUTH``
otherwise), with ``sub_appid`` optional; refunds name ``sub_mchid``. Partner
transactions and their callbacks carry those ids instead of ``appid``/``mchid``.

Payment codes at the counter (付款码支付), as API v3 serves them:

- ``POST /v3/pay/transactions/codepay`` (``appid``, ``mchid``,
  ``description``, ``out_trade_no``, ``payer.auth_code``, ``amount.total``,
  ``scene_info.store_info.out_id``; no ``notify_url``: WeChat Pay does not
  call a code sale back). A payment code is 18 digits, ``10``-``15`` then 16
  digits; its last digit says what the payer does, so tests choose it:

  - ``1``: paid at once: 200, ``trade_state`` ``SUCCESS``;
  - ``2``: the payer confirms on the phone: 202 ``USERPAYING`` for the pay
    call and the first 2 queries, ``SUCCESS`` from the 3rd query on;
  - ``3``: the payer never confirms: ``USERPAYING`` until reversed;
  - any other digit: declined, 403 ``NOTENOUGH`` (余额不足), ``PAYERROR``.

  Another code answers 400 ``PARAM_ERROR``; a code already charged for
  another sale 400 ``AUTHCODEEXPIRE`` (codes are one-time; only a digest of
  each is kept). The same sale sent again (same ``out_trade_no`` and body)
  answers its current state and never charges twice; another body under a
  used ``out_trade_no`` is 400 ``INVALID_REQUEST``.
- The query (``GET /v3/pay/transactions/out-trade-no/{no}?mchid=``) answers
  code sales too (``trade_type`` ``MICROPAY``).
- ``POST /v3/pay/transactions/out-trade-no/{no}/reverse`` (``{appid,
  mchid}``) voids a code sale: unpaid, it is ``REVOKED`` (a later confirm
  charges nothing); paid, what is left after refunds goes back to the payer
  (a refund on the bill) and it is ``REVOKED``. The first reverse of a sale
  whose payer is still confirming answers 400 ``USERPAYING`` (正在支付中不能发
  起撤销), as WeChat Pay does; asking again reverses it. Reversing a
  reversed or closed sale answers 200 again; a sale that is not a code sale
  400 ``INVALID_REQUEST``; an unknown one 404 ``ORDER_NOT_EXIST``.
- ``GET /control/payments/{out_trade_no}/taken``: the ledger, what the payer
  has paid for the sale and not had back (``{"taken_fen": ...}``, 0 for a
  number never seen).

Daily trade bills (交易账单), as API v3 serves them:

- ``GET /v3/bill/tradebill?bill_date=YYYY-MM-DD[&bill_type=ALL|SUCCESS|REFUND]
  [&tar_type=GZIP]``, signed like every call, answers (signed)
  ``{"hash_type": "SHA1", "hash_value", "download_url"}``; the hash is the
  SHA-1 of the uncompressed file. Errors: 400 ``NO_STATEMENT_EXIST`` for a day
  without business (no file at all), 400 ``STATEMENT_CREATING`` while the day
  is not published (day D appears on D+1 at 10:00 Beijing time, or at once
  with ``publish_current_day``; never a day still to come), 400
  ``INVALID_REQUEST`` for a malformed date, a day more than three months
  back, or a ``sub_mchid`` (these are direct merchants).
- ``GET /v3/billdownload/file?token=...[&tartype=gzip]`` needs its own v3
  Authorization (401 ``SIGN_ERROR`` without) from the merchant the token was
  given to, and answers the file without any ``Wechatpay-*`` header (gzip
  when asked). A token lasts ``bill_url_seconds`` (30 s by default, the
  shorter of the two documented lives); after that 400 ``INVALID_REQUEST``.
- The file: UTF-8 with a BOM, CRLF after every line, the header of its bill
  type, each value prefixed with a backtick, refund rows dated on the refund
  day (交易状态 REFUND, 应结订单金额 0.00, positive 退款金额, negative 手续费),
  then the summary rows (总交易单数 counts payment and refund rows). The
  rows come from the gateway's :class:`~providers.kit.bills.BillBook`: each
  payment when it succeeds, each refund when it succeeds, fees at the book's
  rate (written with five decimals).
- The kit's bill controls under ``/control/bills`` (publish policy,
  adjustments; see :mod:`providers.kit.bills`).
"""

from __future__ import annotations

import asyncio
import calendar
import gzip
import hashlib
import html
import json
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from api.plugin import BillUnavailableReason, fen_to_yuan, to_beijing
from providers.kit.bills import BillBook, BillEntry, beijing_today, bill_routes
from providers.kit.driver import CODE_BEHAVIOURS
from providers.kit.simulator import Fault, FaultQueue, Notifier, Signer, control_routes
from providers.kit.simulator import pay_page as render_pay_page
from providers.wechatpay import signing
from providers.wechatpay.bills import COLUMNS_OF_BILL_TYPE, SUMMARY_COLUMNS

_CST = timezone(timedelta(hours=8))
# WeChat Pay's own re-delivery pauses for an unanswered callback, in seconds
# (it goes on to 30 min, 1 h, 3 h and 6 h pauses, about 24 h in all).
WECHAT_REDELIVERY_DELAYS = (15.0, 15.0, 30.0, 180.0, 600.0, 1200.0, 1800.0)
_OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_\-*|]{6,32}$")
_OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")
_URL = re.compile(r"^https?://[^\s?#]+$")
_TRADE_TYPES = {"native": "NATIVE", "h5": "MWEB", "app": "APP", "jsapi": "JSAPI"}
_OPENID = re.compile(r"^[0-9A-Za-z_-]{16,128}$")
# Faults the API answers with; "corrupt" is taken when a bill file is written.
_API_FAULTS = ("error", "stall", "unsigned", "forged")
_FAULT_KINDS = (*_API_FAULTS, "corrupt")
# WeChat Pay publishes day D's trade bill on D+1 "每日10点后" (Beijing time).
BILL_PUBLISH_HOUR = 10
BILL_MONTHS_KEPT = 3
_BILL_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_BILL_CHUNK = 64 * 1024
_BILL_STATUS = {"SUCCEEDED": "SUCCESS", "PENDING": "PROCESSING", "FAILED": "CLOSED"}
# A counter code: 18 digits, 10-15 first (WeChat Pay's 付款码 rule).
PAYMENT_CODE = re.compile(r"1[0-5][0-9]{16}")
# The last digit of a payment code: what the payer does (anything else: declined).
# Queries a "confirm" payer stays USERPAYING for after the pay call.
CONFIRMING_QUERIES = 2
_TRADE_STATE_DESC = {
    "NOTPAY": "未支付",
    "USERPAYING": "用户支付中",
    "REVOKED": "已撤销",
    "SUCCESS": "支付成功",
    "REFUND": "转入退款",
    "CLOSED": "已关闭",
    "PAYERROR": "支付失败",
}


@dataclass(frozen=True, slots=True)
class Merchant:
    """A merchant account as WeChat Pay knows it."""

    mchid: str
    appid: str
    public_key: RSAPublicKey  # of the merchant API certificate
    cert_serial_no: str
    apiv3_key: bytes
    # A service provider (服务商): its sub-merchants (特约商户) by sub_mchid, each
    # with its own AppID or None.
    sub_merchants: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlatformCertificate:
    """A platform certificate's key, for a merchant still switching to the public key."""

    private_key: RSAPrivateKey
    serial_no: str  # uppercase hex, as Wechatpay-Serial names it


# Who signs callbacks, and replies (``requested``: the public key when the request's
# Wechatpay-Serial names its id, else the certificate, as WeChat Pay does mid-switch).
SIGNERS = ("public_key", "certificate")
REPLY_SIGNERS = ("requested", "certificate")


@dataclass(slots=True)
class Refund:
    out_refund_no: str
    refund_id: str
    amount: int
    status: str
    created_at: datetime
    notify_url: str | None
    success_time: datetime | None = None


@dataclass(slots=True)
class Attempt:
    merchant: Merchant
    out_trade_no: str
    trade_type: str
    order: dict[str, Any]
    total: int
    notify_url: str
    expires_at: datetime | None
    prepay_id: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    state: str = "NOTPAY"
    transaction_id: str | None = None
    success_time: datetime | None = None
    refunds: dict[str, Refund] = field(default_factory=dict)
    notifications: list[bytes] = field(default_factory=list)
    deliveries: list[int | None] = field(default_factory=list)
    # Counter sales: what the payer does, queries left before a "confirm" pays,
    # reverses refused so far, and what a reverse gave back.
    code_behaviour: str | None = None
    confirming_queries: int = 0
    # Partner mode: the sub-merchant the attempt is for (None: a direct merchant's).
    sub_mchid: str | None = None
    sub_appid: str | None = None
    reverse_refusals: int = 0
    reversed_fen: int = 0

    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds.values() if r.status != "CLOSED")

    def taken_fen(self) -> int:
        """The ledger: what the payer has paid for this attempt and not had back."""
        paid = self.total if self.transaction_id is not None else 0
        return paid - self.refunded() - self.reversed_fen


@dataclass(slots=True)
class BillFile:
    """A bill file written for one tradebill call, and who may fetch it until when."""

    mchid: str
    path: Path  # gzip-compressed when ``gzip``
    gzip: bool
    expires_at: float  # time.monotonic()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(_CST).isoformat(timespec="seconds")


def _amount(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, "PARAM_ERROR", f"{name} must be a positive integer count of fen")
    return value


def _string(body: dict[str, Any], name: str, *, max_bytes: int = 32) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "PARAM_ERROR", f"missing required parameter {name}")
    if len(value.encode()) > max_bytes:
        raise ApiError(400, "PARAM_ERROR", f"{name} is longer than {max_bytes} bytes")
    return value


class Gateway:
    """The simulator's memory: merchants, attempts, pending faults."""

    def __init__(
        self,
        merchants: Sequence[Merchant],
        platform_private_key: RSAPrivateKey,
        platform_public_key_id: str,
        redelivery_delays: Sequence[float] = (),
        *,
        publish_current_day: bool | None = None,
        bill_url_seconds: float = 30.0,
        platform_certificate: PlatformCertificate | None = None,
    ) -> None:
        self.merchants = {m.mchid: m for m in merchants}
        self.platform_certificate = platform_certificate
        self.callbacks_signed_by = "public_key"
        self.replies_signed_by = "requested"
        self.book = BillBook(
            publish_hour=BILL_PUBLISH_HOUR, publish_current_day=publish_current_day
        )
        self.bill_url_seconds = bill_url_seconds
        self.bill_files: dict[str, BillFile] = {}
        # One file per tradebill call; made at the first, removed with the gateway.
        self._bill_dir: tempfile.TemporaryDirectory[str] | None = None
        self.redelivery_delays = tuple(redelivery_delays)
        self.platform_private_key = platform_private_key
        self.platform_public_key_id = platform_public_key_id
        self.attempts: dict[str, Attempt] = {}
        # Digests of the payment codes charged: a code pays one sale only.
        self.used_codes: set[str] = set()
        self.faults = FaultQueue()
        self.notifier = Notifier(timeout=10.0)
        self._stranger_key: RSAPrivateKey | None = None

    # -- signing ---------------------------------------------------------------

    def signer(self, scheme: str) -> tuple[RSAPrivateKey, str]:
        """The key and the Wechatpay-Serial of ``scheme`` (the public key without a certificate)."""
        if scheme == "certificate" and self.platform_certificate is not None:
            return self.platform_certificate.private_key, self.platform_certificate.serial_no
        return self.platform_private_key, self.platform_public_key_id

    def signed_headers(
        self,
        body: bytes,
        *,
        timestamp: int | None = None,
        key: RSAPrivateKey | None = None,
        scheme: str | None = None,
    ) -> dict[str, str]:
        """Wechatpay-* headers, signed with ``scheme``'s key (default: as callbacks are)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        nonce = signing.new_nonce()
        message = signing.response_message(stamp, nonce, body)
        own_key, serial = self.signer(scheme or self.callbacks_signed_by)
        return {
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature": signing.sign(key or own_key, message),
            "Wechatpay-Signature-Type": signing.SCHEMA,
            "Request-ID": secrets.token_hex(16),
        }

    def stranger_key(self) -> RSAPrivateKey:
        if self._stranger_key is None:
            self._stranger_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._stranger_key

    def reply(
        self,
        status: int,
        data: dict[str, Any] | None,
        fault: Fault | None,
        requested_serial: str | None = None,
    ) -> Response:
        body = b"" if data is None else json.dumps(data, ensure_ascii=False).encode()
        # The public key signs a reply only when the request asked for it by its id.
        by_certificate = (
            self.replies_signed_by == "certificate"
            or requested_serial != self.platform_public_key_id
        )
        scheme = "certificate" if by_certificate else "public_key"
        if fault is not None and fault.kind == "unsigned":
            headers = {"Request-ID": secrets.token_hex(16)}
        elif fault is not None and fault.kind == "forged":
            headers = self.signed_headers(body, key=self.stranger_key(), scheme=scheme)
        else:
            headers = self.signed_headers(body, scheme=scheme)
        media = "application/json" if data is not None else None
        return Response(body, status_code=status, headers=headers, media_type=media)

    def take_fault(self, path: str) -> Fault | None:
        return self.faults.take(path, _API_FAULTS)

    # -- request checks --------------------------------------------------------

    def authenticate(self, request: Request, body: bytes) -> Merchant:
        header = request.headers.get("authorization", "")
        params = signing.parse_authorization(header)
        if params is None or not {"mchid", "nonce_str", "signature", "timestamp", "serial_no"} <= (
            params.keys()
        ):
            raise ApiError(401, "SIGN_ERROR", "Authorization is not WECHATPAY2-SHA256-RSA2048")
        merchant = self.merchants.get(params["mchid"])
        if merchant is None:
            raise ApiError(401, "SIGN_ERROR", "unknown mchid")
        if params["serial_no"].upper() != merchant.cert_serial_no.upper():
            raise ApiError(401, "SIGN_ERROR", "serial_no is not the merchant's API certificate")
        stamp = params["timestamp"]
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > signing.MAX_CLOCK_SKEW_SECONDS:
            raise ApiError(401, "SIGN_ERROR", "timestamp is more than 5 minutes from now")
        target = request.scope["raw_path"].decode()
        if request.scope["query_string"]:
            target += "?" + request.scope["query_string"].decode()
        message = signing.request_message(request.method, target, stamp, params["nonce_str"], body)
        if not signing.verify(merchant.public_key, message, params["signature"]):
            raise ApiError(401, "SIGN_ERROR", "signature does not verify")
        return merchant

    @staticmethod
    def json_body(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "PARAM_ERROR", "body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "PARAM_ERROR", "body is not a JSON object")
        return data

    # -- API -------------------------------------------------------------------

    @staticmethod
    def ids(
        merchant: Merchant, body: Mapping[str, Any], *, partner: bool, appid: bool = True
    ) -> tuple[str | None, str | None]:
        """Check the merchant (and app) ids of a call; the sub-merchant's ids in partner mode."""
        prefix = "sp_" if partner else ""
        if body.get(f"{prefix}mchid") != merchant.mchid:
            raise ApiError(400, "PARAM_ERROR", f"{prefix}mchid is not the signer's")
        if appid and _string(dict(body), f"{prefix}appid") != merchant.appid:
            raise ApiError(400, "APPID_MCHID_NOT_MATCH", f"{prefix}appid is not bound to mchid")
        if not partner:
            return None, None
        sub_mchid = body.get("sub_mchid")
        if not isinstance(sub_mchid, str) or sub_mchid not in merchant.sub_merchants:
            raise ApiError(400, "NO_AUTH", "sub_mchid is not a sub-merchant of sp_mchid")
        sub_appid = body.get("sub_appid")
        if sub_appid is not None and sub_appid != merchant.sub_merchants[sub_mchid]:
            raise ApiError(400, "APPID_MCHID_NOT_MATCH", "sub_appid is not bound to sub_mchid")
        return sub_mchid, sub_appid

    def order(
        self,
        merchant: Merchant,
        kind: str,
        body: dict[str, Any],
        base_url: str,
        *,
        partner: bool = False,
    ) -> dict[str, Any]:
        sub_mchid, sub_appid = self.ids(merchant, body, partner=partner)
        _string(body, "description", max_bytes=127)
        out_trade_no = _string(body, "out_trade_no")
        if not _OUT_TRADE_NO.match(out_trade_no):
            raise ApiError(400, "PARAM_ERROR", "out_trade_no must be 6-32 of [0-9A-Za-z_-*|]")
        notify_url = _string(body, "notify_url", max_bytes=256)
        if not _URL.match(notify_url):
            raise ApiError(400, "PARAM_ERROR", "notify_url must be an absolute URL without query")
        amount = body.get("amount")
        if not isinstance(amount, dict):
            raise ApiError(400, "PARAM_ERROR", "missing required parameter amount")
        total = _amount(amount.get("total"), "amount.total")
        if amount.get("currency", "CNY") != "CNY":
            raise ApiError(400, "PARAM_ERROR", "amount.currency must be CNY")
        expires_at = None
        if "time_expire" in body:
            try:
                expires_at = datetime.fromisoformat(_string(body, "time_expire", max_bytes=64))
            except ValueError:
                raise ApiError(400, "PARAM_ERROR", "time_expire is not RFC 3339") from None
            if expires_at.tzinfo is None:
                raise ApiError(400, "PARAM_ERROR", "time_expire has no offset")
        if kind == "h5":
            scene = body.get("scene_info")
            if not isinstance(scene, dict) or not isinstance(scene.get("payer_client_ip"), str):
                raise ApiError(400, "PARAM_ERROR", "missing required parameter scene_info")
            h5_info = scene.get("h5_info")
            if not isinstance(h5_info, dict) or not h5_info.get("type"):
                raise ApiError(400, "PARAM_ERROR", "missing required parameter h5_info.type")

        if kind == "jsapi":
            payer = body.get("payer")
            if not isinstance(payer, dict):
                payer = {}
            names = ("sp_openid", "sub_openid") if partner else ("openid",)
            openids = [payer[n] for n in names if n in payer]
            if len(openids) != 1 or not all(
                isinstance(o, str) and _OPENID.match(o) for o in openids
            ):
                raise ApiError(400, "PARAM_ERROR", f"payer needs one of {', '.join(names)}")
            if "sub_openid" in payer and sub_appid is None:
                raise ApiError(400, "PARAM_ERROR", "payer.sub_openid needs sub_appid")

        existing = self.attempts.get(out_trade_no)
        if existing is not None:
            if existing.merchant.mchid != merchant.mchid or existing.order != body:
                raise ApiError(400, "INVALID_REQUEST", "out_trade_no already used (订单号重复)")
            if existing.state == "SUCCESS":
                raise ApiError(400, "ORDERPAID", "order already paid")
            if existing.state == "CLOSED":
                raise ApiError(400, "ORDER_CLOSED", "order already closed")
            attempt = existing
        else:
            attempt = Attempt(
                merchant=merchant,
                out_trade_no=out_trade_no,
                trade_type=_TRADE_TYPES[kind],
                order=body,
                total=total,
                notify_url=notify_url,
                expires_at=expires_at,
                prepay_id=f"wx{_now():%Y%m%d%H%M%S}{secrets.token_hex(8)}",
                sub_mchid=sub_mchid,
                sub_appid=sub_appid,
            )
            self.attempts[out_trade_no] = attempt
        pay_page = f"{base_url.rstrip('/')}/pay/{out_trade_no}"
        if kind == "native":
            return {"code_url": pay_page}
        if kind == "h5":
            return {"h5_url": pay_page}
        return {"prepay_id": attempt.prepay_id}

    def attempt_of(
        self, merchant: Merchant, out_trade_no: str, sub_mchid: str | None = None
    ) -> Attempt:
        attempt = self.attempts.get(out_trade_no)
        if (
            attempt is None
            or attempt.merchant.mchid != merchant.mchid
            or attempt.sub_mchid != sub_mchid
        ):
            raise ApiError(404, "ORDER_NOT_EXIST", "order does not exist")
        return attempt

    @staticmethod
    def merchant_fields(attempt: Attempt) -> dict[str, Any]:
        """Whose attempt it is, as WeChat Pay names it (sp_/sub_ ids in partner mode)."""
        if attempt.sub_mchid is None:
            return {"appid": attempt.merchant.appid, "mchid": attempt.merchant.mchid}
        fields: dict[str, Any] = {
            "sp_appid": attempt.merchant.appid,
            "sp_mchid": attempt.merchant.mchid,
            "sub_mchid": attempt.sub_mchid,
        }
        if attempt.sub_appid is not None:
            fields["sub_appid"] = attempt.sub_appid
        return fields

    def transaction(self, attempt: Attempt) -> dict[str, Any]:
        data: dict[str, Any] = {
            **self.merchant_fields(attempt),
            "out_trade_no": attempt.out_trade_no,
            "trade_type": attempt.trade_type,
            "trade_state": attempt.state,
            "trade_state_desc": _TRADE_STATE_DESC[attempt.state],
            "amount": {"total": attempt.total, "currency": "CNY"},
        }
        if attempt.transaction_id is not None and attempt.success_time is not None:
            data["transaction_id"] = attempt.transaction_id
            data["bank_type"] = "OTHERS"
            data["success_time"] = _rfc3339(attempt.success_time)
            payer = attempt.order.get("payer")
            given = dict(payer) if isinstance(payer, dict) else {}
            if not given:
                given = {
                    ("sp_openid" if attempt.sub_mchid else "openid"): "o" + secrets.token_hex(8)
                }
            data["payer"] = given
            data["amount"].update({"payer_total": attempt.total, "payer_currency": "CNY"})
        return data

    def close(
        self, merchant: Merchant, out_trade_no: str, body: dict[str, Any], *, partner: bool
    ) -> None:
        sub_mchid, _ = self.ids(merchant, body, partner=partner, appid=False)
        attempt = self.attempt_of(merchant, out_trade_no, sub_mchid)
        if attempt.state in ("SUCCESS", "REFUND"):
            raise ApiError(400, "ORDERPAID", "order already paid")
        attempt.state = "CLOSED"

    def codepay(
        self, merchant: Merchant, body: dict[str, Any], *, partner: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """Charge a scanned payment code: the HTTP status and the transaction."""
        sub_mchid, sub_appid = self.ids(merchant, body, partner=partner)
        _string(body, "description", max_bytes=127)
        out_trade_no = _string(body, "out_trade_no")
        if not _OUT_TRADE_NO.match(out_trade_no):
            raise ApiError(400, "PARAM_ERROR", "out_trade_no must be 6-32 of [0-9A-Za-z_-*|]")
        payer = body.get("payer")
        auth_code = payer.get("auth_code") if isinstance(payer, dict) else None
        if not isinstance(auth_code, str) or not auth_code:
            raise ApiError(400, "PARAM_ERROR", "missing required parameter payer.auth_code")
        amount = body.get("amount")
        if not isinstance(amount, dict):
            raise ApiError(400, "PARAM_ERROR", "missing required parameter amount")
        total = _amount(amount.get("total"), "amount.total")
        if amount.get("currency", "CNY") != "CNY":
            raise ApiError(400, "PARAM_ERROR", "amount.currency must be CNY")
        scene = body.get("scene_info")
        store = scene.get("store_info") if isinstance(scene, dict) else None
        if not isinstance(store, dict) or not isinstance(store.get("out_id"), str):
            raise ApiError(400, "PARAM_ERROR", "missing required parameter scene_info.store_info")
        # The code itself is never kept: only its digest, beside the rest of the order.
        digest = hashlib.sha256(auth_code.encode()).hexdigest()
        order = {k: v for k, v in body.items() if k != "payer"} | {"code_digest": digest}
        existing = self.attempts.get(out_trade_no)
        if existing is not None:
            if existing.merchant.mchid != merchant.mchid or existing.order != order:
                raise ApiError(400, "INVALID_REQUEST", "out_trade_no already used (订单号重复)")
            return self.code_answer(existing)
        if not PAYMENT_CODE.fullmatch(auth_code):
            raise ApiError(400, "PARAM_ERROR", "auth_code is not a WeChat Pay payment code")
        if digest in self.used_codes:
            raise ApiError(400, "AUTHCODEEXPIRE", "二维码已过期, 请用户在微信上刷新后再试")
        self.used_codes.add(digest)
        attempt = Attempt(
            merchant=merchant,
            out_trade_no=out_trade_no,
            trade_type="MICROPAY",
            order=order,
            total=total,
            notify_url="",
            expires_at=None,
            prepay_id="",
            state="USERPAYING",
            code_behaviour=CODE_BEHAVIOURS.get(auth_code[-1], "decline"),
            sub_mchid=sub_mchid,
            sub_appid=sub_appid,
        )
        self.attempts[out_trade_no] = attempt
        if attempt.code_behaviour == "pay":
            self.pay(attempt)
        elif attempt.code_behaviour == "decline":
            attempt.state = "PAYERROR"
        elif attempt.code_behaviour == "confirm":
            attempt.confirming_queries = CONFIRMING_QUERIES
        return self.code_answer(attempt)

    def code_answer(self, attempt: Attempt) -> tuple[int, dict[str, Any]]:
        if attempt.code_behaviour == "decline":
            raise ApiError(403, "NOTENOUGH", "用户余额不足")
        return (202 if attempt.state == "USERPAYING" else 200), self.transaction(attempt)

    def confirm_on_query(self, attempt: Attempt) -> None:
        """A "confirm" payer, still confirming, has paid once enough queries came."""
        if attempt.state != "USERPAYING" or attempt.code_behaviour != "confirm":
            return
        if attempt.confirming_queries > 0:
            attempt.confirming_queries -= 1
            return
        self.pay(attempt)

    def reverse(
        self, merchant: Merchant, out_trade_no: str, body: dict[str, Any], *, partner: bool
    ) -> None:
        sub_mchid, _ = self.ids(merchant, body, partner=partner)
        attempt = self.attempt_of(merchant, out_trade_no, sub_mchid)
        if attempt.trade_type != "MICROPAY":
            raise ApiError(400, "INVALID_REQUEST", "only a code sale (付款码) can be reversed")
        if attempt.state == "USERPAYING" and attempt.reverse_refusals == 0:
            attempt.reverse_refusals += 1
            raise ApiError(400, "USERPAYING", "正在支付中不能发起撤销")
        if attempt.state in ("SUCCESS", "REFUND"):
            left = attempt.taken_fen()
            if left:
                attempt.reversed_fen += left
                self.book.record_refund(
                    attempt.out_trade_no,
                    "rv" + secrets.token_hex(10),
                    left,
                    refund_no=f"50{_now():%Y%m%d%H%M%S}{secrets.randbelow(10**12):012d}",
                    at=_now(),
                )
        if attempt.state not in ("CLOSED", "PAYERROR"):
            attempt.state = "REVOKED"

    def refund(
        self, merchant: Merchant, body: dict[str, Any]
    ) -> tuple[Attempt, Refund, dict[str, Any], bool]:
        """The refund for this out_refund_no, and whether this call created it."""
        out_trade_no = _string(body, "out_trade_no")
        out_refund_no = _string(body, "out_refund_no", max_bytes=64)
        if not _OUT_REFUND_NO.match(out_refund_no):
            raise ApiError(400, "PARAM_ERROR", "out_refund_no must be 1-64 of [0-9A-Za-z_-|*@]")
        amount = body.get("amount")
        if not isinstance(amount, dict):
            raise ApiError(400, "PARAM_ERROR", "missing required parameter amount")
        refund_fen = _amount(amount.get("refund"), "amount.refund")
        total = _amount(amount.get("total"), "amount.total")
        if amount.get("currency") != "CNY":
            raise ApiError(400, "PARAM_ERROR", "amount.currency must be CNY")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 80):
            raise ApiError(400, "PARAM_ERROR", "reason is longer than 80 characters")
        notify_url = body.get("notify_url")
        if notify_url is not None and (
            not isinstance(notify_url, str) or not _URL.match(notify_url)
        ):
            raise ApiError(400, "PARAM_ERROR", "notify_url must be an absolute URL without query")
        attempt = self.attempts.get(out_trade_no)
        if (
            attempt is None
            or attempt.merchant.mchid != merchant.mchid
            or attempt.sub_mchid != body.get("sub_mchid")
        ):
            raise ApiError(404, "RESOURCE_NOT_EXISTS", "order does not exist")
        existing = attempt.refunds.get(out_refund_no)
        if existing is not None:
            if existing.amount != refund_fen:
                raise ApiError(
                    400, "INVALID_REQUEST", "out_refund_no already used with another amount"
                )
            return attempt, existing, self.refund_view(attempt, existing), False
        if any(out_refund_no in other.refunds for other in self.attempts.values()):
            raise ApiError(400, "INVALID_REQUEST", "out_refund_no belongs to another order")
        if attempt.state not in ("SUCCESS", "REFUND"):
            raise ApiError(400, "INVALID_REQUEST", "order is not paid")
        if total != attempt.total:
            raise ApiError(400, "PARAM_ERROR", "amount.total is not the order's total")
        if attempt.refunded() + refund_fen > attempt.total:
            raise ApiError(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
        refund = Refund(
            out_refund_no=out_refund_no,
            refund_id=f"50{_now():%Y%m%d%H%M%S}{secrets.randbelow(10**12):012d}",
            amount=refund_fen,
            status="PROCESSING",
            created_at=_now(),
            notify_url=notify_url,
        )
        attempt.refunds[out_refund_no] = refund
        view = self.refund_view(attempt, refund)
        # The money goes back at once here; the first answer still says
        # PROCESSING, as WeChat Pay's usually does.
        refund.status = "SUCCESS"
        refund.success_time = _now()
        attempt.state = "REFUND"
        self.book.record_refund(
            attempt.out_trade_no,
            out_refund_no,
            refund_fen,
            refund_no=refund.refund_id,
            at=refund.success_time,
            requested_at=refund.created_at,
        )
        attempt.notifications.append(self.refund_notification(attempt, refund))
        return attempt, refund, view, True

    def refund_view(self, attempt: Attempt, refund: Refund) -> dict[str, Any]:
        data: dict[str, Any] = {
            "refund_id": refund.refund_id,
            "out_refund_no": refund.out_refund_no,
            "transaction_id": attempt.transaction_id,
            "out_trade_no": attempt.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": _rfc3339(refund.created_at),
            "status": refund.status,
            "funds_account": "AVAILABLE",
            "amount": {
                "total": attempt.total,
                "refund": refund.amount,
                "payer_total": attempt.total,
                "payer_refund": refund.amount,
                "settlement_refund": refund.amount,
                "settlement_total": attempt.total,
                "discount_refund": 0,
                "currency": "CNY",
            },
        }
        if refund.success_time is not None:
            data["success_time"] = _rfc3339(refund.success_time)
        return data

    # -- daily bills -------------------------------------------------------------

    def tradebill(
        self, merchant: Merchant, query: Mapping[str, str], base_url: str
    ) -> dict[str, Any]:
        """Write the bill a tradebill call asks for and hand out its download URL."""
        day = self.bill_day(query.get("bill_date", ""))
        if query.get("sub_mchid"):
            raise ApiError(400, "INVALID_REQUEST", "sub_mchid: this merchant has no sub merchants")
        bill_type = query.get("bill_type", "ALL")
        if bill_type not in COLUMNS_OF_BILL_TYPE:
            raise ApiError(400, "PARAM_ERROR", "bill_type must be ALL, SUCCESS or REFUND")
        tar_type = query.get("tar_type")
        if tar_type not in (None, "GZIP"):
            raise ApiError(400, "PARAM_ERROR", "tar_type must be GZIP")
        if self.book.availability(day) is BillUnavailableReason.NOT_READY:
            raise ApiError(400, "STATEMENT_CREATING", "账单生成中, 请稍后再试")
        wanted = {"ALL": None, "SUCCESS": "PAYMENT", "REFUND": "REFUND"}[bill_type]
        entries = [
            entry
            for entry in self.book.entries_of(day)
            if entry.extra.get("mchid", merchant.mchid) == merchant.mchid
            and wanted in (None, entry.kind)
        ]
        if not entries:
            raise ApiError(400, "NO_STATEMENT_EXIST", "该日期没有账单")
        corrupt = self.faults.take("/v3/bill/tradebill", ("corrupt",)) is not None
        self.forget_expired_bills()
        token = secrets.token_urlsafe(24)
        if self._bill_dir is None:
            self._bill_dir = tempfile.TemporaryDirectory(prefix="wechatpay-bills-")
        path = Path(self._bill_dir.name) / token
        with path.open("wb") as content:
            digest = self.write_bill(
                content, merchant, bill_type, entries, gzip_it=tar_type == "GZIP", corrupt=corrupt
            )
        self.bill_files[token] = BillFile(
            mchid=merchant.mchid,
            path=path,
            gzip=tar_type == "GZIP",
            expires_at=time.monotonic() + self.bill_url_seconds,
        )
        url = f"{base_url.rstrip('/')}/v3/billdownload/file?token={token}"
        if tar_type == "GZIP":
            url += "&tartype=gzip"
        return {"hash_type": "SHA1", "hash_value": digest, "download_url": url}

    def bill_day(self, text: str) -> date:
        if not _BILL_DATE.match(text):
            raise ApiError(400, "INVALID_REQUEST", "bill_date must be YYYY-MM-DD")
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ApiError(400, "INVALID_REQUEST", "bill_date is not a date") from None
        # A day still to come is "being generated" (the kit's NOT_READY), as today is.
        today = beijing_today()
        if day < _months_before(today, BILL_MONTHS_KEPT):
            raise ApiError(400, "INVALID_REQUEST", "only the last three months can be asked for")
        return day

    def write_bill(
        self,
        content: IO[bytes],
        merchant: Merchant,
        bill_type: str,
        entries: Iterable[BillEntry],
        *,
        gzip_it: bool,
        corrupt: bool = False,
    ) -> str:
        """Write the bill into ``content`` (gzipped when asked); the SHA-1 of its raw bytes.

        ``corrupt``: the first row's amount is written 1.00 yuan higher than the
        bytes the hash was taken of.
        """
        columns = COLUMNS_OF_BILL_TYPE[bill_type]
        digest = hashlib.sha1(usedforsecurity=False)
        sink: gzip.GzipFile | IO[bytes] = (
            gzip.GzipFile(fileobj=content, mode="wb", compresslevel=1) if gzip_it else content
        )

        def put(text: str, shown: str | None = None) -> None:
            data = (text + "\r\n").encode()
            digest.update(data)
            sink.write(data if shown is None else (shown + "\r\n").encode())

        put("\ufeff" + ",".join(columns))
        rate = f"{self.book.fee_rate * 100:.2f}%"
        count = payment_fen = refund_fen = fee_fen = 0
        for entry in entries:
            values = _bill_values(entry, merchant, bill_type, rate)
            row = "`" + ",`".join(values[column] for column in columns)
            shown = None
            if corrupt and count == 0:
                amount = "退款金额" if entry.kind == "REFUND" else "应结订单金额"
                values[amount] = fen_to_yuan(entry.amount_fen + 100)
                shown = "`" + ",`".join(values[column] for column in columns)
            put(row, shown)
            count += 1
            fee_fen += entry.fee_fen
            if entry.kind == "REFUND":
                refund_fen += entry.amount_fen
            else:
                payment_fen += entry.amount_fen
        put(",".join(SUMMARY_COLUMNS))
        totals = {
            "总交易单数": str(count),
            "应结订单总金额": fen_to_yuan(payment_fen),
            "退款总金额": fen_to_yuan(refund_fen),
            "充值券退款总金额": "0.00",
            "手续费总金额": fen_to_yuan(fee_fen, 5),
            "订单总金额": fen_to_yuan(payment_fen),
            "申请退款总金额": fen_to_yuan(refund_fen),
        }
        put("`" + ",`".join(totals[column] for column in SUMMARY_COLUMNS))
        if sink is not content:
            sink.close()  # writes the gzip trailer; ``content`` stays open
        return digest.hexdigest()

    def bill_file(self, merchant: Merchant, token: str) -> BillFile:
        self.forget_expired_bills()
        found = self.bill_files.get(token)
        if found is None or found.mchid != merchant.mchid:
            raise ApiError(400, "INVALID_REQUEST", "token is invalid or has expired")
        return found

    def forget_expired_bills(self) -> None:
        now = time.monotonic()
        for token, bill in list(self.bill_files.items()):
            if bill.expires_at <= now:
                bill.path.unlink(missing_ok=True)
                del self.bill_files[token]

    # -- payer and callbacks ---------------------------------------------------

    def settle(self, out_trade_no: str, outcome: str) -> Attempt:
        attempt = self.attempts.get(out_trade_no)
        if attempt is None:
            raise ApiError(404, "ORDER_NOT_EXIST", "order does not exist")
        if attempt.state != "NOTPAY":
            raise ApiError(409, "ORDER_SETTLED", f"order is {attempt.state}")
        if attempt.expires_at is not None and _now() > attempt.expires_at:
            attempt.state = "CLOSED"
            raise ApiError(409, "ORDER_CLOSED", "order expired (time_expire passed)")
        if outcome == "success":
            self.pay(attempt)
            attempt.notifications.append(self.payment_notification(attempt))
        elif outcome == "fail":
            attempt.state = "PAYERROR"
        elif outcome == "close":
            attempt.state = "CLOSED"
        else:
            raise ApiError(400, "PARAM_ERROR", "outcome must be success, fail or close")
        return attempt

    def pay(self, attempt: Attempt) -> None:
        """The payer pays: the attempt succeeds and goes into the day's bill."""
        attempt.state = "SUCCESS"
        attempt.success_time = _now()
        attempt.transaction_id = f"42000{_now():%Y%m%d}{secrets.randbelow(10**15):015d}"
        self.book.record_payment(
            attempt.out_trade_no,
            attempt.transaction_id,
            attempt.total,
            created_at=attempt.created_at,
            at=attempt.success_time,
            subject=str(attempt.order.get("description", "")),
            mchid=attempt.merchant.mchid,
            appid=attempt.merchant.appid,
            trade_type=attempt.trade_type,
            openid="o" + secrets.token_hex(14),
        )

    def envelope(
        self, merchant: Merchant, event_type: str, summary: str, fact: dict[str, Any]
    ) -> bytes:
        nonce = secrets.token_urlsafe(9)[:12]
        associated_data = "transaction" if event_type.startswith("TRANSACTION") else "refund"
        plaintext = json.dumps(fact, ensure_ascii=False).encode()
        document = {
            "id": secrets.token_hex(18),
            "create_time": _rfc3339(_now()),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {
                "original_type": associated_data,
                "algorithm": signing.AEAD_ALGORITHM,
                "ciphertext": signing.encrypt_resource(
                    merchant.apiv3_key, plaintext, nonce=nonce, associated_data=associated_data
                ),
                "associated_data": associated_data,
                "nonce": nonce,
            },
        }
        return json.dumps(document, ensure_ascii=False).encode()

    def payment_notification(self, attempt: Attempt) -> bytes:
        return self.envelope(
            attempt.merchant, "TRANSACTION.SUCCESS", "支付成功", self.transaction(attempt)
        )

    def refund_notification(self, attempt: Attempt, refund: Refund) -> bytes:
        whose: dict[str, Any] = {"mchid": attempt.merchant.mchid}
        if attempt.sub_mchid is not None:
            whose = {"sp_mchid": attempt.merchant.mchid, "sub_mchid": attempt.sub_mchid}
        fact = {
            **whose,
            "out_trade_no": attempt.out_trade_no,
            "transaction_id": attempt.transaction_id,
            "out_refund_no": refund.out_refund_no,
            "refund_id": refund.refund_id,
            "refund_status": refund.status,
            "success_time": _rfc3339(refund.success_time or _now()),
            "user_received_account": "支付用户零钱",
            "amount": {
                "total": attempt.total,
                "refund": refund.amount,
                "payer_total": attempt.total,
                "payer_refund": refund.amount,
            },
        }
        return self.envelope(attempt.merchant, "REFUND.SUCCESS", "退款成功", fact)

    def resign(self, body: bytes, changes: Mapping[str, Any]) -> dict[str, Any]:
        """A callback this gateway made, one field of its resource changed, sealed and signed."""
        made = next(
            (a for a in self.attempts.values() if body in a.notifications),
            None,
        )
        if made is None:
            raise ApiError(404, "NOT_FOUND", "the simulator never made that callback")
        envelope = json.loads(body)
        resource = envelope["resource"]
        key = made.merchant.apiv3_key
        plaintext = signing.decrypt_resource(
            key,
            resource["ciphertext"],
            nonce=resource["nonce"],
            associated_data=resource["associated_data"],
        )
        if plaintext is None:  # pragma: no cover - it made the body itself
            raise ApiError(500, "SYSTEM_ERROR", "cannot open its own callback")
        fact = json.loads(plaintext)
        if changes.get("amount_fen") is not None:
            amount = _amount(changes["amount_fen"], "amount_fen")
            field_name = "refund" if "refund" in fact["amount"] else "total"
            fact["amount"][field_name] = amount
            if field_name == "total" and "payer_total" in fact["amount"]:
                fact["amount"]["payer_total"] = amount
        if changes.get("merchant") is not None:
            fact["sub_mchid" if "sub_mchid" in fact else "mchid"] = str(changes["merchant"])
        if changes.get("out_trade_no") is not None:
            fact["out_trade_no"] = str(changes["out_trade_no"])
        nonce = secrets.token_urlsafe(9)[:12]
        resource["nonce"] = nonce
        resource["ciphertext"] = signing.encrypt_resource(
            key,
            json.dumps(fact, ensure_ascii=False).encode(),
            nonce=nonce,
            associated_data=resource["associated_data"],
        )
        changed = json.dumps(envelope, ensure_ascii=False).encode()
        return {"headers": self.signed_headers(changed), "body": changed.decode()}

    def delivery(self, body: bytes) -> Signer:
        """Headers signed anew at every try, as WeChat Pay signs each re-delivery."""
        return lambda: ({**self.signed_headers(body), "Content-Type": "application/json"}, body)

    async def deliver(
        self,
        attempt: Attempt,
        body: bytes,
        url: str,
        *,
        retry_delays: Sequence[float] = (),
        delay: float = 0.0,
    ) -> int | None:
        sent = await self.notifier.deliver(
            url,
            self.delivery(body),
            ref=attempt.out_trade_no,
            retry_delays=retry_delays,
            delay=delay,
        )
        attempt.deliveries.extend(sent.statuses)
        return sent.status

    async def redeliver_until_accepted(self, attempt: Attempt, body: bytes, url: str) -> None:
        """Send again after each pause of ``redelivery_delays`` until branchpay answers 2xx."""
        if self.redelivery_delays:
            first, *rest = self.redelivery_delays
            await self.deliver(attempt, body, url, delay=first, retry_delays=rest)

    async def notify(self, attempt: Attempt, body: bytes, url: str) -> None:
        """Deliver a callback, re-delivering it as WeChat Pay does when it is not accepted."""
        await self.deliver(attempt, body, url, retry_delays=self.redelivery_delays)


def _months_before(day: date, months: int) -> date:
    """The same day ``months`` calendar months earlier (the month's last day if shorter)."""
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def _yuan(fen: int, places: int = 2) -> str:
    """``fen_to_yuan`` in integer arithmetic: the simulator writes it on every row."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}" + "0" * (places - 2)


def _bill_values(entry: BillEntry, merchant: Merchant, bill_type: str, rate: str) -> dict[str, str]:
    """One row of a trade bill by column name (before the backticks)."""
    refund = entry.kind == "REFUND"
    amount = _yuan(entry.amount_fen)
    zero = "0.00"
    at = to_beijing(entry.at)
    requested = entry.extra.get("requested_at") if bill_type == "REFUND" else None
    return {
        # The REFUND bill dates a row by its payment and has the refund's own times beside.
        "交易时间": to_beijing(entry.created_at) if bill_type == "REFUND" else at,
        "公众账号ID": str(entry.extra.get("appid", merchant.appid)),
        "商户号": merchant.mchid,
        "特约商户号": "0",
        "设备号": "",
        "微信订单号": entry.trade_no,
        "商户订单号": entry.out_trade_no,
        "用户标识": str(entry.extra.get("openid", "")),
        "交易类型": str(entry.extra.get("trade_type", "NATIVE")),
        "交易状态": "REFUND" if refund else "SUCCESS",
        "付款银行": "OTHERS",
        "货币种类": "CNY",
        "应结订单金额": zero if refund else amount,
        "代金券金额": zero,
        "退款申请时间": to_beijing(requested) if isinstance(requested, datetime) else at,
        "退款成功时间": at,
        "微信退款单号": (entry.refund_no or "") if refund else "0",
        "商户退款单号": (entry.out_refund_no or "") if refund else "0",
        "退款金额": amount if refund else zero,
        "充值券退款金额": zero,
        "退款类型": "ORIGINAL" if refund else "",
        "退款状态": _BILL_STATUS.get(entry.status, "SUCCESS") if refund else "",
        "商品名称": entry.subject,
        "商户数据包": "",
        "手续费": _yuan(entry.fee_fen, 5),
        "费率": rate,
        "订单金额": zero if refund else amount,
        "申请退款金额": amount if refund else zero,
        "费率备注": "",
    }


def create_app(
    *,
    merchants: Sequence[Merchant],
    platform_private_key: RSAPrivateKey,
    platform_public_key_id: str,
    redelivery_delays: Sequence[float] = (),
    publish_current_day: bool | None = None,
    bill_url_seconds: float = 30.0,
    platform_certificate: PlatformCertificate | None = None,
) -> Starlette:
    """The simulator for the given merchants; ``app.state.gateway`` is its memory.

    A callback branchpay does not answer with 2xx is sent again after each pause
    of ``redelivery_delays`` (none by default; the demo uses
    :data:`WECHAT_REDELIVERY_DELAYS`). ``publish_current_day``: serve the bill
    of the current Beijing day so far too (``None``: the kit's
    ``BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY`` setting decides, off when unset).
    ``bill_url_seconds``: how long a bill's download URL works.
    ``platform_certificate``: the merchant is switching from a platform
    certificate to the public key (see ``PUT /control/signing``).
    """
    gateway = Gateway(
        merchants,
        platform_private_key,
        platform_public_key_id,
        redelivery_delays,
        publish_current_day=publish_current_day,
        bill_url_seconds=bill_url_seconds,
        platform_certificate=platform_certificate,
    )

    async def api(request: Request) -> Response:
        fault = gateway.take_fault(request.url.path)
        if fault is not None and fault.kind == "error":
            error = {"code": "SYSTEM_ERROR", "message": "系统错误"}
            return gateway.reply(500, error, fault, request.headers.get("wechatpay-serial"))
        body = await request.body()
        try:
            merchant = gateway.authenticate(request, body)
            status, data, after = handle(request, merchant, body)
        except ApiError as error:
            status, data = error.status, {"code": error.code, "message": error.message}
            after = None
        if fault is not None and fault.kind == "stall":
            # The platform has acted; only the answer comes too late.
            await asyncio.sleep(fault.seconds)
        response = gateway.reply(status, data, fault, request.headers.get("wechatpay-serial"))
        response.background = after
        return response

    def handle(
        request: Request, merchant: Merchant, body: bytes
    ) -> tuple[int, dict[str, Any] | None, BackgroundTask | None]:
        """Status, JSON answer and what to do once it is sent."""
        path = request.url.path
        params = request.path_params
        if path == "/v3/bill/tradebill":
            bill = gateway.tradebill(merchant, request.query_params, str(request.base_url))
            return 200, bill, None
        partner = path.startswith("/v3/pay/partner/")
        if path.endswith("/transactions/codepay"):
            status, transaction = gateway.codepay(
                merchant, gateway.json_body(body), partner=partner
            )
            return status, transaction, None
        if path.endswith("/reverse"):
            data = gateway.json_body(body)
            gateway.reverse(merchant, params["out_trade_no"], data, partner=partner)
            keys = ("sp_appid", "sp_mchid", "sub_appid", "sub_mchid") if partner else ()
            answer = {k: data[k] for k in keys if k in data} or {
                "appid": merchant.appid,
                "mchid": merchant.mchid,
            }
            return 200, answer | {"out_trade_no": params["out_trade_no"]}, None
        if request.method == "POST" and "kind" in params:
            kind = params["kind"]
            if kind not in _TRADE_TYPES:
                raise ApiError(404, "NOT_FOUND", "no such API")
            order = gateway.order(
                merchant, kind, gateway.json_body(body), str(request.base_url), partner=partner
            )
            return 200, order, None
        if path.endswith("/close"):
            data = gateway.json_body(body)
            gateway.close(merchant, params["out_trade_no"], data, partner=partner)
            return 204, None, None
        if "/transactions/out-trade-no/" in path:
            query = request.query_params
            if query.get("sp_mchid" if partner else "mchid") != merchant.mchid:
                raise ApiError(400, "PARAM_ERROR", "query parameter mchid is not the signer's")
            sub_mchid = query.get("sub_mchid") if partner else None
            if partner and sub_mchid not in merchant.sub_merchants:
                raise ApiError(400, "NO_AUTH", "sub_mchid is not a sub-merchant of sp_mchid")
            attempt = gateway.attempt_of(merchant, params["out_trade_no"], sub_mchid)
            gateway.confirm_on_query(attempt)
            return 200, gateway.transaction(attempt), None
        if request.method == "POST":
            attempt, refund, view, created = gateway.refund(merchant, gateway.json_body(body))
            after = None
            if created and refund.notify_url:
                after = BackgroundTask(
                    gateway.notify, attempt, attempt.notifications[-1], refund.notify_url
                )
            return 200, view, after
        out_refund_no = params["out_refund_no"]
        for attempt in gateway.attempts.values():
            found = attempt.refunds.get(out_refund_no)
            if found is not None and attempt.merchant.mchid == merchant.mchid:
                return 200, gateway.refund_view(attempt, found), None
        raise ApiError(404, "RESOURCE_NOT_EXISTS", "refund does not exist")

    async def bill_download(request: Request) -> Response:
        # Signed requests only, but the file itself comes back unsigned: the
        # merchant checks it against the tradebill answer's hash instead.
        try:
            merchant = gateway.authenticate(request, await request.body())
            bill = gateway.bill_file(merchant, request.query_params.get("token", ""))
        except ApiError as error:
            refusal = {"code": error.code, "message": error.message}
            return gateway.reply(
                error.status, refusal, None, request.headers.get("wechatpay-serial")
            )
        media = "application/x-gzip" if bill.gzip else "text/plain; charset=utf-8"
        content = bill.path.open("rb")  # still readable should the token expire meanwhile

        async def chunks() -> AsyncIterator[bytes]:
            with content:
                while chunk := content.read(_BILL_CHUNK):
                    yield chunk

        return StreamingResponse(
            chunks(), media_type=media, headers={"Request-ID": secrets.token_hex(16)}
        )

    async def pay_page(request: Request) -> Response:
        attempt = gateway.attempts.get(request.path_params["out_trade_no"])
        if attempt is None:
            return HTMLResponse("<p>No such order.</p>", status_code=404)
        return HTMLResponse(
            render_pay_page(
                "WeChat Pay simulator",
                heading="WeChat Pay (simulator)",
                lines=[str(attempt.order["description"]), attempt.state],
                amount_fen=attempt.total,
                outcomes=(("success", "Pay"), ("fail", "Fail"), ("close", "Close")),
            )
        )

    async def pay(request: Request) -> Response:
        form = await request.form()
        outcome = str(form.get("outcome", ""))
        deliver = str(form.get("deliver", "1")) not in ("0", "false", "no")
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            attempt = gateway.settle(request.path_params["out_trade_no"], outcome)
        except ApiError as error:
            if wants_json:
                return JSONResponse({"code": error.code, "message": error.message}, error.status)
            return HTMLResponse(f"<p>{html.escape(error.message)}</p>", status_code=error.status)
        delivered = None
        later = None
        if deliver and outcome == "success":
            body = attempt.notifications[-1]
            delivered = await gateway.deliver(attempt, body, attempt.notify_url)
            if delivered is None or not 200 <= delivered < 300:
                later = BackgroundTask(
                    gateway.redeliver_until_accepted, attempt, body, attempt.notify_url
                )
        result = {"trade_state": attempt.state, "delivered": delivered}
        if wants_json:
            return JSONResponse(result, background=later)
        return HTMLResponse(
            f"<p>Order {html.escape(attempt.out_trade_no)}: {attempt.state}</p>", background=later
        )

    async def notifications(request: Request) -> Response:
        attempt = gateway.attempts.get(request.path_params["out_trade_no"])
        if attempt is None:
            return JSONResponse({"code": "ORDER_NOT_EXIST"}, 404)
        stamp = request.query_params.get("timestamp")
        timestamp = int(stamp) if stamp and stamp.lstrip("-").isdigit() else None
        return JSONResponse(
            {
                "notify_url": attempt.notify_url,
                "notifications": [
                    {
                        "headers": gateway.signed_headers(body, timestamp=timestamp),
                        "body": body.decode(),
                    }
                    for body in attempt.notifications
                ],
            }
        )

    async def redeliver(request: Request) -> Response:
        attempt = gateway.attempts.get(request.path_params["out_trade_no"])
        if attempt is None or not attempt.notifications:
            return JSONResponse({"code": "NO_NOTIFICATION"}, 404)
        plan = await request.json() if await request.body() else {}
        order = plan.get("order", [len(attempt.notifications) - 1])
        count = int(plan.get("count", 1))
        delay = float(plan.get("delay_seconds", 0))
        url = plan.get("url", attempt.notify_url)
        if not all(isinstance(i, int) and 0 <= i < len(attempt.notifications) for i in order):
            return JSONResponse({"code": "PARAM_ERROR", "message": "bad order"}, 400)

        async def send() -> list[int | None]:
            await asyncio.sleep(delay)
            return [
                await gateway.deliver(attempt, attempt.notifications[i], url)
                for i in order
                for _ in range(count)
            ]

        if plan.get("background"):
            return JSONResponse(
                {"scheduled": len(order) * count}, 202, background=BackgroundTask(send)
            )
        return JSONResponse({"statuses": await send()})

    async def signers(request: Request) -> Response:
        plan = await request.json()
        callbacks = plan.get("callbacks", gateway.callbacks_signed_by)
        replies = plan.get("replies", gateway.replies_signed_by)
        if callbacks not in SIGNERS or replies not in REPLY_SIGNERS:
            return JSONResponse({"code": "PARAM_ERROR", "message": "unknown signer"}, 400)
        wants_certificate = "certificate" in (callbacks, replies)
        if wants_certificate and gateway.platform_certificate is None:
            return JSONResponse({"code": "PARAM_ERROR", "message": "no platform certificate"}, 400)
        gateway.callbacks_signed_by, gateway.replies_signed_by = callbacks, replies
        return JSONResponse({"callbacks": callbacks, "replies": replies})

    async def taken(request: Request) -> Response:
        out_trade_no = request.path_params["out_trade_no"]
        attempt = gateway.attempts.get(out_trade_no)
        taken_fen = attempt.taken_fen() if attempt is not None else 0
        return JSONResponse({"out_trade_no": out_trade_no, "taken_fen": taken_fen})

    async def resign(request: Request) -> Response:
        try:
            plan = await request.json()
            body = str(plan["body"]).encode()
            changes = {
                name: plan[name]
                for name in ("amount_fen", "merchant", "out_trade_no")
                if plan.get(name) is not None
            }
            if not changes:
                raise ApiError(400, "PARAM_ERROR", "name amount_fen, merchant or out_trade_no")
            return JSONResponse(gateway.resign(body, changes))
        except ApiError as error:
            return JSONResponse({"code": error.code, "message": error.message}, error.status)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"code": "PARAM_ERROR", "message": "malformed resign"}, 400)

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            gateway.faults.clear()
            return Response(status_code=204)
        plan = await request.json()
        kind = plan.get("kind")
        if kind not in _FAULT_KINDS:
            return JSONResponse({"code": "PARAM_ERROR", "message": "unknown fault kind"}, 400)
        gateway.faults.add(
            Fault(
                kind=kind,
                remaining=int(plan.get("times", 1)),
                seconds=float(plan.get("stall_seconds", 1.0)),
                target=str(plan.get("path", "/v3/")),
                prefix=True,
            )
        )
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", api, methods=["POST"]),
            Route(
                "/v3/pay/transactions/out-trade-no/{out_trade_no}/reverse", api, methods=["POST"]
            ),
            Route("/v3/pay/transactions/out-trade-no/{out_trade_no}", api, methods=["GET"]),
            Route("/v3/pay/transactions/{kind}", api, methods=["POST"]),
            Route(
                "/v3/pay/partner/transactions/out-trade-no/{out_trade_no}/close",
                api,
                methods=["POST"],
            ),
            Route(
                "/v3/pay/partner/transactions/out-trade-no/{out_trade_no}/reverse",
                api,
                methods=["POST"],
            ),
            Route("/v3/pay/partner/transactions/out-trade-no/{out_trade_no}", api, methods=["GET"]),
            Route("/v3/pay/partner/transactions/{kind}", api, methods=["POST"]),
            Route("/v3/refund/domestic/refunds", api, methods=["POST"]),
            Route("/v3/refund/domestic/refunds/{out_refund_no}", api, methods=["GET"]),
            Route("/v3/bill/tradebill", api, methods=["GET"]),
            Route("/v3/billdownload/file", bill_download, methods=["GET"]),
            Route("/pay/{out_trade_no}", pay_page, methods=["GET"]),
            Route("/pay/{out_trade_no}", pay, methods=["POST"]),
            Route("/control/notifications/resign", resign, methods=["POST"]),
            Route("/control/notifications/{out_trade_no}", notifications, methods=["GET"]),
            Route("/control/notifications/{out_trade_no}/deliver", redeliver, methods=["POST"]),
            Route("/control/payments/{out_trade_no}/taken", taken, methods=["GET"]),
            Route("/control/signing", signers, methods=["PUT"]),
            Route("/control/faults", faults, methods=["POST", "DELETE"]),
            *control_routes("/control", notifier=gateway.notifier, faults=gateway.faults),
            *bill_routes("/control", gateway.book),
        ],
        lifespan=gateway.notifier.lifespan,
    )
    app.state.gateway = gateway
    return app
