"""The WeChat Pay API v3 adapter (direct merchant or partner mode, platform public key).

Every request carries a ``WECHATPAY2-SHA256-RSA2048`` Authorization header
signed with the merchant key, and ``Wechatpay-Serial`` naming the platform
public key id (so WeChat Pay signs its answer with that key). No response or
callback is trusted before its ``Wechatpay-*`` signature verifies with the key
its ``Wechatpay-Serial`` names among those the branch configured (the platform
public key by its ``PUB_KEY_ID_...``, and, for a merchant still switching, its
platform certificates by serial; none is downloaded), and its timestamp is
within five minutes of ours.

Partner (服务商) mode, with ``sub_mchid`` set: the same calls under
``/v3/pay/partner/transactions`` with ``sp_appid``/``sp_mchid`` (the configured
``appid``/``mchid``) and the sub-merchant's ids; callbacks must name this
branch's service provider and sub-merchant. A genuine callback of another
merchant, app or sub-merchant raises ``NotificationMismatch``.

Counter sales (``PAYMENT_CODE``): see :meth:`WechatpayProvider.pay_with_code`
and :meth:`WechatpayProvider.reverse`.

Retry policy: WeChat Pay documents query, close and refund (same
``out_refund_no``) as safe to repeat, so they are tried ``max_attempts`` times
with doubling pauses on time-outs, connection failures, 429 and 5xx. An order
(native / h5 / app) is sent once; a failure raises :class:`GatewayError`, with
``outcome_unknown`` when the request may have reached the platform.

Daily bills: :meth:`WechatpayProvider.download_bill` asks ``GET
/v3/bill/tradebill`` (``bill_type=ALL``, ``tar_type=GZIP``; signed, its answer
verified like any other), then fetches ``download_url`` with a signed GET of
its own (the file comes back unsigned), unpacking the gzip stream and taking
the SHA-1 of the unpacked bytes as they arrive; a hash that is not the
answer's ``hash_value`` rejects the file. :meth:`~WechatpayProvider.read_bill`
reads it with :func:`providers.wechatpay.bills.read_tradebill`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, BinaryIO, NoReturn
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pydantic import BaseModel

from api.plugin import (
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
    load_private_key,
    load_public_key,
)
from providers.wechatpay import signing
from providers.wechatpay.bills import read_tradebill
from providers.wechatpay.settings import (
    WechatpaySettings,
    certificate_serial,
    platform_certificates,
)

logger = logging.getLogger("branchpay.providers.wechatpay")

MAX_NOTIFICATION_BYTES = 64 * 1024
DESCRIPTION_MAX_BYTES = 127
CURRENCY = "CNY"

_CHINA_STANDARD_TIME = timezone(timedelta(hours=8))
_ORDER_PATHS = {
    PaymentMethod.QR_CODE: "native",
    PaymentMethod.WAP: "h5",
    PaymentMethod.APP: "app",
    PaymentMethod.JSAPI: "jsapi",
}
_TRADE_STATES = {
    "SUCCESS": AttemptState.SUCCEEDED,
    # A refunded attempt was paid first; refunds are tracked on their own.
    "REFUND": AttemptState.SUCCEEDED,
    "NOTPAY": AttemptState.PENDING,
    "USERPAYING": AttemptState.PENDING,
    "ACCEPT": AttemptState.PENDING,
    "PAYERROR": AttemptState.FAILED,
    "CLOSED": AttemptState.CLOSED,
    "REVOKED": AttemptState.CLOSED,
}
# Code pay (付款码) answers: the payer is still confirming, or the result is not known yet.
_CODE_PENDING = frozenset({"USERPAYING"})
_CODE_UNKNOWN = frozenset({"SYSTEM_ERROR", "SYSTEMERROR", "BANKERROR"})
# A reverse WeChat Pay will do if asked again later.
_REVERSE_AGAIN = frozenset({"USERPAYING", "SYSTEM_ERROR", "SYSTEMERROR", "FREQUENCY_LIMITED"})
_REFUND_STATES = {
    "SUCCESS": RefundState.SUCCEEDED,
    "PROCESSING": RefundState.PENDING,
    "CLOSED": RefundState.FAILED,
    "ABNORMAL": RefundState.FAILED,
}
_BILL_UNAVAILABLE = {
    "NO_STATEMENT_EXIST": BillUnavailableReason.NO_BILL,
    "STATEMENT_CREATING": BillUnavailableReason.NOT_READY,
}
_SHA1_HEX = re.compile(r"^[0-9A-Fa-f]{40}$")
_HEX = re.compile(r"[0-9A-Fa-f]{1,64}")
_GZIP_MAGIC = b"\x1f\x8b"
_UNPACKED_PIECE = 1 << 20  # bytes: what one gzip piece may unpack to at most
_REFUND_EVENTS = {
    "REFUND.SUCCESS": (EventKind.REFUND_SUCCEEDED, "SUCCESS"),
    "REFUND.ABNORMAL": (EventKind.REFUND_FAILED, "ABNORMAL"),
    "REFUND.CLOSED": (EventKind.REFUND_FAILED, "CLOSED"),
}


class Malformed(ValueError):
    """A platform message does not have the shape WeChat Pay documents."""


class PlatformRefusal(GatewayError):
    """WeChat Pay answered 4xx: it understood the call and refused it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"WeChat Pay refused the call: {code} ({message})")
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    data: dict[str, Any]


