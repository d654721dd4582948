"""An Alipay OpenAPI gateway on loopback, for tests and the demo.

It checks requests the way Alipay does (known ``app_id``, RSA2 signature with
the merchant's public key, common parameters, ``biz_content`` fields, amount
format, refund and close rules) and answers with responses signed by the
platform key it was given, so the adapter's verification is exercised for
real. Trades live in memory.

Endpoints:

- ``GET|POST /gateway.do``: the OpenAPI gateway. Server calls (precreate,
  query, refund, fastpay.refund.query, close) answer JSON. The browser
  methods (page.pay, wap.pay) and the app order string (app.pay) open the
  cashier: GET shows a pay page, POST with ``outcome=success|fail|close``
  pays, leaves unpaid, or closes the trade.
- ``GET|POST /qr/{code}``: what a payer's phone opens after scanning a
  precreate code; POST with ``outcome`` settles like the cashier.
- In-app (JSAPI): ``alipay.trade.create`` (``product_code=JSAPI_PAY``, exactly
  one of ``buyer_id``, a ``2088`` user id, or ``buyer_open_id``) opens the
  payer's trade and answers its ``trade_no``; ``POST /_control/trade-pay/{trade_no}``
  is the payer's ``my.tradePay`` in the Alipay app: ``outcome=success`` pays it
  and sends the notification (``resultCode`` 9000), ``fail`` (4000) and
  ``cancel`` (6001) leave it unpaid. The trade's buyer shows in
  ``/_control/trades/{out_trade_no}``.
- Counter sales: ``alipay.trade.pay`` charges a payment code (``scene``
  ``bar_code`` or ``wave_code``; the code 16-24 digits starting 25-30, each
  code pays one trade only; the simulator keeps only a digest of it). The
  code's last digit says what the payer does, so tests choose it:

  - ``1``: paid at once: ``10000`` with ``gmt_payment`` (no notification is
    sent for it; the trade keeps one, as for every payment);
  - ``2``: the payer confirms on the phone: ``10003`` and the first 2 queries
    find ``WAIT_BUYER_PAY``; the 3rd query finds it paid, and the simulator
    then sends the ``TRADE_SUCCESS`` notification to the sale's ``notify_url``;
  - ``3``: the payer never confirms: ``10003``, then ``WAIT_BUYER_PAY`` until
    cancelled;
  - any other digit: declined, ``40004 ACQ.BUYER_BALANCE_NOT_ENOUGH`` (no trade).

  A code that is not an Alipay code answers ``ACQ.PAYMENT_AUTH_CODE_INVALID``,
  one used before ``ACQ.PAYMENT_AUTH_CODE_INVALID`` too; paying the same
  ``out_trade_no`` again answers ``10003`` while the payer confirms,
  ``ACQ.TRADE_HAS_SUCCESS`` once paid, ``ACQ.TRADE_HAS_CLOSE`` once closed.
  ``alipay.trade.cancel`` closes an unpaid trade (``action=close``: a later
  confirm cannot pay it) or refunds a paid one in full (``action=refund``,
  on the bill as a refund numbered ``cancel`` + out_trade_no); repeated, it
  answers the same action; for a trade it never saw, ``ACQ.TRADE_NOT_EXIST``.
- ``GET /downloadBillFile.resource``: the daily bill that
  ``alipay.data.dataservice.bill.downloadurl.query`` links to (a plain GET,
  token-protected, valid ``bill_url_seconds``, 30 s as at Alipay): the zip of
  the day's detail and summary in Alipay's layout (:mod:`providers.alipay.bills`),
  made from the :class:`~providers.kit.bills.BillBook` in which every paid
  trade and every refund is recorded as it completes.
- ``/_control/...``: test and demo controls: settle a trade and fetch its
  notification without sending it, list a trade's notifications, re-send one
  (several copies, after a delay, or all of them newest first), re-sign a
  notification it sent with a field changed, inject gateway faults, and read
  call counts, trade state and what was taken from the payer per trade (the
  ledger: paid minus refunded, 0 when never paid); ``/_control/bills``
  (:func:`providers.kit.bills.bill_routes`): when bills are published and the
  adjustments a test makes to them.

Public-key certificate mode: the apps given ``app_cert_sns`` must send
``app_cert_sn`` and ``alipay_root_cert_sn`` (refused with the simulator's
``isv.invalid-app-cert-sn`` / ``isv.invalid-alipay-root-cert-sn``), and their
answers carry ``alipay_cert_sn`` beside the signed member; an app in public-key
mode sending them is refused (``isv.cert-mode-not-enabled``). One platform key
signs in both modes: the Alipay certificate holds its public key.

Third-party app authorization: a call carrying an ``app_auth_token`` the
simulator granted to the signing app acts for the merchant's app (its trades,
its merchant PID); any other token is refused ``aop.invalid-app-auth-token``.

Notifications are sent only to loopback notify URLs; anything else is
recorded as not delivered, so a simulator never talks to the outside world.

Deviation from Alipay, on purpose: a precreate trade exists (WAIT_BUYER_PAY)
from the precreate call on, where Alipay creates it when the code is first
scanned. Tests need a trade they can query and close before a scan.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, urlencode

from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from api.plugin import BEIJING, from_beijing, load_private_key, load_public_key, to_beijing
from providers.alipay.amounts import MAX_FEN, AmountError, fen_to_yuan, yuan_to_fen
from providers.alipay.bills import (
    BAD_ARGUMENTS,
    BILL_METHOD,
    EMPTY_DATA_WITH_BILL_FILE,
    EXPIRED_LINK,
    NOT_EXIST,
    NOT_READY,
    account_of,
    bill_zip,
)
from providers.alipay.signing import notification_string, request_string, sign, verify
from providers.kit.bills import BillBook, bill_routes
from providers.kit.driver import CODE_BEHAVIOURS
from providers.kit.simulator import Fault, FaultQueue, Notifier, control_routes, page, pay_page

logger = logging.getLogger("branchpay.providers.alipay.simulator")

DEFAULT_SELLER_ID = "2088000000000001"
MAX_BODY_BYTES = 64 * 1024
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# The first day whose bill the simulator keeps (Alipay's SDK: "最早可下载2016年1月1日").
FIRST_BILL_DAY = date(2016, 1, 1)
_CASHIER_METHODS = {
    "alipay.trade.page.pay": "FAST_INSTANT_TRADE_PAY",
    "alipay.trade.wap.pay": "QUICK_WAP_WAY",
    "alipay.trade.app.pay": "QUICK_MSECURITY_PAY",
}
_SERVER_METHODS = frozenset(
    {
        "alipay.trade.precreate",
        "alipay.trade.query",
        "alipay.trade.refund",
        "alipay.trade.fastpay.refund.query",
        "alipay.trade.close",
        "alipay.trade.pay",
        "alipay.trade.cancel",
        "alipay.trade.create",
        BILL_METHOD,
    }
)
# Alipay payment codes (alipay.trade.pay's auth_code): 16-24 digits starting 25-30.
PAYMENT_CODE = re.compile(r"(2[5-9]|30)[0-9]{14,22}")
# The last digit of a payment code: what the payer does (anything else: declined).
CONFIRMING_QUERIES = 2  # "confirm": the queries that still find the payer confirming
_COMMON_REQUIRED = ("app_id", "method", "charset", "sign_type", "sign", "timestamp", "version")

Outcome = Literal["success", "fail", "close"]
FaultKind = Literal["http_500", "stall", "system_error", "unsigned", "bad_signature", "retry_flag"]


@dataclass
class Refund:
    out_request_no: str
    amount_fen: int
    refunded_at: datetime


@dataclass
class Notification:
    """One notification Alipay would send, kept so it can be sent again."""

    params: dict[str, str]
    notify_url: str

    @property
    def body(self) -> str:
        return urlencode(self.params)


@dataclass
class Trade:
    app_id: str
    out_trade_no: str
    trade_no: str
    total_fen: int
    subject: str
    api_method: str
    notify_url: str | None
    created_at: datetime
    status: str = "WAIT_BUYER_PAY"
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    qr_code: str | None = None
    refunds: dict[str, Refund] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)
    # A counter sale: what the payer does, the queries left before a confirming
    # payer has paid, and what alipay.trade.cancel did to it.
    code_behaviour: str | None = None
    confirming_queries: int = 0
    cancel_action: str | None = None
    # An in-app (JSAPI) trade's payer: ("buyer_id" | "buyer_open_id", the id).
    buyer: tuple[str, str] | None = None
    # The service provider's app that opened it for app_id (third-party authorization).
    isv_app_id: str | None = None

    @property
    def refunded_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds.values())

    @property
    def taken_fen(self) -> int:
        """What the payer is out of pocket for this trade: paid minus refunded."""
        return self.total_fen - self.refunded_fen if self.paid_at is not None else 0


@dataclass(frozen=True)
class BillFile:
    """A bill zip a download URL hands out, until ``expires`` (``time.monotonic``)."""

    token: str
    name: str
    data: bytes
    expires: float


@dataclass
class Delivery:
    out_trade_no: str
    notify_id: str
    status_code: int | None
    reply: str


class GatewayRefusal(Exception):
    """A request Alipay refuses; carries the response member's content."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.content = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}
        # Alipay signs business refusals (40004) but not gateway-level ones.
        self.signed = code == "40004"


