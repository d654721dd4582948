"""The contract between branchpay and a payment provider plugin.

A provider package (built in under ``providers/`` or installed with pip) returns
subclasses of :class:`Provider` from its ``register_providers`` hook. branchpay
makes one instance per branch that configures the provider, passing the
branch's validated settings and a shared ``httpx.AsyncClient``.

Everything that crosses this boundary is a plain value defined here: money is an
integer count of fen, times are timezone-aware UTC, and secrets stay inside the
provider instance (they never appear in a value returned from it).

Errors a provider raises:

- :class:`NotificationRejected`: a notification failed verification (bad or
  missing signature, wrong app or merchant id, malformed body, stale
  timestamp). branchpay answers with ``notification_reply(accepted=False)`` and
  changes nothing.
- :class:`GatewayError`: a call to the platform failed. ``retryable`` says
  whether the platform documents the call as safe to repeat; ``outcome_unknown``
  says the platform may have acted (time-out after sending), so the caller must
  not guess a state and leaves it to reconciliation.
"""

from __future__ import annotations

import enum
import re
import secrets
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, BinaryIO, ClassVar, Protocol

import httpx
from pydantic import BaseModel

from api.domain.bills import BillLine as BillLine
from api.domain.bills import BillLineKind as BillLineKind
from api.domain.bills import BillLineStatus as BillLineStatus
from api.domain.bills import BillTotals as BillTotals
from api.domain.bills import BillUnavailableReason as BillUnavailableReason
from api.domain.payment import EventKind as EventKind
from api.domain.payment import RefundStatus

REFERENCE_ALPHABET = string.digits + string.ascii_letters


def new_reference(now: datetime | None = None) -> str:
    """A new out_trade_no / out_refund_no: the UTC creation time, then 71 random bits.

    24 characters [0-9A-Za-z]: ``YYMMDDHHMMSS`` then 12 random characters; valid
    for Alipay (<= 64), WeChat Pay (6..32) and UnionPay (8..40 alphanumeric).
    """
    moment = now or datetime.now(UTC)
    return f"{moment:%y%m%d%H%M%S}" + "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(12))


class PaymentMethod(enum.StrEnum):
    """How the payer pays; the GraphQL enum of the same name mirrors it."""

    PAGE = "PAGE"  # desktop browser redirect
    WAP = "WAP"  # mobile browser (H5)
    QR_CODE = "QR_CODE"  # payer scans a code
    APP = "APP"  # the platform's app SDK
    PAYMENT_CODE = "PAYMENT_CODE"  # a counter scans the payer's payment code (付款码)
    JSAPI = "JSAPI"  # inside the platform's app: WeChat JSAPI / mini program, Alipay mini program


# What startPayment must carry for a method, beside the order and the provider.
NEEDS_AUTH_CODE = frozenset({PaymentMethod.PAYMENT_CODE})
NEEDS_PAYER_ID = frozenset({PaymentMethod.JSAPI})


class ActionKind(enum.StrEnum):
    """What the partner frontend must do next to let the payer pay."""

    REDIRECT = "REDIRECT"  # open `url`
    QR_CODE = "QR_CODE"  # render `qr_code` as a QR code
    FORM_POST = "FORM_POST"  # render `form_html`, which auto-submits
    APP_SDK = "APP_SDK"  # hand `app_payload` to the platform's app SDK
    REQUEST_PAYMENT = "REQUEST_PAYMENT"  # pass `client_params` to wx.requestPayment
    TRADE_PAY = "TRADE_PAY"  # pass `trade_no` to my.tradePay / AlipayJSBridge tradePay
    NONE = "NONE"  # nothing to show: a payment code was charged; the payment's status tells


@dataclass(frozen=True, slots=True)
class PaymentAction:
    kind: ActionKind
    url: str | None = None
    qr_code: str | None = None
    form_html: str | None = None
    app_payload: str | None = None
    # REQUEST_PAYMENT: the signed parameters, by the names the platform's client
    # takes (WeChat: appId, timeStamp, nonceStr, package, signType, paySign).
    client_params: Mapping[str, str] | None = None
    trade_no: str | None = None  # TRADE_PAY: the platform's trade number


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """One payment attempt to open at the platform."""

    # Ours, unique across all attempts, 8..32 chars [0-9A-Za-z]. It starts with
    # the attempt's creation time in UTC as 12 digits, YYMMDDHHMMSS; a provider
    # may rely on the 12-digit UTC creation-time prefix (UnionPay derives its
    # txnTime from it, so query, refund and close need nothing but the number).
    out_trade_no: str
    amount_fen: int
    currency: str  # "CNY"
    subject: str  # short human description of the order
    method: PaymentMethod
    notify_url: str  # where the platform must POST its notifications
    expires_at: datetime  # UTC; the platform should stop accepting payment after it
    return_url: str | None = None
    client_ip: str | None = None
    # PAYMENT_CODE: the code the clerk scanned (a one-time secret of the payer:
    # never logged or stored). JSAPI: the payer's id at the platform (WeChat
    # openid, Alipay buyer user id 2088... or open_id).
    auth_code: str | None = None
    payer_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified fact reported by the platform about one attempt.

    ``event_id`` identifies the fact, not the delivery: every re-delivery of the
    same notification yields the same id (branchpay stores it under a unique
    index to apply each fact exactly once). For a payment event ``amount_fen`` is
    the amount paid; for a refund event it is the amount refunded and
    ``out_refund_no`` names the refund.
    """

    kind: EventKind
    event_id: str
    out_trade_no: str
    amount_fen: int
    currency: str
    occurred_at: datetime
    provider_trade_no: str | None = None
    out_refund_no: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)  # safe to store; no secrets


@dataclass(frozen=True, slots=True)
class NotificationRequest:
    """The raw HTTP request the platform sent to /notify/{provider}/{branch}."""

    method: str
    headers: Mapping[str, str]  # keys lower-cased
    query: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class NotificationReply:
    """What branchpay answers the platform, in the platform's own format."""

    status_code: int
    body: bytes
    media_type: str = "text/plain"


