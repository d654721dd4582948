"""The conformance suite every payment provider package must pass.

Subclass :class:`ProviderConformance` in a test module and supply two
fixtures (the ``branchpay_provider_kit`` pytest plugin supplies the rest):

- ``provider``: an instance of your Provider whose settings point at your
  running simulator, with ``branch`` set;
- ``gateway``: a :class:`~providers.kit.driver.GatewayDriver` over that simulator.

Optional fixtures: ``amount_fen`` (default 8800), ``payment_methods`` (the
methods each lifecycle case opens attempts with, to pay, refund and close
them; default every method the provider declares but ``PAYMENT_CODE``, whose
sales are charged with ``pay_with_code`` instead and have cases of their own)
and ``notify_url``. A provider offering ``JSAPI`` must supply ``payer_id`` (a
payer id its simulator accepts, matching ``payer_id_pattern``): every attempt
the kit opens with JSAPI carries it, and the default fixture fails saying so.

Every provider gets the channel attribute case (``amount_limits_fen``,
``payment_code_pattern``, ``payer_id_pattern``, ``sub_merchant_settings``) and
the checks beyond the signature, which need the driver's ``resign``: a genuine
notification re-signed for another merchant must raise
:class:`~api.plugin.NotificationMismatch`; re-signed with another amount or
out_trade_no, the event must carry what was signed (branchpay compares it with
the attempt). A driver without ``resign`` fails them, asking for it.

A provider offering ``PAYMENT_CODE`` gets the counter cases, and its driver
must implement ``payment_code(behaviour)`` and ``taken_fen(out_trade_no)``
(else they fail, saying what to add): a code paid at once (SUCCEEDED with its
event, the ledger holding the amount, a later query giving the same event id);
a payer who confirms (PENDING, then SUCCEEDED within 10 queries; a driver with
``code_notification(out_trade_no)`` also hands over the notification sent when
the payer paid, which must carry the same event id); a payer who never
confirms, reversed (DONE within a few RETRY answers, nothing taken, never
SUCCEEDED); a sale reversed while the payer confirms (a later confirm takes
nothing); a paid sale reversed (DONE with nothing taken, or PAID with the
amount taken); every code the driver makes matches ``payment_code_pattern``.
A provider offering ``JSAPI`` gets the in-app case: ``REQUEST_PAYMENT`` with
``client_params`` (non-empty strings) or ``TRADE_PAY`` with ``trade_no``.
Cases for a method the provider does not offer skip and say so.

A driver that can re-deliver a notification signed anew (``redeliver``, see
:class:`~providers.kit.driver.GatewayDriver`) also gets the re-signed
duplicate case. A driver with ``present(out_trade_no, action)`` is handed each
attempt's action before it is settled, to follow it as the payer would (open
the URL, post the form, hand the payload to the app), for platforms that learn
of an attempt only then. No failure message ever shows a secret's value.

A provider with daily bills (:attr:`~api.plugin.Provider.supports_bills`) also
gets the bill cases: a payment and its partial refund are on the day's bill,
read back as :class:`~api.plugin.BillLine` records whose totals add up; a day
still to come is ``NOT_READY``; reading is lazy. They fetch today's bill, so the
simulator must publish the current day (a :class:`~providers.kit.bills.BillBook`
does with ``BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY=1``, which branchpay's own
suite sets). Without bills these cases skip and say so: bills are optional.

Each case opens fresh attempts with their own ``out_trade_no``, so the suite
runs against one long-lived simulator. A failing case names the contract
clause it checks in its assertion message.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretBytes, SecretStr

from api.plugin import beijing_day
from api.plugins.contract import (
    ActionKind,
    AttemptState,
    BillLine,
    BillLineKind,
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
    new_reference,
)
from providers.kit.driver import CodeBehaviour, GatewayDriver

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,31}$")

# A settings field with one of these words in its name holds a secret unless
# it is explicitly public (e.g. ``alipay_public_key``, ``platform_public_key_id``).
_SECRET_NAME = re.compile(r"secret|private|passw|token|api_?v?\d*_?key|hmac|(^|_)key$")

# What the frontend may be told to do for each method, and the field it needs.
_ACCEPTABLE_KINDS: dict[PaymentMethod, frozenset[ActionKind]] = {
    PaymentMethod.PAGE: frozenset({ActionKind.REDIRECT, ActionKind.FORM_POST}),
    PaymentMethod.WAP: frozenset({ActionKind.REDIRECT, ActionKind.FORM_POST}),
    PaymentMethod.QR_CODE: frozenset({ActionKind.QR_CODE}),
    PaymentMethod.APP: frozenset({ActionKind.APP_SDK}),
    PaymentMethod.PAYMENT_CODE: frozenset({ActionKind.NONE}),
    PaymentMethod.JSAPI: frozenset({ActionKind.REQUEST_PAYMENT, ActionKind.TRADE_PAY}),
}
_FIELD_OF_KIND = {
    ActionKind.REDIRECT: "url",
    ActionKind.QR_CODE: "qr_code",
    ActionKind.FORM_POST: "form_html",
    ActionKind.APP_SDK: "app_payload",
    ActionKind.REQUEST_PAYMENT: "client_params",
    ActionKind.TRADE_PAY: "trade_no",
}


# How far a bill line's time may lie from when the kit made it happen.
_BILL_CLOCK_SLACK = timedelta(minutes=5)
# How long the kit waits for a refund the platform answered PENDING to reach the bill.
_BILL_WAIT_SECONDS = 5.0

# Counter sales: the queries a confirming payer gets to have paid in, the
# reverse calls that may answer RETRY, and the pause between them.
_CONFIRM_QUERIES = 10
_REVERSE_TRIES = 5
_POLL_PAUSE_SECONDS = 0.1
# What the kit asks a driver's resign() to name as the merchant: "not this branch's".
_OTHER_MERCHANT = "kit-other-merchant"


class _Trickle(io.RawIOBase):
    """A file handed out a few bytes per read, so a lazy reader stops well before the end."""

    def __init__(self, path: Path, chunk: int = 64) -> None:
        self._file = path.open("rb")
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(min(len(buffer), self._chunk))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


def new_out_trade_no() -> str:
    """A fresh attempt number made the way branchpay makes them (see PaymentRequest)."""
    return new_reference()


def new_out_refund_no() -> str:
    return new_reference()


def _assert_client_params(params: object, what: str) -> None:
    assert isinstance(params, Mapping) and params, (
        f"{what} gave kind REQUEST_PAYMENT without client_params (the parameters the "
        "platform's client call takes, e.g. WeChat's appId, timeStamp, nonceStr, package, "
        "signType, paySign)"
    )
    for name, value in params.items():
        assert isinstance(name, str) and isinstance(value, str) and value, (
            f"{what} gave client_params[{name!r}] that is not a non-empty string"
        )


def secret_values(settings: BaseModel) -> dict[str, str]:
    """The plain text of every SecretStr / SecretBytes field, by field name."""
    found: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found[name] = value.get_secret_value()
        elif isinstance(value, SecretBytes):
            found[name] = value.get_secret_value().decode("utf-8", "replace")
    return found


class ProviderConformance:
    """Base class of a provider package's conformance test class."""

    # --- helpers -----------------------------------------------------------------

    async def open_attempt(
        self,
        provider: Provider,
        amount_fen: int,
        notify_url: str,
        method: PaymentMethod,
        payer_id: str | None = None,
    ) -> tuple[str, PaymentAction]:
        """A fresh attempt opened with ``create_payment`` (JSAPI ones with ``payer_id``)."""
        out_trade_no = new_out_trade_no()
        request = PaymentRequest(
            out_trade_no=out_trade_no,
            amount_fen=amount_fen,
            currency="CNY",
            subject="Conformance kit order",
            method=method,
            notify_url=notify_url,
            expires_at=datetime.now(UTC) + timedelta(minutes=30),
            return_url="https://partner.example/return",
            client_ip="127.0.0.1",
            payer_id=payer_id if method is PaymentMethod.JSAPI else None,
        )
        action = await provider.create_payment(request)
        return out_trade_no, action

    async def paid_attempt(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        method: PaymentMethod,
        payer_id: str | None = None,
    ) -> tuple[str, NotificationRequest, ProviderEvent]:
        out_trade_no, action = await self.open_attempt(
            provider, amount_fen, notify_url, method, payer_id
        )
        await self.present(gateway, out_trade_no, action)
        notification = await gateway.settle(out_trade_no, "success")
        assert notification is not None, (
            "gateway.settle(..., 'success') returned None: a platform must notify a payment"
        )
        event = await provider.parse_notification(notification)
        assert event is not None, (
            "parse_notification returned None for a genuine payment-success notification"
        )
        return out_trade_no, notification, event

    @staticmethod
    async def present(gateway: GatewayDriver, out_trade_no: str, action: PaymentAction) -> None:
        """Let the payer follow the action, if the driver can (its optional ``present``)."""
        present = getattr(gateway, "present", None)
        if present is not None:
            await present(out_trade_no, action)

    async def refund(
        self,
        provider: Provider,
        out_trade_no: str,
        out_refund_no: str,
        refund_fen: int,
        total_fen: int,
        notify_url: str,
    ) -> RefundResult:
        return await provider.refund(
            RefundRequest(
                out_trade_no=out_trade_no,
                out_refund_no=out_refund_no,
                refund_fen=refund_fen,
                total_fen=total_fen,
                currency="CNY",
                reason="conformance kit",
                notify_url=notify_url,
            )
        )

    # --- class attributes and settings ---------------------------------------------

    def test_class_attributes(self, provider: Provider) -> None:
        cls = type(provider)
        assert isinstance(getattr(cls, "name", None), str) and NAME_PATTERN.match(cls.name), (
            f"{cls.__name__}.name must match {NAME_PATTERN.pattern}, "
            f"got {getattr(cls, 'name', None)!r}"
        )
        assert isinstance(getattr(cls, "display_name", None), str) and cls.display_name.strip(), (
            f"{cls.__name__}.display_name must be a non-empty string"
        )
        methods = getattr(cls, "methods", ())
        assert isinstance(methods, tuple) and methods, (
            f"{cls.__name__}.methods must be a non-empty tuple of PaymentMethod"
        )
        assert all(isinstance(m, PaymentMethod) for m in methods), (
            f"{cls.__name__}.methods holds something that is not a PaymentMethod: {methods!r}"
        )
        assert len(set(methods)) == len(methods), f"{cls.__name__}.methods repeats a method"
        settings_cls = getattr(cls, "Settings", None)
        assert isinstance(settings_cls, type) and issubclass(settings_cls, BaseModel), (
            f"{cls.__name__}.Settings must be a pydantic BaseModel subclass"
        )
        assert isinstance(provider.settings, settings_cls), (
            "provider.settings must be an instance of the provider's Settings model"
        )
        assert isinstance(provider.branch, str) and provider.branch, "provider.branch must be set"

    def test_channel_attributes(self, provider: Provider, amount_fen: int) -> None:
        cls = type(provider)
        low_high = cls.amount_limits_fen
        assert (
            isinstance(low_high, tuple)
            and len(low_high) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in low_high)
        ), f"{cls.__name__}.amount_limits_fen must be a (low, high) tuple of ints in fen"
        low, high = low_high
        assert 1 <= low <= high, (
            f"{cls.__name__}.amount_limits_fen is {low_high}; it needs 1 <= low <= high"
        )
        assert low <= amount_fen <= high, (
            f"the amount_fen fixture ({amount_fen}) is outside {cls.__name__}'s amount limits"
        )
        for name in ("payment_code_pattern", "payer_id_pattern"):
            value = getattr(cls, name)
            assert value is None or isinstance(value, re.Pattern), (
                f"{cls.__name__}.{name} must be a compiled pattern (re.compile) or None"
            )
        if PaymentMethod.PAYMENT_CODE in cls.methods:
            assert cls.payment_code_pattern is not None, (
                f"{cls.__name__} offers PAYMENT_CODE without a payment_code_pattern: branchpay "
                "finds a counter sale's provider from the scanned code"
            )
            for name in ("pay_with_code", "reverse"):
                assert getattr(cls, name) is not getattr(Provider, name), (
                    f"{cls.__name__} offers PAYMENT_CODE without implementing {name}"
                )
        if PaymentMethod.JSAPI in cls.methods:
            assert cls.payer_id_pattern is not None, (
                f"{cls.__name__} offers JSAPI without a payer_id_pattern: branchpay checks "
                "the payer id before calling"
            )
        subs = cls.sub_merchant_settings
        assert isinstance(subs, tuple) and all(isinstance(n, str) for n in subs), (
            f"{cls.__name__}.sub_merchant_settings must be a tuple of setting names"
        )
        unknown = [n for n in subs if n not in cls.Settings.model_fields]
        assert not unknown, (
            f"{cls.__name__}.sub_merchant_settings names {unknown}, which are not fields "
            f"of {cls.Settings.__name__}"
        )

    def test_secret_settings_are_hidden(self, provider: Provider) -> None:
        settings = provider.settings
        for name in type(settings).model_fields:
            if _SECRET_NAME.search(name) and "public" not in name:
                value = getattr(settings, name)
                # A bare bool: the rewritten assertion must not show the value.
                hidden = value is None or isinstance(value, SecretStr | SecretBytes)
                assert hidden, (
                    f"settings field {name!r} looks like a secret but is "
                    f"{type(value).__name__}, not SecretStr/SecretBytes"
                )
        shown = repr(settings) + str(settings) + settings.model_dump_json()
        for name, secret in secret_values(settings).items():
            leaked = bool(secret) and secret in shown
            if leaked:
                assert not leaked, f"the secret in settings field {name!r} shows in repr/str/json"

    # --- create -------------------------------------------------------------------

    async def test_create_payment_each_method(
        self, provider: Provider, amount_fen: int, notify_url: str, payer_id: str | None
    ) -> None:
        """Every declared method but PAYMENT_CODE opens an attempt with the right action.

        A PAYMENT_CODE sale is not opened with ``create_payment`` but charged
        with ``pay_with_code``: the code cases below cover it.
        """
        secrets = [s for s in secret_values(provider.settings).values() if len(s) >= 6]
        opened = [m for m in type(provider).methods if m is not PaymentMethod.PAYMENT_CODE]
        if not opened:
            pytest.skip("the provider offers only PAYMENT_CODE: nothing is opened with create")
        for method in opened:
            _, action = await self.open_attempt(provider, amount_fen, notify_url, method, payer_id)
            assert isinstance(action, PaymentAction), (
                f"create_payment({method}) returned {type(action).__name__}, not PaymentAction"
            )
            allowed = _ACCEPTABLE_KINDS[method]
            assert action.kind in allowed, (
                f"create_payment({method}) gave kind {action.kind}; expected one of "
                f"{sorted(k.value for k in allowed)}"
            )
            field_name = _FIELD_OF_KIND[action.kind]
            value = getattr(action, field_name)
            if action.kind is ActionKind.REQUEST_PAYMENT:
                _assert_client_params(value, f"create_payment({method})")
            else:
                assert isinstance(value, str) and value, (
                    f"create_payment({method}) gave kind {action.kind} without {field_name}"
                )
            shown = " ".join(
                v
                for v in (
                    action.url,
                    action.qr_code,
                    action.form_html,
                    action.app_payload,
                    action.trade_no,
                    *(action.client_params or {}).values(),
                )
                if isinstance(v, str) and v
            )
            leaked = any(s in shown for s in secrets)
            assert not leaked, (
                f"create_payment({method}) put a secret setting into the PaymentAction"
            )

    async def test_query_before_payment_is_not_settled(
        self,
        provider: Provider,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            out_trade_no, _ = await self.open_attempt(
                provider, amount_fen, notify_url, payment_method, payer_id
            )
            result = await provider.query(out_trade_no)
            assert result.state in (AttemptState.PENDING, AttemptState.UNKNOWN), (
                f"query of an attempt nobody paid gave {result.state}; expected PENDING or UNKNOWN"
            )

    async def test_query_unknown_attempt(self, provider: Provider) -> None:
        result = await provider.query(new_out_trade_no())
        assert result.state is AttemptState.UNKNOWN, (
            f"query of an attempt the platform never saw gave {result.state}; expected UNKNOWN"
        )

    # --- notifications ------------------------------------------------------------

    async def test_success_notification(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            out_trade_no, _, event = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            assert isinstance(event, ProviderEvent), (
                "parse_notification must return a ProviderEvent"
            )
            assert event.kind is EventKind.PAYMENT_SUCCEEDED, (
                f"a payment-success notification parsed as {event.kind}, not PAYMENT_SUCCEEDED"
            )
            assert event.out_trade_no == out_trade_no, (
                f"event.out_trade_no is {event.out_trade_no!r}, the attempt was {out_trade_no!r}"
            )
            assert event.amount_fen == amount_fen and isinstance(event.amount_fen, int), (
                f"event.amount_fen is {event.amount_fen!r}, the attempt was for {amount_fen} fen"
            )
            assert event.currency == "CNY", f"event.currency is {event.currency!r}, expected 'CNY'"
            assert isinstance(event.event_id, str) and event.event_id, "event.event_id must be set"
            assert (
                event.occurred_at.tzinfo is not None and event.occurred_at.utcoffset() is not None
            ), "event.occurred_at must be timezone-aware"
            secrets = [s for s in secret_values(provider.settings).values() if len(s) >= 6]
            leaked = any(s in repr(event.detail) for s in secrets)
            assert not leaked, "event.detail holds a secret"

    async def test_duplicate_notification_same_event_id(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            _, notification, first = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            again = await provider.parse_notification(notification)
            assert again is not None, (
                "parsing the same notification twice must not change its verdict"
            )
            assert again.event_id == first.event_id, (
                f"the same notification parsed twice gave event ids {first.event_id!r} and "
                f"{again.event_id!r}; re-deliveries must be recognisable as duplicates"
            )
            assert (again.kind, again.amount_fen) == (first.kind, first.amount_fen)

    async def test_resigned_redelivery_same_event_id(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        redeliver = getattr(gateway, "redeliver", None)
        if redeliver is None:
            pytest.skip("the GatewayDriver has no redeliver(): re-signed duplicates not checked")
        for payment_method in payment_methods:
            out_trade_no, _, first = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            again = await provider.parse_notification(await redeliver(out_trade_no))
            assert again is not None, "a re-signed re-delivery of a payment parsed to None"
            assert again.event_id == first.event_id, (
                f"a re-delivery signed anew gave event id {again.event_id!r}, the first delivery "
                f"{first.event_id!r}: the id must name the fact, not the delivery"
            )
            assert (again.kind, again.amount_fen) == (first.kind, first.amount_fen)

    async def _assert_rejected(
        self, provider: Provider, notification: NotificationRequest, what: str
    ) -> None:
        with pytest.raises(NotificationRejected):
            await provider.parse_notification(notification)
            pytest.fail(f"parse_notification accepted the {what} notification")

    async def test_forged_notification_rejected(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            _, notification, _ = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            await self._assert_rejected(provider, gateway.forge(notification), "forged")

    async def test_tampered_notification_rejected(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            _, notification, _ = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            await self._assert_rejected(provider, gateway.tamper(notification), "tampered")

    async def test_unsigned_notification_rejected(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            _, notification, _ = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            await self._assert_rejected(provider, gateway.unsigned(notification), "unsigned")

    def test_notification_reply(self, provider: Provider) -> None:
        replies: dict[bool, Any] = {}
        for accepted in (True, False):
            reply = provider.notification_reply(accepted=accepted)
            assert isinstance(reply, NotificationReply), (
                f"notification_reply(accepted={accepted}) must return a NotificationReply"
            )
            assert 200 <= reply.status_code <= 599, (
                f"notification_reply(accepted={accepted}) has status {reply.status_code}"
            )
            assert isinstance(reply.body, bytes) and reply.body, (
                f"notification_reply(accepted={accepted}) has an empty body"
            )
            replies[accepted] = (reply.status_code, reply.body)
        assert 200 <= provider.notification_reply(accepted=True).status_code < 300, (
            "the accepting reply must have a 2xx status, or the platform re-delivers forever"
        )
        assert replies[True] != replies[False], "accepting and rejecting replies are identical"

    # --- query, refund, close -----------------------------------------------------

    async def test_query_after_payment(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            out_trade_no, _, event = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            result = await provider.query(out_trade_no)
            assert result.state is AttemptState.SUCCEEDED, (
                f"query after a successful payment gave {result.state}, not SUCCEEDED"
            )
            assert result.amount_fen == amount_fen, (
                f"query after payment gave amount_fen={result.amount_fen!r}, expected {amount_fen}"
            )
            for fact in result.events:
                if fact.kind is EventKind.PAYMENT_SUCCEEDED:
                    assert fact.event_id == event.event_id, (
                        "the payment fact from query must carry the notification's event_id "
                        f"({fact.event_id!r} != {event.event_id!r}), or it is applied twice"
                    )

    async def test_partial_then_rest_refund(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            assert amount_fen >= 2, "the refund cases need an amount_fen of at least 2"
            out_trade_no, _, _ = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            first_fen = amount_fen // 3 or 1
            for part, fen in (("partial", first_fen), ("remaining", amount_fen - first_fen)):
                result = await self.refund(
                    provider, out_trade_no, new_out_refund_no(), fen, amount_fen, notify_url
                )
                assert isinstance(result, RefundResult), "refund must return a RefundResult"
                assert result.state in (RefundState.SUCCEEDED, RefundState.PENDING), (
                    f"the {part} refund of {fen} of {amount_fen} fen gave {result.state} "
                    f"({result.message})"
                )

    async def test_refund_same_number_refunds_once(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            out_trade_no, _, _ = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            half = amount_fen // 2 or 1
            out_refund_no = new_out_refund_no()
            for attempt in ("first", "repeated"):
                result = await self.refund(
                    provider, out_trade_no, out_refund_no, half, amount_fen, notify_url
                )
                assert result.state in (RefundState.SUCCEEDED, RefundState.PENDING), (
                    f"the {attempt} refund with out_refund_no {out_refund_no} gave {result.state} "
                    f"({result.message}); a repeated number must answer like the first"
                )
            # Had the platform counted the repeat, the remainder would exceed what is left.
            rest = amount_fen - half
            if rest:
                result = await self.refund(
                    provider, out_trade_no, new_out_refund_no(), rest, amount_fen, notify_url
                )
                assert result.state in (RefundState.SUCCEEDED, RefundState.PENDING), (
                    f"refunding the remaining {rest} fen after a repeated refund number gave "
                    f"{result.state} ({result.message}): the repeated number was refunded twice"
                )

    async def test_refund_beyond_paid_amount_refused(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            out_trade_no, _, _ = await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_method, payer_id
            )
            try:
                result = await self.refund(
                    provider,
                    out_trade_no,
                    new_out_refund_no(),
                    amount_fen + 1,
                    amount_fen,
                    notify_url,
                )
            except GatewayError:
                continue
            assert result.state is RefundState.FAILED, (
                f"a refund of {amount_fen + 1} fen of a {amount_fen} fen payment gave "
                f"{result.state}; it must be refused (GatewayError or FAILED)"
            )

    async def test_close_unpaid_attempt(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        for payment_method in payment_methods:
            out_trade_no, action = await self.open_attempt(
                provider, amount_fen, notify_url, payment_method, payer_id
            )
            # The payer saw the attempt (opened the page) and left it unpaid.
            await self.present(gateway, out_trade_no, action)
            await provider.close(out_trade_no)
            result = await provider.query(out_trade_no)
            assert result.state is AttemptState.CLOSED, (
                f"query after closing an unpaid attempt gave {result.state}, not CLOSED"
            )

    async def test_close_never_seen_attempt_is_not_an_error(self, provider: Provider) -> None:
        try:
            await provider.close(new_out_trade_no())
        except GatewayError as exc:
            pytest.fail(f"closing an attempt the platform never saw raised GatewayError: {exc}")

    @pytest.mark.parametrize("outcome", ["fail", "close"])
    async def test_unsuccessful_outcome(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
        outcome: str,
    ) -> None:
        for payment_method in payment_methods:
            out_trade_no, action = await self.open_attempt(
                provider, amount_fen, notify_url, payment_method, payer_id
            )
            await self.present(gateway, out_trade_no, action)
            notification = await gateway.settle(out_trade_no, outcome)  # type: ignore[arg-type]
            if notification is not None:
                event = await provider.parse_notification(notification)
                if event is not None:
                    assert event.kind in (EventKind.PAYMENT_FAILED, EventKind.PAYMENT_CLOSED), (
                        f"settle(outcome={outcome!r}) notified {event.kind}; expected "
                        "PAYMENT_FAILED or PAYMENT_CLOSED"
                    )
                    assert event.out_trade_no == out_trade_no, (
                        f"the {outcome} event names {event.out_trade_no!r}, not {out_trade_no!r}"
                    )
            result = await provider.query(out_trade_no)
            assert result.state is not AttemptState.SUCCEEDED, (
                f"query after settle(outcome={outcome!r}) claims the attempt SUCCEEDED"
            )

    # --- counter sales: payment codes (PAYMENT_CODE) --------------------------------

    @staticmethod
    def _needs_codes(provider: Provider, gateway: GatewayDriver) -> tuple[Any, Any]:
        """The driver's payment_code and taken_fen, for a provider offering PAYMENT_CODE."""
        if PaymentMethod.PAYMENT_CODE not in type(provider).methods:
            pytest.skip(
                f"{type(provider).__name__} does not offer PAYMENT_CODE: counter cases not run"
            )
        missing = [n for n in ("payment_code", "taken_fen") if getattr(gateway, n, None) is None]
        if missing:
            pytest.fail(
                f"{type(provider).__name__} offers PAYMENT_CODE, so its GatewayDriver must "
                f"implement {' and '.join(missing)}: payment_code(behaviour) -> a code your "
                "simulator treats as 'pay' (paid at once), 'confirm' (payer confirming for the "
                "pay call and the first queries, then paid) or 'never' (confirming until "
                "reversed); async taken_fen(out_trade_no) -> what the simulator's ledger holds "
                "as taken from the payer (see providers.kit.driver)"
            )
        return gateway.payment_code, gateway.taken_fen  # type: ignore[attr-defined]

    async def code_sale(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        behaviour: CodeBehaviour,
    ) -> tuple[str, QueryResult]:
        """A counter sale charged with a code the driver made for ``behaviour``."""
        payment_code, _ = self._needs_codes(provider, gateway)
        code = payment_code(behaviour)
        self._assert_code_matches(provider, code, behaviour)
        out_trade_no = new_out_trade_no()
        result = await provider.pay_with_code(
            PaymentRequest(
                out_trade_no=out_trade_no,
                amount_fen=amount_fen,
                currency="CNY",
                subject="Conformance kit counter sale",
                method=PaymentMethod.PAYMENT_CODE,
                notify_url=notify_url,
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
                client_ip="127.0.0.1",
                auth_code=code,
            )
        )
        assert isinstance(result, QueryResult), (
            f"pay_with_code returned {type(result).__name__}, not QueryResult"
        )
        leaked = code in repr(result)
        assert not leaked, (
            "pay_with_code's result shows the payment code: it is the payer's one-time secret"
        )
        return out_trade_no, result

    @staticmethod
    def _assert_code_matches(provider: Provider, code: object, behaviour: str) -> None:
        pattern = type(provider).payment_code_pattern
        assert pattern is not None, (
            f"{type(provider).__name__} offers PAYMENT_CODE without a payment_code_pattern"
        )
        assert isinstance(code, str) and pattern.fullmatch(code), (
            f"the driver's payment_code({behaviour!r}) made a code that does not match "
            f"payment_code_pattern {pattern.pattern!r}: branchpay would not send it to "
            f"{type(provider).__name__}"
        )

    @staticmethod
    def _succeeded_event(result: QueryResult, out_trade_no: str, amount_fen: int, what: str) -> Any:
        facts = [e for e in result.events if e.kind is EventKind.PAYMENT_SUCCEEDED]
        assert len(facts) == 1, (
            f"{what} is SUCCEEDED with {len(facts)} PAYMENT_SUCCEEDED events; it must carry "
            "exactly one, the fact branchpay applies"
        )
        event = facts[0]
        assert event.out_trade_no == out_trade_no, (
            f"{what}: the event names {event.out_trade_no!r}, the sale was {out_trade_no!r}"
        )
        assert event.amount_fen == amount_fen, (
            f"{what}: the event says {event.amount_fen!r} fen, the sale was {amount_fen}"
        )
        return event

    async def _reverse_until_settled(self, provider: Provider, out_trade_no: str) -> ReverseResult:
        result: ReverseResult | None = None
        for _ in range(_REVERSE_TRIES):
            result = await provider.reverse(out_trade_no)
            assert isinstance(result, ReverseResult), (
                f"reverse returned {type(result).__name__}, not ReverseResult"
            )
            if result.state is not ReverseState.RETRY:
                return result
            await asyncio.sleep(_POLL_PAUSE_SECONDS)
        pytest.fail(
            f"reverse({out_trade_no}) answered RETRY {_REVERSE_TRIES} times: a reverse must "
            "come to DONE or PAID within a few tries"
        )

    async def test_payment_codes_match_the_pattern(
        self, provider: Provider, gateway: GatewayDriver
    ) -> None:
        payment_code, _ = self._needs_codes(provider, gateway)
        behaviours: tuple[CodeBehaviour, ...] = ("pay", "confirm", "never")
        codes = []
        for behaviour in behaviours:
            for _ in range(10):
                code = payment_code(behaviour)
                self._assert_code_matches(provider, code, behaviour)
                codes.append(code)
        assert len(set(codes)) == len(codes), (
            "the driver's payment_code gave the same code twice: payment codes are one-time"
        )

    async def test_code_paid_at_once(
        self, provider: Provider, gateway: GatewayDriver, amount_fen: int, notify_url: str
    ) -> None:
        _, taken_fen = self._needs_codes(provider, gateway)
        out_trade_no, result = await self.code_sale(
            provider, gateway, amount_fen, notify_url, "pay"
        )
        assert result.state is AttemptState.SUCCEEDED, (
            f"pay_with_code of a code the payer pays at once gave {result.state}, not SUCCEEDED"
        )
        event = self._succeeded_event(result, out_trade_no, amount_fen, "pay_with_code")
        taken = await taken_fen(out_trade_no)
        assert taken == amount_fen, (
            f"the simulator's ledger holds {taken} fen taken for a {amount_fen} fen sale"
        )
        queried = await provider.query(out_trade_no)
        assert queried.state is AttemptState.SUCCEEDED, (
            f"query after a code paid at once gave {queried.state}, not SUCCEEDED"
        )
        for fact in queried.events:
            if fact.kind is EventKind.PAYMENT_SUCCEEDED:
                assert fact.event_id == event.event_id, (
                    "the payment fact from query must carry pay_with_code's event_id "
                    f"({fact.event_id!r} != {event.event_id!r}), or it is applied twice"
                )

    async def test_code_payer_confirms(
        self, provider: Provider, gateway: GatewayDriver, amount_fen: int, notify_url: str
    ) -> None:
        """PENDING while the payer confirms; queries reach SUCCEEDED; one fact, one id.

        A driver with ``code_notification(out_trade_no)`` also hands over the
        notification the platform sent when the payer paid: it must carry the
        same event id as the query's fact.
        """
        _, taken_fen = self._needs_codes(provider, gateway)
        out_trade_no, result = await self.code_sale(
            provider, gateway, amount_fen, notify_url, "confirm"
        )
        assert result.state is AttemptState.PENDING, (
            f"pay_with_code while the payer confirms on the phone gave {result.state}, not "
            "PENDING (WeChat USERPAYING, Alipay 10003, UnionPay accepted-not-final)"
        )
        queried = result
        for _ in range(_CONFIRM_QUERIES):
            await asyncio.sleep(_POLL_PAUSE_SECONDS)
            queried = await provider.query(out_trade_no)
            if queried.state is not AttemptState.PENDING:
                break
        assert queried.state is AttemptState.SUCCEEDED, (
            f"after {_CONFIRM_QUERIES} queries of a sale the payer confirmed, query gave "
            f"{queried.state}, not SUCCEEDED"
        )
        event = self._succeeded_event(queried, out_trade_no, amount_fen, "the query")
        taken = await taken_fen(out_trade_no)
        assert taken == amount_fen, (
            f"the simulator's ledger holds {taken} fen taken for a {amount_fen} fen sale"
        )
        code_notification = getattr(gateway, "code_notification", None)
        notification = await code_notification(out_trade_no) if code_notification else None
        if notification is not None:
            notified = await provider.parse_notification(notification)
            assert notified is not None and notified.event_id == event.event_id, (
                "the notification of the confirmed sale must carry the query's event_id "
                f"({getattr(notified, 'event_id', None)!r} != {event.event_id!r}), or the "
                "payment is applied twice"
            )

    async def test_code_never_confirmed_is_reversed(
        self, provider: Provider, gateway: GatewayDriver, amount_fen: int, notify_url: str
    ) -> None:
        _, taken_fen = self._needs_codes(provider, gateway)
        out_trade_no, result = await self.code_sale(
            provider, gateway, amount_fen, notify_url, "never"
        )
        assert result.state is AttemptState.PENDING, (
            f"pay_with_code while the payer confirms on the phone gave {result.state}, not PENDING"
        )
        for _ in range(3):
            queried = await provider.query(out_trade_no)
            assert queried.state is AttemptState.PENDING, (
                f"query of a sale the payer is still confirming gave {queried.state}, not PENDING"
            )
        reversed_ = await self._reverse_until_settled(provider, out_trade_no)
        assert reversed_.state is ReverseState.DONE, (
            f"reverse of a sale the payer never confirmed gave {reversed_.state}, not DONE"
        )
        taken = await taken_fen(out_trade_no)
        assert taken == 0, f"after the reverse the simulator's ledger still holds {taken} fen"
        after = await provider.query(out_trade_no)
        assert after.state is not AttemptState.SUCCEEDED, (
            "query after reversing a sale the payer never confirmed claims it SUCCEEDED"
        )

    async def test_code_reversed_while_confirming_never_charges(
        self, provider: Provider, gateway: GatewayDriver, amount_fen: int, notify_url: str
    ) -> None:
        _, taken_fen = self._needs_codes(provider, gateway)
        out_trade_no, result = await self.code_sale(
            provider, gateway, amount_fen, notify_url, "confirm"
        )
        assert result.state is AttemptState.PENDING, (
            f"pay_with_code while the payer confirms on the phone gave {result.state}, not PENDING"
        )
        reversed_ = await self._reverse_until_settled(provider, out_trade_no)
        assert reversed_.state in (ReverseState.DONE, ReverseState.PAID), (
            f"reverse while the payer confirms gave {reversed_.state}"
        )
        # Queried as often as a confirming payer needs to have paid.
        for _ in range(_CONFIRM_QUERIES):
            queried = await provider.query(out_trade_no)
        taken = await taken_fen(out_trade_no)
        if reversed_.state is ReverseState.DONE:
            assert taken == 0, (
                f"the sale was reversed (DONE) while the payer confirmed, yet the ledger holds "
                f"{taken} fen: a later confirm must not charge a voided sale"
            )
            assert queried.state is not AttemptState.SUCCEEDED, (
                "query after reversing a confirming sale claims it SUCCEEDED"
            )
        else:
            assert taken == amount_fen, (
                f"reverse answered PAID, yet the ledger holds {taken} of {amount_fen} fen"
            )

    async def test_code_paid_then_reversed(
        self, provider: Provider, gateway: GatewayDriver, amount_fen: int, notify_url: str
    ) -> None:
        _, taken_fen = self._needs_codes(provider, gateway)
        out_trade_no, result = await self.code_sale(
            provider, gateway, amount_fen, notify_url, "pay"
        )
        assert result.state is AttemptState.SUCCEEDED, (
            f"pay_with_code of a code the payer pays at once gave {result.state}, not SUCCEEDED"
        )
        reversed_ = await self._reverse_until_settled(provider, out_trade_no)
        taken = await taken_fen(out_trade_no)
        if reversed_.state is ReverseState.DONE:
            assert taken == 0, (
                f"reverse of a paid sale answered DONE (refunded), yet the ledger holds {taken} fen"
            )
        else:
            assert reversed_.state is ReverseState.PAID
            assert taken == amount_fen, (
                f"reverse of a paid sale answered PAID (kept as paid), yet the ledger holds "
                f"{taken} of {amount_fen} fen"
            )

    # --- in-app pay (JSAPI) ----------------------------------------------------------

    async def test_jsapi_payment_has_client_parameters(
        self, provider: Provider, amount_fen: int, notify_url: str, payer_id: str | None
    ) -> None:
        cls = type(provider)
        if PaymentMethod.JSAPI not in cls.methods:
            pytest.skip(f"{cls.__name__} does not offer JSAPI: in-app cases not run")
        assert isinstance(payer_id, str) and payer_id, "the payer_id fixture must give a string"
        pattern = cls.payer_id_pattern
        if pattern is not None:
            assert pattern.fullmatch(payer_id), (
                f"the payer_id fixture {payer_id!r} does not match "
                f"{cls.__name__}.payer_id_pattern {pattern.pattern!r}"
            )
        _, action = await self.open_attempt(
            provider, amount_fen, notify_url, PaymentMethod.JSAPI, payer_id
        )
        if action.kind is ActionKind.REQUEST_PAYMENT:
            _assert_client_params(action.client_params, "create_payment(JSAPI)")
        else:
            assert action.kind is ActionKind.TRADE_PAY, (
                f"create_payment(JSAPI) gave kind {action.kind}; expected REQUEST_PAYMENT "
                "(client_params for wx.requestPayment) or TRADE_PAY (trade_no for my.tradePay)"
            )
            assert isinstance(action.trade_no, str) and action.trade_no, (
                "create_payment(JSAPI) gave kind TRADE_PAY without trade_no"
            )

    # --- checks beyond the signature -------------------------------------------------

    @staticmethod
    def _needs_resign(gateway: GatewayDriver) -> Any:
        resign = getattr(gateway, "resign", None)
        if resign is None:
            pytest.fail(
                "the GatewayDriver has no resign(notification, *, amount_fen=None, "
                "merchant=None, out_trade_no=None): the checks beyond the signature need the "
                "notification re-signed with the platform's genuine key and one thing changed "
                "(see providers.kit.driver); add it"
            )
        return resign

    async def _genuine(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> tuple[str, NotificationRequest, Any]:
        resign = self._needs_resign(gateway)
        out_trade_no, notification, _ = await self.paid_attempt(
            provider, gateway, amount_fen, notify_url, payment_methods[0], payer_id
        )
        return out_trade_no, notification, resign

    async def test_notification_for_another_merchant_is_a_mismatch(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        _, notification, resign = await self._genuine(
            provider, gateway, amount_fen, notify_url, payment_methods, payer_id
        )
        other = await resign(notification, merchant=_OTHER_MERCHANT)
        try:
            await provider.parse_notification(other)
        except NotificationMismatch:
            return
        except NotificationRejected as rejected:
            pytest.fail(
                f"a genuine notification for another merchant raised {type(rejected).__name__}, "
                "not NotificationMismatch: raise NotificationMismatch after the signature "
                "verifies, so branchpay answers it as accepted and the platform stops"
            )
        pytest.fail(
            "parse_notification accepted a genuine notification for another merchant (or "
            "sub-merchant, or app): check the merchant ids after the signature"
        )

    async def test_notification_resigned_with_another_amount_carries_it(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        out_trade_no, notification, resign = await self._genuine(
            provider, gateway, amount_fen, notify_url, payment_methods, payer_id
        )
        event = await provider.parse_notification(
            await resign(notification, amount_fen=amount_fen + 1)
        )
        assert event is not None, "a genuine notification with another amount parsed to None"
        assert event.amount_fen == amount_fen + 1, (
            f"a genuine notification signed for {amount_fen + 1} fen parsed to "
            f"{event.amount_fen!r} fen: the event must carry what the platform signed, so "
            "branchpay can compare it with the attempt"
        )
        assert event.out_trade_no == out_trade_no

    async def test_notification_resigned_with_another_out_trade_no_carries_it(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
    ) -> None:
        _, notification, resign = await self._genuine(
            provider, gateway, amount_fen, notify_url, payment_methods, payer_id
        )
        other = new_out_trade_no()
        event = await provider.parse_notification(await resign(notification, out_trade_no=other))
        assert event is not None, "a genuine notification for another attempt parsed to None"
        assert event.out_trade_no == other, (
            f"a genuine notification signed for out_trade_no {other!r} parsed to "
            f"{event.out_trade_no!r}: the event must carry what the platform signed"
        )

    # --- daily bills (optional) -----------------------------------------------------

    @staticmethod
    def _needs_bills(provider: Provider) -> None:
        if not provider.supports_bills:
            pytest.skip(
                f"{type(provider).__name__} does not support daily bills "
                "(supports_bills is false: no download_bill/read_bill); bill cases not run"
            )

    async def bill_items(
        self, provider: Provider, day: date, path: Path
    ) -> list[BillLine | BillTotals]:
        """download_bill(day) into ``path``, then every item read_bill yields."""
        with path.open("wb") as destination:
            try:
                await provider.download_bill(day, destination)
            except BillUnavailable as missing:
                pytest.fail(
                    f"download_bill({day}) raised BillUnavailable({missing.reason}) for a day "
                    "the kit paid and refunded on; the bill cases need the simulator to publish "
                    "the current day (BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY=1 for a kit BillBook)"
                )
        with path.open("rb") as source:
            items = list(provider.read_bill(source))
        for item in items:
            assert isinstance(item, BillLine | BillTotals), (
                f"read_bill yielded a {type(item).__name__}; only BillLine and BillTotals"
            )
        totals = [i for i in items if isinstance(i, BillTotals)]
        assert len(totals) <= 1 and (not totals or items[-1] is totals[0]), (
            "read_bill must yield at most one BillTotals, after every BillLine"
        )
        return items

    async def test_bill_has_the_payment_and_the_refund(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
        tmp_path: Path,
    ) -> None:
        self._needs_bills(provider)
        assert amount_fen >= 2, "the bill cases need an amount_fen of at least 2"
        started = datetime.now(UTC)
        out_trade_no, _, _ = await self.paid_attempt(
            provider, gateway, amount_fen, notify_url, payment_methods[0], payer_id
        )
        refund_fen = amount_fen // 3 or 1
        out_refund_no = new_out_refund_no()
        result = await self.refund(
            provider, out_trade_no, out_refund_no, refund_fen, amount_fen, notify_url
        )
        assert result.state in (RefundState.SUCCEEDED, RefundState.PENDING), (
            f"the partial refund of {refund_fen} of {amount_fen} fen gave {result.state} "
            f"({result.message})"
        )
        # The day may turn at Beijing midnight while the case runs: read each day it touched.
        days = sorted({beijing_day(started), beijing_day(datetime.now(UTC))})
        deadline = asyncio.get_running_loop().time() + _BILL_WAIT_SECONDS
        while True:
            bills = {
                day: await self.bill_items(provider, day, tmp_path / f"{day}.bill") for day in days
            }
            lines = [i for items in bills.values() for i in items if isinstance(i, BillLine)]
            payments = [
                line
                for line in lines
                if line.kind is BillLineKind.PAYMENT and line.out_trade_no == out_trade_no
            ]
            refunds = [
                line
                for line in lines
                if line.kind is BillLineKind.REFUND and line.out_refund_no == out_refund_no
            ]
            if refunds or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)  # a PENDING refund: the platform completes it soon
        finished = datetime.now(UTC)

        assert len(payments) == 1, (
            f"the bill of {', '.join(map(str, days))} has {len(payments)} PAYMENT lines for "
            f"out_trade_no {out_trade_no}; expected exactly one"
        )
        assert len(refunds) == 1, (
            f"the bill of {', '.join(map(str, days))} has {len(refunds)} REFUND lines for "
            f"out_refund_no {out_refund_no}; expected exactly one"
        )
        payment, refund = payments[0], refunds[0]
        assert payment.amount_fen == amount_fen, (
            f"the payment line says {payment.amount_fen} fen, the attempt paid {amount_fen}"
        )
        assert not payment.out_refund_no, "a PAYMENT line must not carry an out_refund_no"
        assert refund.out_trade_no == out_trade_no, (
            f"the refund line names out_trade_no {refund.out_trade_no!r}, the refunded "
            f"payment was {out_trade_no!r}"
        )
        assert refund.amount_fen == refund_fen, (
            f"the refund line says {refund.amount_fen} fen (refund amounts are positive), "
            f"the refund was {refund_fen}"
        )
        for what, line in (("payment", payment), ("refund", refund)):
            assert isinstance(line.fee_fen, int) and not isinstance(line.fee_fen, bool), (
                f"the {what} line's fee_fen must be an int count of fen"
            )
            moment = line.occurred_at
            assert moment.tzinfo is not None and moment.utcoffset() is not None, (
                f"the {what} line's occurred_at must be timezone-aware"
            )
            assert started - _BILL_CLOCK_SLACK <= moment <= finished + _BILL_CLOCK_SLACK, (
                f"the {what} line's occurred_at is {moment.isoformat()}, but it happened between "
                f"{started.isoformat()} and {finished.isoformat()} (a Beijing time read as UTC?)"
            )

    async def test_bill_totals_are_the_sums_of_its_lines(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
        tmp_path: Path,
    ) -> None:
        self._needs_bills(provider)
        await self.paid_attempt(
            provider, gateway, amount_fen, notify_url, payment_methods[0], payer_id
        )
        day = beijing_day(datetime.now(UTC))
        items = await self.bill_items(provider, day, tmp_path / "totals.bill")
        lines = [i for i in items if isinstance(i, BillLine)]
        assert lines, f"the bill of {day} has no line, though the kit paid on it"
        if not isinstance(items[-1], BillTotals):
            return  # a bill without summary lines: nothing to add up
        totals = items[-1]
        payments = [line for line in lines if line.kind is BillLineKind.PAYMENT]
        refunds = [line for line in lines if line.kind is BillLineKind.REFUND]
        sums = {
            "payment_count": len(payments),
            "payment_fen": sum(line.amount_fen for line in payments),
            "refund_count": len(refunds),
            "refund_fen": sum(line.amount_fen for line in refunds),
        }
        stated = {name: getattr(totals, name) for name in sums}
        assert stated == sums, (
            f"the bill's totals {stated} are not the sums of its {len(lines)} lines {sums}"
        )
        fee = sum(line.fee_fen for line in lines)
        # Each line's fee is rounded to the fen; a platform may round its total only once.
        assert abs(totals.fee_fen - fee) * 2 <= len(lines), (
            f"the bill's net fee {totals.fee_fen} fen is not the sum of its lines' fees "
            f"({fee} fen), even allowing half a fen of rounding per line"
        )

    async def test_bill_of_a_day_to_come_is_not_ready(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        self._needs_bills(provider)
        tomorrow = beijing_day(datetime.now(UTC)) + timedelta(days=1)
        with (
            (tmp_path / "tomorrow.bill").open("wb") as destination,
            pytest.raises(BillUnavailable) as missing,
        ):
            await provider.download_bill(tomorrow, destination)
            pytest.fail(f"download_bill({tomorrow}) of a day still to come returned a file")
        assert missing.value.reason is BillUnavailableReason.NOT_READY, (
            f"download_bill({tomorrow}) of a day still to come gave reason "
            f"{missing.value.reason}; expected NOT_READY (ask again later)"
        )

    async def test_read_bill_is_lazy(
        self,
        provider: Provider,
        gateway: GatewayDriver,
        amount_fen: int,
        notify_url: str,
        payment_methods: tuple[PaymentMethod, ...],
        payer_id: str | None,
        tmp_path: Path,
    ) -> None:
        self._needs_bills(provider)
        for _ in range(3):
            await self.paid_attempt(
                provider, gateway, amount_fen, notify_url, payment_methods[0], payer_id
            )
        day = beijing_day(datetime.now(UTC))
        path = tmp_path / "lazy.bill"
        await self.bill_items(provider, day, path)
        size = path.stat().st_size
        with io.BufferedReader(_Trickle(path), buffer_size=64) as source:
            items = provider.read_bill(source)
            assert isinstance(items, Iterator), (
                f"read_bill returned a {type(items).__name__}, not an iterator: "
                "it must yield lines as it reads them"
            )
            first = next(items, None)
            assert isinstance(first, BillLine), (
                f"the first item read_bill yielded is {type(first).__name__}, not a BillLine"
            )
            position = source.tell()
            assert position < size, (
                f"read_bill had read all {size} bytes of the bill before yielding its first "
                "line: it must read the file as it goes (a bill can hold millions of lines)"
            )
            rest = sum(1 for _ in items)
        assert rest >= 2, "the bill of the day lost lines when read from a trickling file"