def fen(value: object) -> int:
    """An amount as WeChat Pay sends it: a JSON integer count of fen, nothing else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Malformed("amount is not a non-negative integer count of fen")
    return value


def _positive_fen(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_time(value: object) -> datetime:
    """An RFC 3339 time with offset (e.g. 2018-06-08T10:34:56+08:00) as aware UTC."""
    if not isinstance(value, str):
        raise Malformed("time is missing")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Malformed("time is not RFC 3339") from None
    if moment.tzinfo is None:
        raise Malformed("time has no offset")
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    return moment.astimezone(_CHINA_STANDARD_TIME).isoformat(timespec="seconds")


def description(subject: str) -> str:
    """The subject cut to WeChat Pay's 127-byte limit on a character boundary."""
    encoded = subject.encode()[:DESCRIPTION_MAX_BYTES]
    return encoded.decode(errors="ignore")


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f"{key} is missing")
    return value


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise Malformed(f"{key} is missing")
    return value


class WechatpayProvider(Provider):
    """WeChat Pay API v3 for one branch's merchant account."""

    name = "wechatpay"
    display_name = "WeChat Pay"
    methods = (
        PaymentMethod.QR_CODE,
        PaymentMethod.WAP,
        PaymentMethod.APP,
        PaymentMethod.PAYMENT_CODE,
        PaymentMethod.JSAPI,
    )
    Settings = WechatpaySettings
    # 付款码: 18 digits starting 10-15 (WeChat Pay's code-pay rule).
    payment_code_pattern = re.compile(r"1[0-5][0-9]{16}")
    # JSAPI / mini program: the payer's openid under the appid (28 characters as issued).
    payer_id_pattern = re.compile(r"[0-9A-Za-z_-]{16,128}")
    sub_merchant_settings = ("sub_mchid", "sub_appid")

    def __init__(self, settings: BaseModel, *, branch: str, http: httpx.AsyncClient) -> None:
        if not isinstance(settings, WechatpaySettings):
            raise TypeError("WechatpayProvider needs WechatpaySettings")
        super().__init__(settings, branch=branch, http=http)
        # ``self.settings`` is typed as the base model; this is the same object, typed.
        self.config = settings
        self._merchant_key = load_private_key(settings.private_key.get_secret_value())
        # Verifying keys by the Wechatpay-Serial that names them: the public key
        # by its exact id (PUB_KEY_ID_..., never read as hex), certificates by
        # their serial (hex, uppercase, without leading zeros).
        self._public_key = load_public_key(settings.platform_public_key)
        self._certificate_keys: dict[str, RSAPublicKey] = {}
        pem = settings.platform_certificates
        for certificate in platform_certificates(pem) if pem else []:
            key = certificate.public_key()
            if not isinstance(key, RSAPublicKey):
                raise TypeError("a WeChat Pay platform certificate must hold an RSA key")
            self._certificate_keys[certificate_serial(certificate)] = key
        self._apiv3_key = settings.apiv3_key.get_secret_value().encode()
        # Partner (服务商) mode: mchid/appid are the service provider's, calls go to
        # the partner APIs and name the sub-merchant.
        self._partner = settings.sub_mchid is not None
        self._transactions = (
            "/v3/pay/partner/transactions" if self._partner else "/v3/pay/transactions"
        )

    def _ids(self, *, appid: bool = True) -> dict[str, str]:
        """Whose call it is: appid/mchid, or sp_appid/sp_mchid/sub_mchid(/sub_appid)."""
        config = self.config
        if config.sub_mchid is None:
            ids = {"mchid": config.mchid}
            return ids | {"appid": config.appid} if appid else ids
        ids = {"sp_mchid": config.mchid, "sub_mchid": config.sub_mchid}
        if appid:
            ids["sp_appid"] = config.appid
            if config.sub_appid is not None:
                ids["sub_appid"] = config.sub_appid
        return ids

    @property
    def _payer_appid(self) -> str:
        """The AppID the payer's openid and the client's signed parameters belong to."""
        return self.config.sub_appid or self.config.appid

    @property
    def supports_bills(self) -> bool:
        # Partner bills (with sub_mchid) are not read here: direct merchants only.
        config = self.__dict__.get("config")  # unset on an instance made without __init__
        partner = isinstance(config, WechatpaySettings) and config.sub_mchid is not None
        return not partner and super().supports_bills

    # -- payments -------------------------------------------------------------

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        kind = _ORDER_PATHS.get(request.method)
        if kind is None:
            raise GatewayError(f"WeChat Pay does not offer {request.method} here")
        if request.currency != CURRENCY or not _positive_fen(request.amount_fen):
            raise GatewayError("WeChat Pay takes a positive CNY amount")
        path = f"{self._transactions}/{kind}"
        order: dict[str, Any] = {
            **self._ids(),
            "description": description(request.subject),
            "out_trade_no": request.out_trade_no,
            "time_expire": format_time(request.expires_at),
            "notify_url": request.notify_url,
            "amount": {"total": request.amount_fen, "currency": CURRENCY},
        }
        if request.method is PaymentMethod.JSAPI:
            if not request.payer_id or not self.payer_id_pattern.fullmatch(request.payer_id):
                raise GatewayError("a JSAPI payment needs the payer's openid")
            # Partner mode: the openid is under the sub-merchant's AppID when it has one.
            name = "openid"
            if self._partner:
                name = "sub_openid" if self.config.sub_appid else "sp_openid"
            order["payer"] = {name: request.payer_id}
        if request.method is PaymentMethod.WAP:
            if not request.client_ip:
                raise GatewayError("an H5 payment needs the payer's client IP")
            order["scene_info"] = {
                "payer_client_ip": request.client_ip,
                "h5_info": {"type": "Wap"},
            }
        reply = await self._call("POST", path, order, operation="order", repeatable=False)
        try:
            return self._action(request, reply.data)
        except Malformed as exc:
            raise GatewayError(f"WeChat Pay order reply: {exc}", outcome_unknown=True) from None

    def _action(self, request: PaymentRequest, data: dict[str, Any]) -> PaymentAction:
        if request.method is PaymentMethod.QR_CODE:
            return PaymentAction(kind=ActionKind.QR_CODE, qr_code=_text(data, "code_url"))
        if request.method is PaymentMethod.WAP:
            url = httpx.URL(_text(data, "h5_url"))
            if request.return_url:
                # WeChat Pay sends the payer back to redirect_url after the H5 flow.
                url = url.copy_add_param("redirect_url", request.return_url)
            return PaymentAction(kind=ActionKind.REDIRECT, url=str(url))
        if request.method is PaymentMethod.JSAPI:
            return PaymentAction(
                kind=ActionKind.REQUEST_PAYMENT, client_params=self.request_payment(data)
            )
        return PaymentAction(kind=ActionKind.APP_SDK, app_payload=self.app_payload(data))

    def request_payment(self, data: dict[str, Any]) -> dict[str, str]:
        """What ``wx.requestPayment`` / ``getBrandWCPayRequest`` take, signed with the merchant key.

        ``paySign`` is SHA256withRSA over ``appId\ntimeStamp\nnonceStr\npackage\n``;
        a mini program passes everything but ``appId``, which is still signed.
        """
        package = f"prepay_id={_text(data, 'prepay_id')}"
        timestamp = str(int(time.time()))
        nonce = signing.new_nonce()
        message = f"{self._payer_appid}\n{timestamp}\n{nonce}\n{package}\n".encode()
        return {
            "appId": self._payer_appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": signing.sign(self._merchant_key, message),
        }

    def app_payload(self, data: dict[str, Any]) -> str:
        """The parameters the WeChat app SDK's PayReq needs, signed with the merchant key."""
        prepay_id = _text(data, "prepay_id")
        timestamp = str(int(time.time()))
        nonce = signing.new_nonce()
        message = f"{self._payer_appid}\n{timestamp}\n{nonce}\n{prepay_id}\n".encode()
        return json.dumps(
            {
                "appid": self._payer_appid,
                "partnerid": self.config.sub_mchid or self.config.mchid,
                "prepayid": prepay_id,
                "package": "Sign=WXPay",
                "noncestr": nonce,
                "timestamp": timestamp,
                "sign": signing.sign(self._merchant_key, message),
            },
            separators=(",", ":"),
        )

    async def query(self, out_trade_no: str) -> QueryResult:
        path = f"{self._transactions}/out-trade-no/{quote(out_trade_no, safe='')}"
        path += "?" + "&".join(f"{k}={v}" for k, v in self._ids(appid=False).items())
        try:
            reply = await self._call("GET", path, None, operation="query", repeatable=True)
        except PlatformRefusal as refusal:
            if refusal.code == "ORDER_NOT_EXIST":
                return QueryResult(state=AttemptState.UNKNOWN)
            raise
        try:
            return self._query_result(out_trade_no, reply.data)
        except Malformed as exc:
            raise GatewayError(f"WeChat Pay query reply: {exc}") from None

    def _query_result(self, out_trade_no: str, data: dict[str, Any]) -> QueryResult:
        if (
            any(data.get(name) != value for name, value in self._ids().items())
            or data.get("out_trade_no") != out_trade_no
        ):
            raise Malformed("it describes another merchant's or another attempt's order")
        trade_state = _text(data, "trade_state")
        state = _TRADE_STATES.get(trade_state)
        if state is None:
            raise Malformed(f"unknown trade_state {trade_state}")
        amount = _object(data, "amount")
        total = fen(amount.get("total"))
        if state is not AttemptState.SUCCEEDED:
            return QueryResult(
                state=state, provider_trade_no=data.get("transaction_id"), amount_fen=total
            )
        if amount.get("currency", CURRENCY) != CURRENCY:
            raise Malformed("currency is not CNY")
        transaction_id = _text(data, "transaction_id")
        event = ProviderEvent(
            kind=EventKind.PAYMENT_SUCCEEDED,
            event_id=payment_event_id(transaction_id),
            out_trade_no=out_trade_no,
            amount_fen=total,
            currency=CURRENCY,
            occurred_at=parse_time(data.get("success_time")),
            provider_trade_no=transaction_id,
            detail={"trade_state": trade_state, "trade_type": data.get("trade_type")},
        )
        return QueryResult(
            state=state, provider_trade_no=transaction_id, amount_fen=total, events=(event,)
        )

    # -- counter sales (付款码支付) ------------------------------------------------

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        """Charge the scanned code with ``POST /v3/pay/transactions/codepay`` (sent once).

        200 ``SUCCESS``: paid, with the same event id a query gives; 202
        ``USERPAYING``: the payer confirms on the phone (PENDING); a refusal
        (bad or expired code, no balance, ...): FAILED; ``SYSTEM_ERROR``, 5xx or
        a lost answer: ``GatewayError(outcome_unknown=True)``, so the sale is
        followed by query and reversed if it stays unknown.
        """
        if not request.auth_code:
            raise GatewayError("a PAYMENT_CODE sale needs the scanned auth_code")
        if request.currency != CURRENCY or not _positive_fen(request.amount_fen):
            raise GatewayError("WeChat Pay takes a positive CNY amount")
        scene: dict[str, Any] = {"device_id": self.branch, "store_info": {"out_id": self.branch}}
        if request.client_ip:
            scene["device_ip"] = request.client_ip
        body: dict[str, Any] = {
            **self._ids(),
            "description": description(request.subject),
            "out_trade_no": request.out_trade_no,
            "payer": {"auth_code": request.auth_code},
            "amount": {"total": request.amount_fen, "currency": CURRENCY},
            "scene_info": scene,
        }
        try:
            reply = await self._call(
                "POST",
                f"{self._transactions}/codepay",
                body,
                operation="codepay",
                repeatable=False,
            )
        except PlatformRefusal as refusal:
            if refusal.code in _CODE_PENDING:
                return QueryResult(state=AttemptState.PENDING)
            if refusal.code in _CODE_UNKNOWN:
                raise GatewayError(
                    f"WeChat Pay code pay: {refusal.code}", outcome_unknown=True
                ) from None
            if refusal.code in ("ORDERPAID", "ORDER_PAID"):
                return await self.query(request.out_trade_no)
            return QueryResult(state=AttemptState.FAILED)
        try:
            return self._query_result(request.out_trade_no, reply.data)
        except Malformed as exc:
            raise GatewayError(f"WeChat Pay code pay reply: {exc}", outcome_unknown=True) from None

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        """``POST .../out-trade-no/{no}/reverse`` (撤销): closed if unpaid, refunded if paid.

        ``USERPAYING`` (the payer is still confirming) or a system error: RETRY.
        Any other refusal (e.g. past the 7-day limit) is settled by a query:
        paid means PAID, closed or unknown means DONE.
        """
        path = f"{self._transactions}/out-trade-no/{quote(out_trade_no, safe='')}/reverse"
        try:
            await self._call(
                "POST",
                path,
                self._ids(),
                operation="reverse",
                repeatable=True,
            )
        except PlatformRefusal as refusal:
            if refusal.code in _REVERSE_AGAIN:
                return ReverseResult(ReverseState.RETRY, message=refusal.code)
            if refusal.code == "ORDER_NOT_EXIST":
                return ReverseResult(ReverseState.DONE, message="WeChat Pay never saw the sale")
            found = await self.query(out_trade_no)
            if found.state is AttemptState.SUCCEEDED:
                return ReverseResult(ReverseState.PAID, message=refusal.code)
            if found.state is AttemptState.PENDING:
                raise
            return ReverseResult(ReverseState.DONE, message=refusal.code)
        return ReverseResult(ReverseState.DONE)

    async def refund(self, request: RefundRequest) -> RefundResult:
        if request.currency != CURRENCY or not _positive_fen(request.refund_fen):
            raise GatewayError("WeChat Pay refunds a positive CNY amount")
        body: dict[str, Any] = {
            "out_trade_no": request.out_trade_no,
            "out_refund_no": request.out_refund_no,
            **({"sub_mchid": self.config.sub_mchid} if self.config.sub_mchid else {}),
            "amount": {
                "refund": request.refund_fen,
                "total": request.total_fen,
                "currency": CURRENCY,
            },
        }
        if request.reason:
            body["reason"] = request.reason[:80]
        if request.notify_url:
            body["notify_url"] = request.notify_url
        reply = await self._call(
            "POST", "/v3/refund/domestic/refunds", body, operation="refund", repeatable=True
        )
        data = reply.data
        status = data.get("status")
        state = _REFUND_STATES.get(status) if isinstance(status, str) else None
        if state is None or data.get("out_refund_no") != request.out_refund_no:
            raise GatewayError(
                "WeChat Pay refund reply does not describe this refund", outcome_unknown=True
            )
        refund_id = data.get("refund_id")
        return RefundResult(
            state=state,
            provider_refund_no=refund_id if isinstance(refund_id, str) else None,
            message=None if state is RefundState.SUCCEEDED else f"WeChat Pay refund {status}",
        )

    async def close(self, out_trade_no: str) -> None:
        path = f"{self._transactions}/out-trade-no/{quote(out_trade_no, safe='')}/close"
        try:
            await self._call(
                "POST", path, self._ids(appid=False), operation="close", repeatable=True
            )
        except PlatformRefusal as refusal:
            if refusal.code != "ORDER_NOT_EXIST":
                raise

    # -- daily bills ------------------------------------------------------------

    async def download_bill(self, day: date, destination: BinaryIO) -> None:
        """The ALL trade bill of ``day``, unpacked, into ``destination`` once its hash checks.

        The bytes are written as they arrive, so after a :class:`BillRejected`
        ``destination`` holds the file that failed the check.
        """
        path = f"/v3/bill/tradebill?bill_date={day.isoformat()}&bill_type=ALL&tar_type=GZIP"
        try:
            reply = await self._call("GET", path, None, operation="tradebill", repeatable=True)
        except PlatformRefusal as refusal:
            reason = _BILL_UNAVAILABLE.get(refusal.code)
            if reason is None:
                raise
            raise BillUnavailable(
                f"WeChat Pay has no trade bill of {day} for branch {self.branch}: {refusal.code}",
                reason=reason,
            ) from None
        data = reply.data
        hash_value = data.get("hash_value")
        url = data.get("download_url")
        if data.get("hash_type") != "SHA1" or not (
            isinstance(hash_value, str) and _SHA1_HEX.match(hash_value)
        ):
            raise BillRejected("WeChat Pay tradebill answer has no SHA1 hash_value to check")
        if not isinstance(url, str) or not self._is_gateway_url(url):
            # Our signed request would go elsewhere: never follow such a link.
            raise GatewayError("WeChat Pay tradebill download_url is not on the configured gateway")
        digest = await call_gateway(
            lambda: self._fetch_bill(httpx.URL(url), destination),
            settings=self.config,
            operation=f"WeChat Pay bill download for branch {self.branch}",
            repeatable=False,  # bytes may already be in destination
            changes_state=False,
            logger=logger,
        )
        if digest != hash_value.lower():
            logger.error(
                "wechatpay bill of %s for branch %s fails its SHA-1 check", day, self.branch
            )
            raise BillRejected(f"the WeChat Pay bill of {day} does not match its SHA-1 hash_value")

    def _is_gateway_url(self, url: str) -> bool:
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            return False
        gateway = httpx.URL(self.config.gateway)
        return (target.scheme, target.host, target.port) == (
            gateway.scheme,
            gateway.host,
            gateway.port,
        )

    async def _fetch_bill(self, url: httpx.URL, destination: BinaryIO) -> str:
        """GET the bill file (signed), unpack it into ``destination``; SHA-1 hex of the bytes."""
        headers = self._signed_headers("GET", url.raw_path.decode(), b"")
        # No transfer compression on top: the body is the file (gzip when we asked).
        headers.update({"Accept": "*/*", "Accept-Encoding": "identity"})
        digest = hashlib.sha1(usedforsecurity=False)
        unpack: _Gunzip | None = None
        head: bytes | None = b""  # the first bytes, until they tell gzip from plain text

        def take(data: bytes) -> None:
            if data:
                digest.update(data)
                destination.write(data)

        async with self.http.stream(
            "GET", url, headers=headers, timeout=self.config.timeout_seconds
        ) as response:
            status = response.status_code
            if status == 429 or status >= 500:
                raise TransientFailure(f"HTTP {status}", may_have_reached=True)
            if status >= 400:
                await response.aread()
                code, text = _error_of(response)
                logger.warning(
                    "wechatpay bill download for branch %s refused: HTTP %d %s",
                    self.branch,
                    status,
                    code,
                )
                raise PlatformRefusal(status, code, text)
            if status != 200:
                raise GatewayError(f"WeChat Pay bill download answered HTTP {status}, not the file")
            # The raw body: a gzip stream when asked for one, however it is labelled.
            async for raw in response.aiter_raw():
                chunk = raw
                if head is not None:
                    head += chunk
                    if len(head) < len(_GZIP_MAGIC):
                        continue
                    chunk, head = head, None
                    if chunk.startswith(_GZIP_MAGIC):
                        unpack = _Gunzip()
                if unpack is None:
                    take(chunk)
                else:
                    for piece in unpack.feed(chunk):
                        take(piece)
        if head:
            take(head)
        if unpack is not None:
            take(unpack.finish())
        return digest.hexdigest()

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        return read_tradebill(source, mchid=self.config.mchid)

    # -- notifications --------------------------------------------------------

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        if len(request.body) > MAX_NOTIFICATION_BYTES:
            self._reject("body is larger than any WeChat Pay callback")
        problem = self._signature_problem(request.headers, request.body)
        if problem:
            self._reject(problem)
        try:
            envelope = json.loads(request.body)
            if not isinstance(envelope, dict):
                raise Malformed("body is not a JSON object")
            fact = self._decrypt(envelope)
            event = self._event(envelope, fact)
        except (Malformed, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = str(exc) if isinstance(exc, Malformed) else "body is not JSON"
            self._reject(reason)
        if event is None:
            logger.info(
                "wechatpay notification for branch %s has nothing to apply (%s)",
                self.branch,
                envelope.get("event_type"),
            )
        return event

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        if accepted:
            body = {"code": "SUCCESS", "message": "OK"}
            return NotificationReply(200, json.dumps(body).encode(), "application/json")
        body = {"code": "FAIL", "message": "rejected"}
        return NotificationReply(400, json.dumps(body).encode(), "application/json")

    def _reject(self, reason: str) -> NoReturn:
        logger.warning("wechatpay notification rejected for branch %s: %s", self.branch, reason)
        raise NotificationRejected(reason)

    def _mismatch(self, reason: str) -> NoReturn:
        logger.warning(
            "wechatpay notification for branch %s is genuine but not ours: %s", self.branch, reason
        )
        raise NotificationMismatch(reason)

    def _signature_problem(self, headers: Any, body: bytes) -> str | None:
        """Why a signed platform message cannot be trusted, or None when it can."""
        signature = headers.get("wechatpay-signature")
        timestamp = headers.get("wechatpay-timestamp")
        nonce = headers.get("wechatpay-nonce")
        serial = headers.get("wechatpay-serial")
        if not signature:
            return "Wechatpay-Signature header is missing"
        if not timestamp or not nonce or not serial:
            return "Wechatpay-Timestamp, -Nonce or -Serial header is missing"
        signature_type = headers.get("wechatpay-signature-type")
        if signature_type is not None and signature_type != signing.SCHEMA:
            return "Wechatpay-Signature-Type is not WECHATPAY2-SHA256-RSA2048"
        named = self._verifying_key(serial)
        if named is None:
            return (
                "Wechatpay-Serial is not the configured platform public key id "
                "nor a configured platform certificate's serial"
            )
        if not timestamp.isdigit():
            return "Wechatpay-Timestamp is not a number"
        if abs(time.time() - int(timestamp)) > signing.MAX_CLOCK_SKEW_SECONDS:
            return "Wechatpay-Timestamp is more than 5 minutes from now (stale or replayed)"
        key, which = named
        if not signing.verify(key, signing.response_message(timestamp, nonce, body), signature):
            return f"Wechatpay-Signature does not verify with {which}"
        return None

    def _verifying_key(self, serial: str) -> tuple[RSAPublicKey, str] | None:
        """The key a Wechatpay-Serial names, and what it is; None when none configured is."""
        if serial == self.config.platform_public_key_id:
            return self._public_key, "the platform public key"
        if _HEX.fullmatch(serial):
            key = self._certificate_keys.get(serial.upper().lstrip("0"))
            if key is not None:
                return key, "the platform certificate"
        return None

    def _decrypt(self, envelope: dict[str, Any]) -> dict[str, Any]:
        if envelope.get("resource_type") != "encrypt-resource":
            raise Malformed("resource_type is not encrypt-resource")
        resource = _object(envelope, "resource")
        if resource.get("algorithm") != signing.AEAD_ALGORITHM:
            raise Malformed("resource algorithm is not AEAD_AES_256_GCM")
        associated_data = resource.get("associated_data", "")
        if not isinstance(associated_data, str):
            raise Malformed("associated_data is not a string")
        plaintext = signing.decrypt_resource(
            self._apiv3_key,
            _text(resource, "ciphertext"),
            nonce=_text(resource, "nonce"),
            associated_data=associated_data,
        )
        if plaintext is None:
            raise Malformed("resource does not decrypt with the APIv3 key")
        fact = json.loads(plaintext)
        if not isinstance(fact, dict):
            raise Malformed("resource is not a JSON object")
        # Genuine (signed and sealed by WeChat Pay), but maybe another merchant's.
        if self.config.sub_mchid is None:
            if fact.get("mchid") != self.config.mchid:
                self._mismatch("mchid is not this branch's merchant id")
        elif fact.get("sp_mchid") != self.config.mchid:
            self._mismatch("sp_mchid is not this branch's service provider")
        elif fact.get("sub_mchid") != self.config.sub_mchid:
            self._mismatch("sub_mchid is not this branch's sub-merchant id")
        return fact

    def _event(self, envelope: dict[str, Any], fact: dict[str, Any]) -> ProviderEvent | None:
        event_type = _text(envelope, "event_type")
        if event_type.startswith("TRANSACTION."):
            return self._payment_event(event_type, envelope, fact)
        if event_type in _REFUND_EVENTS:
            return self._refund_event(event_type, envelope, fact)
        return None

    def _payment_event(
        self, event_type: str, envelope: dict[str, Any], fact: dict[str, Any]
    ) -> ProviderEvent | None:
        if self.config.sub_mchid is None:
            if fact.get("appid") != self.config.appid:
                self._mismatch("appid is not this branch's app id")
        elif fact.get("sp_appid") != self.config.appid:
            self._mismatch("sp_appid is not this branch's service provider app id")
        elif self.config.sub_appid and fact.get("sub_appid") not in (None, self.config.sub_appid):
            self._mismatch("sub_appid is not this branch's sub-merchant app id")
        out_trade_no = _text(fact, "out_trade_no")
        amount = _object(fact, "amount")
        total = fen(amount.get("total"))
        # Domestic WeChat Pay settles in CNY only: absent means CNY, anything else is wrong.
        if amount.get("currency", CURRENCY) != CURRENCY:
            raise Malformed("currency is not CNY")
        if event_type != "TRANSACTION.SUCCESS" or fact.get("trade_state") != "SUCCESS":
            return None
        transaction_id = _text(fact, "transaction_id")
        return ProviderEvent(
            kind=EventKind.PAYMENT_SUCCEEDED,
            event_id=payment_event_id(transaction_id),
            out_trade_no=out_trade_no,
            amount_fen=total,
            currency=CURRENCY,
            occurred_at=parse_time(fact.get("success_time") or envelope.get("create_time")),
            provider_trade_no=transaction_id,
            detail={"event_type": event_type, "trade_type": fact.get("trade_type")},
        )

    def _refund_event(
        self, event_type: str, envelope: dict[str, Any], fact: dict[str, Any]
    ) -> ProviderEvent:
        kind, expected_status = _REFUND_EVENTS[event_type]
        if fact.get("refund_status") != expected_status:
            raise Malformed("refund_status does not match event_type")
        amount = _object(fact, "amount")
        refund_id = _text(fact, "refund_id")
        moment = fact.get("success_time") or envelope.get("create_time")
        return ProviderEvent(
            kind=kind,
            event_id=f"refund:{refund_id}:{expected_status}",
            out_trade_no=_text(fact, "out_trade_no"),
            amount_fen=fen(amount.get("refund")),
            currency=CURRENCY,
            occurred_at=parse_time(moment),
            provider_trade_no=fact.get("transaction_id"),
            out_refund_no=_text(fact, "out_refund_no"),
            detail={"event_type": event_type, "refund_id": refund_id},
        )

    # -- transport ------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        *,
        operation: str,
        repeatable: bool,
    ) -> _Reply:
        return await call_gateway(
            lambda: self._send(method, path, payload, operation),
            settings=self.config,
            operation=f"WeChat Pay {operation} for branch {self.branch}",
            repeatable=repeatable,
            changes_state=method != "GET",
            logger=logger,
        )

    async def _send(
        self, method: str, path: str, payload: dict[str, Any] | None, operation: str
    ) -> _Reply:
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        url = httpx.URL(self.config.gateway + path)
        headers = self._signed_headers(method, url.raw_path.decode(), body)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        response = await self.http.request(
            method,
            url,
            content=body or None,
            headers=headers,
            timeout=self.config.timeout_seconds,
        )
        status = response.status_code
        if status == 429 or status >= 500:
            # 429: WeChat Pay's rate limit turned the call away unread.
            raise TransientFailure(f"HTTP {status}", may_have_reached=status != 429)
        if status >= 400:
            code, text = _error_of(response)
            logger.warning(
                "wechatpay %s for branch %s refused: HTTP %d %s",
                operation,
                self.branch,
                status,
                code,
            )
            raise PlatformRefusal(status, code, text)
        problem = self._signature_problem(response.headers, response.content)
        if problem:
            logger.error(
                "wechatpay %s reply for branch %s not trusted: %s", operation, self.branch, problem
            )
            raise GatewayError(
                f"WeChat Pay {operation} reply not trusted: {problem}", outcome_unknown=True
            )
        if not response.content:
            return _Reply(status, {})
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise GatewayError(
                f"WeChat Pay {operation} reply is not a JSON object", outcome_unknown=True
            )
        return _Reply(status, data)

    def _signed_headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        """The Authorization (and our usual) headers for ``method`` on ``target`` (path?query)."""
        timestamp = str(int(time.time()))
        nonce = signing.new_nonce()
        message = signing.request_message(method, target, timestamp, nonce, body)
        return {
            "Authorization": signing.authorization(
                self.config.mchid,
                self.config.cert_serial_no,
                timestamp,
                nonce,
                signing.sign(self._merchant_key, message),
            ),
            "Accept": "application/json",
            "User-Agent": "branchpay-wechatpay",
            # Asks WeChat Pay to sign its answer with the public key (not a certificate).
            "Wechatpay-Serial": self.config.platform_public_key_id,
        }


def payment_event_id(transaction_id: str) -> str:
    """One id per paid transaction, shared by its callback and by a query."""
    return f"transaction:{transaction_id}:SUCCESS"


class _Gunzip:
    """Unpacks a gzip stream (of one or more members) piece by piece, in bounded pieces."""

    def __init__(self) -> None:
        self._unpack = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        data = chunk
        try:
            while data:
                yield self._unpack.decompress(data, _UNPACKED_PIECE)
                if self._unpack.eof:
                    data = self._unpack.unused_data
                    if data:
                        self._unpack = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                else:
                    data = self._unpack.unconsumed_tail
        except zlib.error:
            raise BillRejected("the WeChat Pay bill is not a valid gzip stream") from None

    def finish(self) -> bytes:
        rest = self._unpack.flush()
        if not self._unpack.eof:
            raise BillRejected("the WeChat Pay bill's gzip stream ends early")
        return rest


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        return data["code"], str(data.get("message", ""))[:200]
    return f"HTTP_{response.status_code}", ""