class AttemptState(enum.StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CLOSED = "CLOSED"
    UNKNOWN = "UNKNOWN"  # the platform does not know the attempt (yet)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The platform's view of one attempt; ``events`` are facts to apply."""

    state: AttemptState
    provider_trade_no: str | None = None
    amount_fen: int | None = None
    events: tuple[ProviderEvent, ...] = ()


class ReverseState(enum.StrEnum):
    """What a reverse (WeChat 撤销, Alipay trade.cancel, UnionPay 消费撤销) came to."""

    DONE = "DONE"  # the attempt is void at the platform: closed if unpaid, refunded if paid
    RETRY = "RETRY"  # not done yet (e.g. the payer is still confirming): call again later
    PAID = "PAID"  # the platform will not reverse a paid attempt: keep it as paid


@dataclass(frozen=True, slots=True)
class ReverseResult:
    state: ReverseState
    message: str | None = None


@dataclass(frozen=True, slots=True)
class RefundRequest:
    out_trade_no: str
    # Ours, unique; the platform refunds each number once. Like out_trade_no it
    # starts with a 12-digit UTC creation time, YYMMDDHHMMSS, and a provider may
    # rely on the 12-digit UTC creation-time prefix; an automatic refund (of a
    # second success) is numbered after its attempt and carries the attempt's.
    out_refund_no: str
    refund_fen: int
    total_fen: int  # the attempt's paid amount
    currency: str
    reason: str | None = None
    notify_url: str | None = None


# One enum for a refund's state, the platform's answer and our record alike; the
# name RefundState stays for plugins written against plugin API 2.
RefundState = RefundStatus


@dataclass(frozen=True, slots=True)
class RefundResult:
    state: RefundState
    provider_refund_no: str | None = None
    message: str | None = None


class ProviderError(Exception):
    """Base of everything a provider raises on purpose."""


class NotificationRejected(ProviderError):
    """The notification is not genuine or not for this branch; nothing may change."""


class NotificationMismatch(NotificationRejected):
    """Genuine (the signature verified) but not for this branch's merchant or attempt.

    Raised after the signature passes when the notification's merchant, app or
    sub-merchant id is not this branch's. branchpay answers it as accepted, so
    the platform stops re-sending it, records and counts it, and changes
    nothing. (branchpay itself checks the out-trade-number and the amount
    against the attempt.)
    """


class GatewayError(ProviderError):
    def __init__(
        self, message: str, *, retryable: bool = False, outcome_unknown: bool = False
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.outcome_unknown = outcome_unknown


class BillUnavailable(ProviderError):
    """The platform has no bill file for the day; ``reason`` says whether to ask again.

    ``NOT_READY``: not generated yet (the platform publishes day D on D+1, or is
    still writing it): ask again later. ``NO_BILL``: the platform has no bill
    for that day (no business that day, or a day it does not keep).
    """

    def __init__(self, message: str, *, reason: BillUnavailableReason) -> None:
        super().__init__(message)
        self.reason = reason


class BillRejected(ProviderError):
    """A downloaded bill is not to be trusted: another merchant's account, a failed
    hash check, or a file that does not follow the platform's layout."""


class Marks(Protocol):
    """A provider's durable set of marks (short strings), shared by every branchpay process.

    For facts a platform cannot be asked about later (e.g. UnionPay has no close
    call, so "this attempt was closed here" must be remembered). branchpay binds
    a store-backed set to every instance it makes, one set per provider name:
    two API processes agree and a restart keeps the marks. Keys are the
    provider's own (put the merchant id in them when branches differ).
    """

    async def add(self, key: str) -> None: ...

    async def has(self, key: str) -> bool: ...


class MemoryMarks:
    """Marks kept in this process only: what a provider has outside branchpay (tests, tools)."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    async def add(self, key: str) -> None:
        self._keys.add(key)

    async def has(self, key: str) -> bool:
        return key in self._keys


# Outside branchpay, every instance of a provider shares one in-process set.
_MEMORY_MARKS: dict[str, MemoryMarks] = {}


class Provider:
    """Base class of a payment provider adapter.

    Subclasses set the class attributes and implement the five coroutines.
    ``settings`` is an instance of ``Settings`` validated from the branch's
    table in plugins.toml; ``branch`` is the branch code.
    """

    name: ClassVar[str]
    display_name: ClassVar[str]
    methods: ClassVar[tuple[PaymentMethod, ...]]
    Settings: ClassVar[type[BaseModel]]
    # The amounts the platform accepts for one payment, in fen (inclusive).
    amount_limits_fen: ClassVar[tuple[int, int]] = (1, 10_000_000_000)
    # PAYMENT_CODE: the payment codes of this platform's wallet (matched in
    # full), so a counter sale finds its provider from the scanned code.
    payment_code_pattern: ClassVar[re.Pattern[str] | None] = None
    # JSAPI: the payer ids the platform issues (matched in full).
    payer_id_pattern: ClassVar[re.Pattern[str] | None] = None
    # Service-provider accounts: the settings a branch using an account declared
    # under [accounts.<name>.<provider>] must give itself (its sub-merchant id).
    # Empty: the provider does not support service-provider accounts.
    sub_merchant_settings: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def methods_with(cls, settings: BaseModel) -> tuple[PaymentMethod, ...]:
        """The methods a branch with these settings can use: ``methods`` unless a mode of
        the settings rules some out (e.g. one whose actions would carry a secret). The
        loader checks a branch's ``methods`` against it and offers no other."""
        return cls.methods

    def __init__(self, settings: BaseModel, *, branch: str, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.branch = branch
        self.http = http

    @property
    def marks(self) -> Marks:
        """This provider's durable marks (see :class:`Marks`); bound by branchpay's registry."""
        bound: Marks | None = self.__dict__.get("_marks")
        if bound is None:
            return _MEMORY_MARKS.setdefault(self.name, MemoryMarks())
        return bound

    @marks.setter
    def marks(self, marks: Marks) -> None:
        self.__dict__["_marks"] = marks

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        raise NotImplementedError

    async def parse_notification(self, request: NotificationRequest) -> ProviderEvent | None:
        """Verify and parse; None means genuine but nothing to apply (e.g. WAIT_BUYER_PAY)."""
        raise NotImplementedError

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        raise NotImplementedError

    async def query(self, out_trade_no: str) -> QueryResult:
        raise NotImplementedError

    async def refund(self, request: RefundRequest) -> RefundResult:
        raise NotImplementedError

    async def close(self, out_trade_no: str) -> None:
        """Close an unpaid attempt; closing an attempt the platform never saw is not an error."""
        raise NotImplementedError

    # --- payment codes at the counter (PAYMENT_CODE in ``methods``) -------------------

    async def pay_with_code(self, request: PaymentRequest) -> QueryResult:
        """Charge ``request.auth_code`` (the platform's micro-pay / code-pay call).

        SUCCEEDED with its events when paid at once; PENDING while the payer
        confirms on the phone (branchpay then polls :meth:`query` and, when its
        wait ends, calls :meth:`reverse`); FAILED when the platform surely
        refused it (bad or expired code, no balance). Raise :class:`GatewayError`
        with ``outcome_unknown`` when the platform may have charged it.
        """
        raise NotImplementedError

    async def reverse(self, out_trade_no: str) -> ReverseResult:
        """Void a counter sale whose outcome stayed unknown: closed if unpaid, refunded if paid."""
        raise NotImplementedError

    # --- daily bills (optional) -------------------------------------------------------
    #
    # A provider that can fetch its platform's daily trade bill overrides both
    # methods; branchpay's bill reconciliation (``branchpay reconcile bills``)
    # and the conformance kit use them only when :attr:`supports_bills` is true.

    @property
    def supports_bills(self) -> bool:
        """True when the class implements :meth:`download_bill` and :meth:`read_bill`."""
        cls = type(self)
        return (
            cls.download_bill is not Provider.download_bill
            and cls.read_bill is not Provider.read_bill
        )

    async def download_bill(self, day: date, destination: BinaryIO) -> None:
        """Fetch the trade bill of Beijing business day ``day`` into ``destination``.

        Use the platform's own bill protocol and write the file as the platform
        defines it (after the transport's own wrapping is undone: a gzip stream
        unpacked and its hash checked, a Base64 field decoded). Write as the
        bytes arrive: a bill can hold millions of lines. Raise
        :class:`BillUnavailable` when the platform has no file for the day,
        :class:`BillRejected` when the file fails its integrity check, and
        :class:`GatewayError` when the call fails.
        """
        raise NotImplementedError

    def read_bill(self, source: BinaryIO) -> Iterator[BillLine | BillTotals]:
        """Read a file :meth:`download_bill` wrote: every line in order, then the totals.

        Yield each :class:`BillLine` as it is read (never load the whole file),
        then, when the file has summary lines, one :class:`BillTotals` last.
        Raise :class:`BillRejected` when the file is another merchant's (its
        account or merchant id is not this branch's) or breaks the layout.
        """
        raise NotImplementedError