def _business(sub_code: str, sub_msg: str) -> GatewayRefusal:
    return GatewayRefusal("40004", "Business Failed", sub_code, sub_msg)


def _invalid(sub_code: str, sub_msg: str) -> GatewayRefusal:
    return GatewayRefusal("40002", "Invalid Arguments", sub_code, sub_msg)


def _missing(sub_code: str, sub_msg: str) -> GatewayRefusal:
    return GatewayRefusal("40001", "Missing Required Arguments", sub_code, sub_msg)


class AlipaySimulator:
    """State and behaviour of the simulated gateway; ``app`` serves it."""

    def __init__(
        self,
        *,
        apps: Mapping[str, rsa.RSAPublicKey | str],
        alipay_private_key: rsa.RSAPrivateKey | str,
        seller_id: str = DEFAULT_SELLER_ID,
        any_app_key: rsa.RSAPublicKey | str | None = None,
        publish_current_day: bool | None = None,
        bill_url_seconds: float = 30.0,
        sellers: Mapping[str, str] | None = None,
        app_cert_sns: Mapping[str, str] | None = None,
        alipay_cert_sn: str | None = None,
        alipay_root_cert_sn: str | None = None,
        app_auth_tokens: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        # Third-party app authorization: app_auth_token -> (the ISV's app, the merchant's app).
        self.app_auth_tokens = dict(app_auth_tokens or {})
        # Certificate mode: app_id -> its app_cert_sn; the SNs of Alipay's certificates.
        self.app_cert_sns = dict(app_cert_sns or {})
        if self.app_cert_sns and not (alipay_cert_sn and alipay_root_cert_sn):
            raise ValueError("certificate-mode apps need alipay_cert_sn and alipay_root_cert_sn")
        self.alipay_cert_sn = alipay_cert_sn
        self.alipay_root_cert_sn = alipay_root_cert_sn
        self.any_app_key = (
            load_public_key(any_app_key) if isinstance(any_app_key, str) else any_app_key
        )
        self.apps = {
            app_id: key if isinstance(key, rsa.RSAPublicKey) else load_public_key(key)
            for app_id, key in apps.items()
        }
        self.alipay_key = (
            alipay_private_key
            if isinstance(alipay_private_key, rsa.RSAPrivateKey)
            else load_private_key(alipay_private_key)
        )
        self.seller_id = seller_id
        # app_id -> the merchant PID that owns the app; any other app is seller_id's.
        self.sellers = dict(sellers or {})
        self.trades: dict[tuple[str, str], Trade] = {}
        self.qr_codes: dict[str, tuple[str, str]] = {}
        # Digests of the payment codes charged: a code pays one trade only.
        self.used_codes: set[str] = set()
        self.faults = FaultQueue()
        self.notifier = Notifier(timeout=10.0)
        self.calls: dict[str, int] = {}
        self.deliveries: list[Delivery] = []
        self._wrong_key: rsa.RSAPrivateKey | None = None
        self.bills = BillBook(publish_current_day=publish_current_day)
        self.bill_url_seconds = bill_url_seconds
        self.bill_files: dict[str, BillFile] = {}
        self.app = Starlette(
            routes=[
                Route("/gateway.do", self.gateway, methods=["GET", "POST"]),
                Route("/qr/{code}", self.qr_page, methods=["GET", "POST"]),
                Route(
                    "/downloadBillFile.resource",
                    self.bill_download,
                    methods=["GET"],
                    name="bill_download",
                ),
                Route("/_control/settle/{out_trade_no}", self.control_settle, methods=["POST"]),
                Route(
                    "/_control/notifications/{out_trade_no}",
                    self.control_notifications,
                    methods=["GET"],
                ),
                Route("/_control/notifications/resign", self.control_resign, methods=["POST"]),
                Route(
                    "/_control/notifications/{out_trade_no}/send",
                    self.control_send,
                    methods=["POST"],
                ),
                Route("/_control/faults", self.control_faults, methods=["POST", "DELETE"]),
                Route("/_control/calls", self.control_calls, methods=["GET"]),
                Route("/_control/deliveries", self.control_deliveries, methods=["GET"]),
                Route("/_control/trades/{out_trade_no}", self.control_trade, methods=["GET"]),
                Route("/_control/trades/{out_trade_no}/taken", self.control_taken, methods=["GET"]),
                Route("/_control/trade-pay/{trade_no}", self.control_trade_pay, methods=["POST"]),
                *bill_routes("/_control", self.bills),
                *control_routes("/_control", notifier=self.notifier, faults=self.faults),
            ],
            lifespan=self.notifier.lifespan,
        )
        self.app.state.simulator = self

    def seller_of(self, app_id: str | None) -> str:
        """The merchant PID (seller_id) that owns ``app_id``."""
        return self.sellers.get(app_id or "", self.seller_id)

    # --- the gateway ----------------------------------------------------------

    async def gateway(self, request: Request) -> Response:
        try:
            params, outcome = await self._request_params(request)
        except GatewayRefusal as refusal:
            return self._json_response("error_response", refusal.content, signed=False)
        api_method = params.get("method", "")
        if api_method in _CASHIER_METHODS:
            return await self._cashier(request, params, outcome)
        member = api_method.replace(".", "_") + "_response" if api_method else "error_response"
        self.calls[api_method] = self.calls.get(api_method, 0) + 1
        fault = self.faults.take(api_method)
        if fault is not None and fault.kind == "http_500":
            return Response("Service Unavailable", status_code=502)
        if fault is not None and fault.kind == "system_error":
            busy = GatewayRefusal("20000", "Service Currently Unavailable", "isp.unknow-error", "")
            return self._json_response(
                member, busy.content, signed=True, cert_sn=self._cert_sn_for(params)
            )
        try:
            app_id = self._authenticate(params)
            if api_method not in _SERVER_METHODS:
                raise _invalid("isv.invalid-method", "不存在的方法名")
            biz = _biz_content(params)
            if fault is not None and fault.kind == "retry_flag":
                # Not processed; Alipay asks for the same call again.
                content = {"code": "10000", "msg": "Success", "retry_flag": "Y"}
            else:
                content = self._serve(request, app_id, api_method, biz, params)
            signed = True
        except GatewayRefusal as refusal:
            content, signed = refusal.content, refusal.signed
        if fault is not None and fault.kind == "stall":
            # The call was processed; only the answer is late, as when a reply is lost.
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.kind == "unsigned":
            signed = False
        return self._json_response(
            member,
            content,
            signed=signed,
            wrong_key=fault is not None and fault.kind == "bad_signature",
            cert_sn=self._cert_sn_for(params),
        )

    def _cert_sn_for(self, params: Mapping[str, str]) -> str | None:
        """``alipay_cert_sn`` for the answers to a certificate-mode app, else None."""
        return self.alipay_cert_sn if params.get("app_id") in self.app_cert_sns else None

    async def _request_params(self, request: Request) -> tuple[dict[str, str], str | None]:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise _invalid("isv.invalid-parameter", "请求过大")
        try:
            pairs = parse_qsl(request.url.query, keep_blank_values=True)
            if body:
                pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise _invalid("isv.invalid-encoding", "参数编码错误") from None
        params: dict[str, str] = {}
        outcome: str | None = None
        for key, value in pairs:
            if key == "outcome":
                outcome = value
                continue
            if key in params:
                raise _invalid("isv.invalid-parameter", f"重复的参数 {key}")
            params[key] = value
        return params, outcome

    def _authenticate(self, params: Mapping[str, str]) -> str:
        """The app the call acts for: the signer's, or the merchant app of its app_auth_token."""
        for name in _COMMON_REQUIRED:
            if not params.get(name):
                raise _missing(f"isv.missing-{name.replace('_', '-')}", f"缺少{name}参数")
        app_id = params["app_id"]
        key = self.apps.get(app_id, self.any_app_key)
        if key is None:
            raise _invalid("isv.invalid-app-id", "无效的AppID参数")
        if params["charset"].lower() != "utf-8":
            raise _invalid("isv.invalid-charset", "字符集错误")
        if params["sign_type"] != "RSA2":
            raise _invalid("isv.invalid-signature-type", "无效的签名类型")
        if params["version"] != "1.0":
            raise _invalid("isv.invalid-version", "版本号错误")
        if params.get("format", "JSON").upper() != "JSON":
            raise _invalid("isv.invalid-format", "无效的数据格式")
        try:
            datetime.strptime(params["timestamp"], _TIME_FORMAT)
        except ValueError:
            raise _invalid("isv.invalid-timestamp", "非法的时间戳参数") from None
        if not verify(key, request_string(params), params["sign"]):
            raise _invalid("isv.invalid-signature", "验签出错")
        self._check_cert_sns(app_id, params)
        token = params.get("app_auth_token")
        if token:
            grant = self.app_auth_tokens.get(token)
            if grant is None or grant[0] != app_id:
                raise _invalid("aop.invalid-app-auth-token", "无效的应用授权令牌")
            # The call acts for the merchant's app: its trades, its merchant.
            return grant[1]
        return app_id

    def _check_cert_sns(self, app_id: str, params: Mapping[str, str]) -> None:
        """A certificate-mode app names its certificate and Alipay's root; others neither."""
        expected = self.app_cert_sns.get(app_id)
        sent = (params.get("app_cert_sn"), params.get("alipay_root_cert_sn"))
        if expected is None:
            if any(sent):
                raise _invalid("isv.cert-mode-not-enabled", "应用未开启公钥证书模式")
            return
        if sent[0] != expected:
            raise _invalid("isv.invalid-app-cert-sn", "应用公钥证书序列号不匹配")
        if sent[1] != self.alipay_root_cert_sn:
            raise _invalid("isv.invalid-alipay-root-cert-sn", "支付宝根证书序列号不匹配")

    def _serve(
        self,
        request: Request,
        app_id: str,
        api_method: str,
        biz: Mapping[str, Any],
        params: Mapping[str, str],
    ) -> dict[str, Any]:
        if api_method == "alipay.trade.precreate":
            return self._precreate(request, app_id, biz, params)
        if api_method == BILL_METHOD:
            return self._bill_download_url(request, app_id, biz)
        if api_method == "alipay.trade.pay":
            return self._pay(app_id, biz, params)
        if api_method == "alipay.trade.create":
            return self._create(app_id, biz, params)
        out_trade_no = _required(biz, "out_trade_no")
        trade = self.trades.get((app_id, out_trade_no))
        if api_method == "alipay.trade.fastpay.refund.query":
            out_request_no = biz.get("out_request_no") or out_trade_no
            return self._refund_query(trade, out_trade_no, str(out_request_no))
        if trade is None:
            raise _business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        if api_method == "alipay.trade.query":
            self._confirm_on_query(trade)
            return self._query(trade)
        if api_method == "alipay.trade.close":
            return self._close(trade)
        if api_method == "alipay.trade.cancel":
            return self._cancel(trade)
        return self._refund(trade, biz)

    # --- in-app (JSAPI) --------------------------------------------------------

    def _create(
        self, app_id: str, biz: Mapping[str, Any], params: Mapping[str, str]
    ) -> dict[str, Any]:
        out_trade_no, total_fen, subject = _order_fields(biz)
        _check_time_expire(biz)
        if biz.get("product_code") != "JSAPI_PAY":
            raise _business("ACQ.PRODUCT_CODE_ERROR", "product_code 应为 JSAPI_PAY")
        named = [(k, biz[k]) for k in ("buyer_id", "buyer_open_id") if biz.get(k)]
        if len(named) != 1 or not all(isinstance(v, str) for _, v in named):
            raise _business("ACQ.INVALID_PARAMETER", "buyer_id 与 buyer_open_id 须且只须传一个")
        kind, buyer = named[0]
        if kind == "buyer_id" and not re.fullmatch(r"2088[0-9]{12}", buyer):
            raise _business("ACQ.BUYER_NOT_EXIST", "买家不存在")
        existing = self.trades.get((app_id, out_trade_no))
        if existing is not None:
            if (existing.total_fen, existing.subject, existing.buyer) != (
                total_fen,
                subject,
                (kind, buyer),
            ):
                raise _business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            if existing.status != "WAIT_BUYER_PAY":
                raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            trade = existing
        else:
            trade = self._open_trade(app_id, out_trade_no, total_fen, subject, params)
            trade.buyer = (kind, buyer)
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": out_trade_no,
            "trade_no": trade.trade_no,
        }

    async def control_trade_pay(self, request: Request) -> Response:
        """The payer's ``my.tradePay({tradeNO})``: ``outcome`` success, fail or cancel."""
        trade_no = request.path_params["trade_no"]
        trade = next((t for t in self.trades.values() if t.trade_no == trade_no and t.buyer), None)
        if trade is None:
            return JSONResponse({"resultCode": "4000", "error": "unknown trade_no"}, 404)
        form = dict(parse_qsl((await request.body()).decode("utf-8")))
        outcome = form.get("outcome", "success")
        if outcome in ("fail", "cancel"):
            return JSONResponse({"resultCode": "4000" if outcome == "fail" else "6001"})
        if outcome != "success":
            return JSONResponse({"error": "outcome must be success, fail or cancel"}, 400)
        try:
            notification = self.settle(trade, "success")
        except ValueError as exc:
            return JSONResponse({"resultCode": "4000", "error": str(exc)}, 409)
        if notification is not None and form.get("deliver", "1") == "1":
            await self._deliver(trade, notification)
        return JSONResponse({"resultCode": "9000", "tradeNo": trade.trade_no})

    # --- counter sales --------------------------------------------------------

    def _pay(
        self, app_id: str, biz: Mapping[str, Any], params: Mapping[str, str]
    ) -> dict[str, Any]:
        out_trade_no, total_fen, subject = _order_fields(biz)
        if biz.get("scene") not in ("bar_code", "wave_code"):
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: scene")
        auth_code = _required(biz, "auth_code")
        existing = self.trades.get((app_id, out_trade_no))
        if existing is not None:
            if existing.api_method != "alipay.trade.pay" or existing.total_fen != total_fen:
                raise _business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            if existing.status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                raise _business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if existing.status == "TRADE_CLOSED":
                raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            return self._pay_answer(existing)
        # The code itself is never echoed in an answer or kept: only its digest.
        digest = hashlib.sha256(auth_code.encode()).hexdigest()
        if not PAYMENT_CODE.fullmatch(auth_code) or digest in self.used_codes:
            raise _business("ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败, 获取顾客账户信息失败")
        self.used_codes.add(digest)
        behaviour = CODE_BEHAVIOURS.get(auth_code[-1])
        if behaviour is None:
            raise _business("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足")
        trade = self._open_trade(app_id, out_trade_no, total_fen, subject, params)
        trade.code_behaviour = behaviour
        if behaviour == "pay":
            self.settle(trade, "success")
        elif behaviour == "confirm":
            trade.confirming_queries = CONFIRMING_QUERIES
        return self._pay_answer(trade)

    @staticmethod
    def _pay_answer(trade: Trade) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "tes***@example.com",
            "total_amount": fen_to_yuan(trade.total_fen),
        }
        if trade.paid_at is None:
            return {"code": "10003", "msg": "order success pay inprocess"} | answer
        return (
            {"code": "10000", "msg": "Success"}
            | answer
            | {
                "receipt_amount": fen_to_yuan(trade.total_fen),
                "buyer_pay_amount": fen_to_yuan(trade.total_fen),
                "gmt_payment": _fmt(trade.paid_at),
                "buyer_user_id": "2088102177846880",
            }
        )

    def _confirm_on_query(self, trade: Trade) -> None:
        """A "confirm" payer, still confirming, has paid once enough queries came."""
        if trade.code_behaviour != "confirm" or trade.status != "WAIT_BUYER_PAY":
            return
        if trade.confirming_queries > 0:
            trade.confirming_queries -= 1
            return
        notification = self.settle(trade, "success")
        if notification is not None:
            self.notifier.later(self._deliver(trade, notification))

    def _cancel(self, trade: Trade) -> dict[str, Any]:
        if trade.cancel_action is None:
            if trade.status == "WAIT_BUYER_PAY":
                trade.status = "TRADE_CLOSED"
                trade.closed_at = datetime.now(UTC)
                trade.cancel_action = "close"
            elif trade.taken_fen > 0:
                now = datetime.now(UTC)
                number = f"cancel{trade.out_trade_no}"
                left = trade.taken_fen
                trade.refunds[number] = Refund(number, left, now)
                self.bills.record_refund(trade.out_trade_no, number, left, at=now)
                trade.status = "TRADE_CLOSED"
                trade.closed_at = now
                trade.cancel_action = "refund"
            else:
                trade.cancel_action = "close"
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "retry_flag": "N",
            "action": trade.cancel_action,
        }

    def _precreate(
        self, request: Request, app_id: str, biz: Mapping[str, Any], params: Mapping[str, str]
    ) -> dict[str, Any]:
        out_trade_no, total_fen, subject = _order_fields(biz)
        _check_time_expire(biz)
        existing = self.trades.get((app_id, out_trade_no))
        if existing is not None:
            if existing.status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                raise _business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if existing.status == "TRADE_CLOSED":
                raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            if existing.total_fen != total_fen or existing.subject != subject:
                raise _business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            trade = existing
        else:
            trade = self._open_trade(app_id, out_trade_no, total_fen, subject, params)
        if trade.qr_code is None:
            code = secrets.token_urlsafe(12)
            self.qr_codes[code] = (app_id, out_trade_no)
            trade.qr_code = f"{str(request.base_url).rstrip('/')}/qr/{code}"
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": out_trade_no,
            "qr_code": trade.qr_code,
        }

    def _open_trade(
        self,
        app_id: str,
        out_trade_no: str,
        total_fen: int,
        subject: str,
        params: Mapping[str, str],
    ) -> Trade:
        now = datetime.now(UTC)
        trade = Trade(
            app_id=app_id,
            out_trade_no=out_trade_no,
            trade_no=now.astimezone(BEIJING).strftime("%Y%m%d") + "22" + secrets.token_hex(9)[:18],
            total_fen=total_fen,
            subject=subject,
            api_method=params["method"],
            notify_url=params.get("notify_url") or None,
            created_at=now,
            isv_app_id=params["app_id"] if params["app_id"] != app_id else None,
        )
        self.trades[(app_id, out_trade_no)] = trade
        return trade

    def _query(self, trade: Trade) -> dict[str, Any]:
        content: dict[str, Any] = {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "tes***@example.com",
            "trade_status": trade.status,
            "total_amount": fen_to_yuan(trade.total_fen),
        }
        if trade.paid_at is not None:
            content["send_pay_date"] = _fmt(trade.paid_at)
            content["receipt_amount"] = fen_to_yuan(trade.total_fen)
            content["buyer_pay_amount"] = fen_to_yuan(trade.total_fen)
        return content

    def _close(self, trade: Trade) -> dict[str, Any]:
        if trade.status != "WAIT_BUYER_PAY":
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        trade.status = "TRADE_CLOSED"
        trade.closed_at = datetime.now(UTC)
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
        }

    def _refund(self, trade: Trade, biz: Mapping[str, Any]) -> dict[str, Any]:
        try:
            refund_fen = yuan_to_fen(_required(biz, "refund_amount"))
        except AmountError:
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: refund_amount") from None
        if refund_fen < 1:
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: refund_amount")
        out_request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        answer = {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "tes***@example.com",
        }
        previous = trade.refunds.get(out_request_no)
        if previous is not None:
            # The same out_request_no refunds once; a repeat reports no fund change.
            return answer | {
                "fund_change": "N",
                "refund_fee": fen_to_yuan(trade.refunded_fen),
                "gmt_refund_pay": _fmt(previous.refunded_at),
            }
        if trade.status == "WAIT_BUYER_PAY":
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade.status == "TRADE_CLOSED":
            raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        if "out_request_no" not in biz and refund_fen != trade.total_fen:
            raise _business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        if trade.refunded_fen + refund_fen > trade.total_fen:
            raise _business("ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额无效")
        now = datetime.now(UTC)
        trade.refunds[out_request_no] = Refund(out_request_no, refund_fen, now)
        self.bills.record_refund(trade.out_trade_no, out_request_no, refund_fen, at=now)
        if trade.refunded_fen == trade.total_fen:
            trade.status = "TRADE_CLOSED"
            trade.closed_at = now
        self._notify(trade, self._trade_notification(trade, refund=trade.refunds[out_request_no]))
        return answer | {
            "fund_change": "Y",
            "refund_fee": fen_to_yuan(trade.refunded_fen),
            "gmt_refund_pay": _fmt(now),
        }

    def _refund_query(
        self, trade: Trade | None, out_trade_no: str, out_request_no: str
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {"code": "10000", "msg": "Success"}
        refund = trade.refunds.get(out_request_no) if trade is not None else None
        if trade is None or refund is None:
            # Alipay answers an unknown refund with success and no refund_status.
            return answer
        return answer | {
            "trade_no": trade.trade_no,
            "out_trade_no": out_trade_no,
            "out_request_no": out_request_no,
            "total_amount": fen_to_yuan(trade.total_fen),
            "refund_amount": fen_to_yuan(refund.amount_fen),
            "refund_status": "REFUND_SUCCESS",
            "gmt_refund_pay": _fmt(refund.refunded_at),
        }

    # --- daily bills ----------------------------------------------------------

    def _bill_download_url(
        self, request: Request, app_id: str, biz: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Answer the bill query: a link to the day's zip, or why there is none.

        The bill is that of the merchant (PID) owning the asking app: the trades
        of that merchant's apps only (a line a test added without a trade is on
        every merchant's bill).

        ``isp.bill_not_ready``: the day is not published yet (Alipay publishes day
        D on D+1 before 09:00 Beijing time); ``isp.bill_not_exist``: a day before
        2016-01-01, which Alipay no longer keeps; a day without business gets a
        link to an empty bill and ``bill_file_code=EMPTY_DATA_WITH_BILL_FILE``.
        """
        if biz.get("bill_type") != "trade":
            raise _business(BAD_ARGUMENTS, "参数不合法: bill_type (模拟器只提供 trade)")
        text = str(biz.get("bill_date", ""))
        try:
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
                raise ValueError(text)
            day = date.fromisoformat(text)
        except ValueError:
            raise _business(BAD_ARGUMENTS, "参数不合法: bill_date 应为 yyyy-MM-dd") from None
        if day < FIRST_BILL_DAY:
            raise _business(NOT_EXIST, "账单不存在")
        now = datetime.now(UTC)
        if self.bills.availability(day, now) is not None:
            raise _business(NOT_READY, "账单尚未生成, 当日账单于次日 9 点后提供")
        seller = self.seller_of(app_id)
        entries = [
            entry
            for entry in self.bills.entries_of(day, now)
            if "app_id" not in entry.extra or self.seller_of(entry.extra["app_id"]) == seller
        ]
        account = account_of(seller)
        file_id = secrets.token_hex(12)
        clock = time.monotonic()
        for stale in [k for k, f in self.bill_files.items() if f.expires <= clock]:
            del self.bill_files[stale]
        bill = BillFile(
            token=secrets.token_urlsafe(24),
            name=f"{account}_{day:%Y%m%d}.csv.zip",
            data=bill_zip(account, day, entries, exported_at=now),
            expires=clock + self.bill_url_seconds,
        )
        self.bill_files[file_id] = bill
        query = urlencode(
            {
                "bizType": "trade",
                "userId": account,
                "fileType": "csv.zip",
                "bizDates": f"{day:%Y%m%d}",
                "downloadFileName": bill.name,
                "fileId": file_id,
                "timestamp": str(int(now.timestamp() * 1000)),
                "token": bill.token,
            }
        )
        content: dict[str, Any] = {
            "code": "10000",
            "msg": "Success",
            "bill_download_url": f"{request.url_for('bill_download')}?{query}",
        }
        if not entries:
            content["bill_file_code"] = EMPTY_DATA_WITH_BILL_FILE
        return content

    async def bill_download(self, request: Request) -> Response:
        """The zip behind a bill URL; an expired or wrong link gets Alipay's text instead."""
        bill = self.bill_files.get(request.query_params.get("fileId", ""))
        token = request.query_params.get("token", "")
        if (
            bill is None
            or bill.expires <= time.monotonic()
            or not secrets.compare_digest(bill.token.encode(), token.encode())
        ):
            return Response(EXPIRED_LINK.encode("gbk"), media_type="text/html;charset=GBK")
        return Response(
            bill.data,
            media_type="application/oct-stream",
            headers={"content-disposition": f'attachment; filename="{bill.name}"'},
        )

    # --- cashier and QR pages -------------------------------------------------

    async def _cashier(
        self, request: Request, params: dict[str, str], outcome: str | None
    ) -> Response:
        try:
            app_id = self._authenticate(params)
            biz = _biz_content(params)
            out_trade_no, total_fen, subject = _order_fields(biz)
            _check_time_expire(biz)
            product_code = _CASHIER_METHODS[params["method"]]
            if biz.get("product_code") != product_code:
                raise _business("ACQ.PRODUCT_CODE_ERROR", f"product_code 应为 {product_code}")
            trade = self.trades.get((app_id, out_trade_no))
            if trade is not None and (trade.total_fen, trade.subject) != (total_fen, subject):
                raise _business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
        except GatewayRefusal as refusal:
            return HTMLResponse(
                _page(
                    "支付宝 - 错误",
                    f"<p>{html.escape(refusal.content['sub_code'])}: "
                    f"{html.escape(refusal.content['sub_msg'])}</p>",
                ),
                status_code=400,
            )
        if trade is None:
            trade = self._open_trade(app_id, out_trade_no, total_fen, subject, params)
        if outcome is None:
            return HTMLResponse(_pay_page(trade, action=str(request.url)))
        return await self._settle_response(trade, outcome)

    async def qr_page(self, request: Request) -> Response:
        found = self.qr_codes.get(request.path_params["code"])
        trade = self.trades.get(found) if found else None
        if trade is None:
            return HTMLResponse(_page("支付宝", "<p>二维码已失效</p>"), status_code=404)
        if request.method == "GET":
            return HTMLResponse(_pay_page(trade, action=str(request.url)))
        _, outcome = await self._request_params(request)
        return await self._settle_response(trade, outcome)

    async def _settle_response(self, trade: Trade, outcome: str | None) -> Response:
        if outcome not in ("success", "fail", "close"):
            return HTMLResponse(_page("支付宝", "<p>outcome 应为 success, fail 或 close</p>"), 400)
        try:
            notification = self.settle(trade, outcome)
        except ValueError as exc:
            return HTMLResponse(_page("支付宝", f"<p>{html.escape(str(exc))}</p>"), 409)
        if notification is not None:
            await self._deliver(trade, notification)
        text = {"success": "支付成功", "fail": "支付未完成", "close": "交易已关闭"}[outcome]
        return HTMLResponse(_page("支付宝", f"<p>{text}: {html.escape(trade.out_trade_no)}</p>"))

    def settle(self, trade: Trade, outcome: Outcome | str) -> Notification | None:
        """Apply the payer's outcome; returns the notification Alipay would send."""
        if trade.status != "WAIT_BUYER_PAY":
            raise ValueError(f"交易状态为 {trade.status}, 不能再支付")
        now = datetime.now(UTC)
        if outcome == "success":
            trade.status = "TRADE_SUCCESS"
            trade.paid_at = now
            self.bills.record_payment(
                trade.out_trade_no,
                trade.trade_no,
                trade.total_fen,
                created_at=trade.created_at,
                at=now,
                subject=trade.subject,
                app_id=trade.app_id,
            )
        elif outcome == "close":
            trade.status = "TRADE_CLOSED"
            trade.closed_at = now
        else:
            # A failed payment leaves the trade open for another try; Alipay sends nothing.
            return None
        notification = self._trade_notification(trade)
        trade.notifications.append(notification)
        return notification

    def _trade_notification(self, trade: Trade, *, refund: Refund | None = None) -> Notification:
        now = datetime.now(UTC)
        params = {
            "notify_time": _fmt(now),
            "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16),
            "charset": "utf-8",
            "version": "1.0",
            "sign_type": "RSA2",
            "app_id": trade.isv_app_id or trade.app_id,
            "auth_app_id": trade.app_id,
            "seller_id": self.seller_of(trade.app_id),
            **dict([trade.buyer or ("buyer_id", "2088102177846880")]),
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "subject": trade.subject,
            "trade_status": trade.status,
            "total_amount": fen_to_yuan(trade.total_fen),
            "gmt_create": _fmt(trade.created_at),
        }
        if trade.paid_at is not None:
            params |= {
                "gmt_payment": _fmt(trade.paid_at),
                "receipt_amount": fen_to_yuan(trade.total_fen),
                "buyer_pay_amount": fen_to_yuan(trade.total_fen),
                "invoice_amount": fen_to_yuan(trade.total_fen),
            }
        if trade.closed_at is not None:
            params["gmt_close"] = _fmt(trade.closed_at)
        if refund is not None:
            params |= {
                "out_biz_no": refund.out_request_no,
                "refund_fee": fen_to_yuan(trade.refunded_fen),
                "gmt_refund": refund.refunded_at.astimezone(BEIJING).strftime(
                    "%Y-%m-%d %H:%M:%S.%f"
                )[:-3],
            }
        params["sign"] = sign(self.alipay_key, notification_string(params))
        return Notification(params=params, notify_url=trade.notify_url or "")

    def _notify(self, trade: Trade, notification: Notification) -> None:
        trade.notifications.append(notification)
        self.notifier.later(self._deliver(trade, notification))

    async def _deliver(
        self, trade: Trade, notification: Notification, *, delay: float = 0.0
    ) -> Delivery:
        """One try, as Alipay's re-delivery schedule is left to the controls."""
        notify_id = notification.params["notify_id"]
        sent = await self.notifier.deliver(
            notification.notify_url,
            lambda: (
                {"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
                notification.body.encode("utf-8"),
            ),
            ref=notify_id,
            delay=delay,
        )
        delivery = Delivery(trade.out_trade_no, notify_id, sent.status, sent.reply)
        self.deliveries.append(delivery)
        logger.info(
            "notification %s for %s delivered: %s %s",
            notify_id,
            trade.out_trade_no,
            delivery.status_code,
            delivery.reply,
        )
        return delivery

    # --- control endpoints ----------------------------------------------------

    def _trade_for(self, request: Request) -> Trade | None:
        out_trade_no = request.path_params["out_trade_no"]
        app_id = request.query_params.get("app_id")
        matches = [
            t
            for (a, o), t in self.trades.items()
            if o == out_trade_no and (app_id is None or a == app_id)
        ]
        return matches[0] if len(matches) == 1 else None

    async def control_settle(self, request: Request) -> Response:
        """Settle a trade; ``deliver=0`` returns the notification without sending it."""
        trade = self._trade_for(request)
        if trade is None:
            return JSONResponse({"error": "unknown trade"}, 404)
        form = dict(parse_qsl((await request.body()).decode("utf-8")))
        outcome = form.get("outcome")
        if outcome not in ("success", "fail", "close"):
            return JSONResponse({"error": "outcome must be success, fail or close"}, 400)
        try:
            notification = self.settle(trade, outcome)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 409)
        delivered: dict[str, Any] | None = None
        if notification is not None and form.get("deliver", "1") == "1":
            delivered = _delivery_json(await self._deliver(trade, notification))
        return JSONResponse(
            {
                "notification": notification.body if notification is not None else None,
                "delivery": delivered,
            }
        )

    async def control_notifications(self, request: Request) -> Response:
        """The trade's notifications; ``resigned=1``: as Alipay re-sends them now (new
        ``notify_time``, signed anew, the same ``notify_id``)."""
        trade = self._trade_for(request)
        if trade is None:
            return JSONResponse({"error": "unknown trade"}, 404)
        notifications = trade.notifications
        if request.query_params.get("resigned") == "1":
            notifications = [self._resigned(n) for n in notifications]
        return JSONResponse(
            {"notifications": [n.body for n in notifications], "notify_url": trade.notify_url}
        )

    def _resigned(self, notification: Notification) -> Notification:
        params = {k: v for k, v in notification.params.items() if k != "sign"}
        params["notify_time"] = _fmt(datetime.now(UTC))
        params["sign"] = sign(self.alipay_key, notification_string(params))
        return Notification(params=params, notify_url=notification.notify_url)

    async def control_resign(self, request: Request) -> Response:
        """A notification this simulator sent, fields changed, signed with Alipay's key.

        Form: ``body`` (the notification as sent) and any of ``amount_fen``,
        ``app_id``, ``seller_id``, ``auth_app_id``, ``out_trade_no``. Answers
        ``{"notification": body}``; tests use it for genuine notifications that
        are not for the branch or not for the attempt.
        """
        form = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
        sent = dict(parse_qsl(form.get("body", ""), keep_blank_values=True))
        owner = sent.get("auth_app_id") or sent.get("app_id", "")
        trade = self.trades.get((owner, sent.get("out_trade_no", "")))
        unsigned = {k: v for k, v in sent.items() if k not in ("sign", "notify_time")}
        if trade is None or not any(
            unsigned == {k: v for k, v in n.params.items() if k not in ("sign", "notify_time")}
            for n in trade.notifications
        ):
            return JSONResponse({"error": "the simulator never sent that notification"}, 404)
        changes = {
            name: form[name]
            for name in ("app_id", "seller_id", "auth_app_id", "out_trade_no")
            if form.get(name)
        }
        if form.get("amount_fen"):
            try:
                changes["total_amount"] = fen_to_yuan(int(form["amount_fen"]))
            except (ValueError, AmountError):
                return JSONResponse({"error": "amount_fen must be a whole number of fen"}, 400)
        if not changes:
            return JSONResponse({"error": "name a field to change"}, 400)
        params = {k: v for k, v in sent.items() if k != "sign"} | changes
        params["sign"] = sign(self.alipay_key, notification_string(params))
        return JSONResponse({"notification": urlencode(params)})

    async def control_send(self, request: Request) -> Response:
        """(Re)send notifications: ``index`` (default last), ``copies``, ``delay``,
        ``order=newest_first`` to send all of them out of order."""
        trade = self._trade_for(request)
        if trade is None or not trade.notifications:
            return JSONResponse({"error": "no notification for that trade"}, 404)
        form = dict(parse_qsl((await request.body()).decode("utf-8")))
        try:
            copies = int(form.get("copies", "1"))
            delay = float(form.get("delay", "0"))
            index = int(form.get("index", str(len(trade.notifications) - 1)))
            chosen = (
                list(reversed(trade.notifications))
                if form.get("order") == "newest_first"
                else [trade.notifications[index]]
            )
        except (ValueError, IndexError):
            return JSONResponse({"error": "bad index, copies or delay"}, 400)
        if not 1 <= copies <= 20 or not 0 <= delay <= 600:
            return JSONResponse({"error": "copies 1-20, delay 0-600 s"}, 400)
        if delay:
            for notification in chosen * copies:
                self.notifier.later(self._deliver(trade, notification, delay=delay))
            return JSONResponse({"scheduled": len(chosen) * copies}, 202)
        deliveries = [
            _delivery_json(await self._deliver(trade, notification))
            for notification in chosen * copies
        ]
        return JSONResponse({"deliveries": deliveries})

    async def control_faults(self, request: Request) -> Response:
        """POST ``kind``, ``times``, optional ``method`` and ``seconds``; DELETE clears."""
        if request.method == "DELETE":
            self.faults.clear()
            return JSONResponse({"faults": 0})
        form = dict(parse_qsl((await request.body()).decode("utf-8")))
        kind = form.get("kind", "")
        if kind not in get_args(FaultKind):
            return JSONResponse({"error": "unknown fault kind"}, 400)
        try:
            fault = Fault(
                kind=kind,
                remaining=int(form.get("times", "1")),
                target=form.get("method") or None,
                seconds=float(form.get("seconds", "1")),
            )
        except ValueError:
            return JSONResponse({"error": "times and seconds must be numbers"}, 400)
        return JSONResponse({"faults": self.faults.add(fault)})

    async def control_taken(self, request: Request) -> Response:
        """The ledger: what the payer is out of pocket for a trade (0 for one never seen)."""
        out_trade_no = request.path_params["out_trade_no"]
        trade = self._trade_for(request)
        taken = trade.taken_fen if trade is not None else 0
        return JSONResponse({"out_trade_no": out_trade_no, "taken_fen": taken})

    async def control_calls(self, request: Request) -> Response:
        return JSONResponse(self.calls)

    async def control_deliveries(self, request: Request) -> Response:
        return JSONResponse([_delivery_json(d) for d in self.deliveries])

    async def control_trade(self, request: Request) -> Response:
        trade = self._trade_for(request)
        if trade is None:
            return JSONResponse({"error": "unknown trade"}, 404)
        return JSONResponse(
            {
                "out_trade_no": trade.out_trade_no,
                "trade_no": trade.trade_no,
                "app_id": trade.app_id,
                "isv_app_id": trade.isv_app_id,
                "status": trade.status,
                "total_fen": trade.total_fen,
                "refunded_fen": trade.refunded_fen,
                "refunds": {k: r.amount_fen for k, r in trade.refunds.items()},
                "notifications": len(trade.notifications),
                "api_method": trade.api_method,
                "buyer": dict([trade.buyer]) if trade.buyer else None,
            }
        )

    # --- helpers --------------------------------------------------------------

    def _json_response(
        self,
        member: str,
        content: Mapping[str, Any],
        *,
        signed: bool,
        wrong_key: bool = False,
        cert_sn: str | None = None,
    ) -> Response:
        inner = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        if not signed:
            text = f'{{"{member}":{inner}}}'
        else:
            key = self.alipay_key
            if wrong_key:
                if self._wrong_key is None:
                    self._wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                key = self._wrong_key
            # Certificate mode: the answer names the Alipay certificate whose key signed it.
            named = f'"alipay_cert_sn":"{cert_sn}",' if cert_sn is not None else ""
            text = f'{{"{member}":{inner},{named}"sign":"{sign(key, inner)}"}}'
        return Response(text, media_type="text/html;charset=utf-8")


def create_app(
    *,
    apps: Mapping[str, rsa.RSAPublicKey | str],
    alipay_private_key: rsa.RSAPrivateKey | str,
    seller_id: str = DEFAULT_SELLER_ID,
    any_app_key: rsa.RSAPublicKey | str | None = None,
    publish_current_day: bool | None = None,
    bill_url_seconds: float = 30.0,
    sellers: Mapping[str, str] | None = None,
    app_cert_sns: Mapping[str, str] | None = None,
    alipay_cert_sn: str | None = None,
    alipay_root_cert_sn: str | None = None,
    app_auth_tokens: Mapping[str, tuple[str, str]] | None = None,
) -> Starlette:
    """The simulated gateway for the given apps (app_id -> merchant public key).

    ``any_app_key``, when given, is the merchant key of every other app_id (the
    demo shares one key pair between its branches). ``sellers`` maps an app_id
    to the merchant PID that owns it; ``seller_id`` is the PID of every other
    app. A merchant's bill account is its PID with ``0156``, and its bill holds
    only the trades opened by its apps (the notifications of a trade carry its
    app's PID as ``seller_id``).
    ``publish_current_day``: bills of every day up to now, today's so far
    included, instead of day D from D+1 09:00 Beijing time (None: the
    ``BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY`` setting decides; the control
    ``PUT /_control/bills`` changes it). ``bill_url_seconds``: how long a bill
    download URL stays valid. ``app_cert_sns`` puts apps in public-key
    certificate mode (app_id -> the ``app_cert_sn`` its requests must carry,
    with ``alipay_root_cert_sn``; their answers carry ``alipay_cert_sn``, the SN
    of the certificate of ``alipay_private_key``'s public key); every other app
    is in public-key mode and must send neither SN. ``app_auth_tokens``
    (app_auth_token -> (the service provider's app_id, the merchant's
    auth_app_id)) are the third-party authorizations: a call signed by that
    app with the token acts for the merchant's app, and its notifications carry
    ``app_id`` = the service provider's and ``auth_app_id`` = the merchant's
    (every other notification carries ``auth_app_id`` = ``app_id``). The
    :class:`AlipaySimulator` behind the app is ``app.state.simulator``.
    """
    return AlipaySimulator(
        apps=apps,
        alipay_private_key=alipay_private_key,
        seller_id=seller_id,
        any_app_key=any_app_key,
        publish_current_day=publish_current_day,
        bill_url_seconds=bill_url_seconds,
        sellers=sellers,
        app_cert_sns=app_cert_sns,
        alipay_cert_sn=alipay_cert_sn,
        alipay_root_cert_sn=alipay_root_cert_sn,
        app_auth_tokens=app_auth_tokens,
    ).app


def _biz_content(params: Mapping[str, str]) -> dict[str, Any]:
    raw = params.get("biz_content")
    if not raw:
        raise _missing("isv.missing-biz-content", "缺少biz_content参数")
    try:
        biz = json.loads(raw)
    except ValueError:
        raise _invalid("isv.invalid-parameter", "biz_content 不是合法的 JSON") from None
    if not isinstance(biz, dict):
        raise _invalid("isv.invalid-parameter", "biz_content 不是 JSON 对象")
    return biz


def _required(biz: Mapping[str, Any], name: str) -> str:
    value = biz.get(name)
    if not isinstance(value, str) or not value:
        raise _business("ACQ.INVALID_PARAMETER", f"参数无效: {name}")
    return value


def _order_fields(biz: Mapping[str, Any]) -> tuple[str, int, str]:
    out_trade_no = _required(biz, "out_trade_no")
    if len(out_trade_no) > 64 or not all(
        c.isascii() and (c.isalnum() or c == "_") for c in out_trade_no
    ):
        raise _business("ACQ.INVALID_PARAMETER", "参数无效: out_trade_no")
    try:
        total_fen = yuan_to_fen(_required(biz, "total_amount"))
    except AmountError:
        raise _business("ACQ.INVALID_PARAMETER", "参数无效: total_amount") from None
    if not 1 <= total_fen <= MAX_FEN:
        raise _business("ACQ.TOTAL_FEE_EXCEED", "订单金额超过限额")
    subject = _required(biz, "subject")
    if len(subject) > 256:
        raise _business("ACQ.INVALID_PARAMETER", "参数无效: subject")
    return out_trade_no, total_fen, subject


def _check_time_expire(biz: Mapping[str, Any]) -> None:
    value = biz.get("time_expire")
    if value is None:
        return
    try:
        expires = from_beijing(str(value))
    except ValueError:
        raise _business("ACQ.INVALID_PARAMETER", "参数无效: time_expire") from None
    if expires <= datetime.now(UTC):
        raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")


def _fmt(moment: datetime) -> str:
    return to_beijing(moment)


def _delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {
        "out_trade_no": delivery.out_trade_no,
        "notify_id": delivery.notify_id,
        "status_code": delivery.status_code,
        "reply": delivery.reply,
    }


def _page(title: str, content: str) -> str:
    return page(title, content, lang="zh")


def _pay_page(trade: Trade, *, action: str) -> str:
    return pay_page(
        "支付宝收银台 (模拟)",
        lines=[trade.subject, f"订单号 {trade.out_trade_no}"],
        amount_fen=trade.total_fen,
        amount_label="金额",
        action=action,
        outcomes=(("success", "确认付款"), ("fail", "付款失败"), ("close", "关闭交易")),
        lang="zh",
    )
