"""Starting a payment (``startPayment``): open a new attempt for an order at a provider.

The order, the provider and the method are checked first; the attempt is
stored PENDING before the platform hears of it, so its notification always
finds it. A platform that surely did not open it marks it FAILED; one that may
have opened it (or a provider bug) leaves it PENDING for reconciliation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bson import ObjectId

from api.domain.order import OrderStatus
from api.domain.payment import PaymentStatus, fail_unpaid
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import PROVIDER, RETURN_URL, quoted
from api.plugins.contract import (
    NEEDS_PAYER_ID,
    ActionKind,
    GatewayError,
    PaymentAction,
    PaymentMethod,
    PaymentRequest,
    Provider,
    new_reference,
)
from api.services.payments.context import Document, PaymentContext, log, problem
from api.services.payments.counter import Counter
from api.services.payments.options import USER_ERROR, Unavailable, why_not
from api.telemetry import context as log_context
from api.telemetry import metrics


@dataclass(frozen=True, slots=True)
class StartResult:
    payment: Document | None
    action: PaymentAction | None
    problems: list[Problem]


# What a scanned code and a payer id may look like at all, before any wallet's own range.
AUTH_CODE_SHAPE = re.compile(r"[0-9A-Za-z]{10,64}")
PAYER_ID_SHAPE = re.compile(r"[0-9A-Za-z_-]{1,128}")


class Start:
    def __init__(self, context: PaymentContext, counter: Counter) -> None:
        self.context = context
        self.counter = counter

    async def start(
        self,
        order_id: ObjectId,
        provider_name: str | None,
        method: PaymentMethod,
        return_url: str | None = None,
        *,
        visible: Callable[[str], bool],
        client_ip: str | None = None,
        auth_code: str | None = None,
        payer_id: str | None = None,
    ) -> StartResult:
        """Open a new attempt for the order at the provider; each call is a new attempt.

        An order of a branch the caller may not see is refused like a missing one.
        For PAYMENT_CODE the provider may be left out: the scanned code's range names
        it (:func:`detect_wallet`).
        """
        ctx = self.context
        order = await ctx.store.orders.get(order_id)
        if order is None or not visible(order["branch"]):
            return _refused("orderId", "no such order", UserErrorCode.ORDER_NOT_FOUND)
        log_context.bind(branch=order["branch"], order_id=str(order_id))
        now = ctx.now()
        if order["status"] != OrderStatus.PENDING_PAYMENT.value:
            return _refused(
                "orderId",
                f"only an order awaiting payment can be paid; this one is {order['status']}",
                UserErrorCode.ORDER_NOT_PAYABLE,
            )
        if now >= order["expiresAt"]:
            return _refused(
                "orderId", "the order's payment time ran out", UserErrorCode.ORDER_EXPIRED
            )
        branch = order["branch"]
        if method is PaymentMethod.PAYMENT_CODE:
            found = self._code_provider(branch, provider_name, auth_code)
            if isinstance(found, StartResult):
                return found
            provider_name = found
        elif provider_name is None:
            return _refused(
                "provider",
                f"name the provider; only PAYMENT_CODE finds it from the code ({method.value})",
                UserErrorCode.PROVIDER_REQUIRED,
            )
        elif auth_code is not None:
            return _refused(
                "authCode",
                f"authCode is for PAYMENT_CODE only, not {method.value}",
                UserErrorCode.INVALID_AUTH_CODE,
            )
        installed = ctx.registry.installed
        config = ctx.registry.provider_config(branch, provider_name)
        cls = installed.get(provider_name)
        if config is None or cls is None or not config.enabled:
            enabled = ", ".join(c.name for c in ctx.registry.enabled(branch)) or "none"
            return _refused(
                "provider",
                f"{quoted(provider_name, PROVIDER)} is not enabled for branch {branch}; "
                f"enabled: {enabled}",
                UserErrorCode.PROVIDER_NOT_ENABLED,
            )
        if method not in cls.methods:
            supported = ", ".join(m.value for m in cls.methods)
            return _refused(
                "method",
                f"{provider_name} does not support {method.value}; it supports {supported}",
                UserErrorCode.METHOD_NOT_SUPPORTED,
            )
        if method in NEEDS_PAYER_ID and payer_id is not None:
            if (why := _payer_id_problem(cls, payer_id)) is not None:
                return _refused("payerId", why, UserErrorCode.INVALID_PAYER_ID)
        elif payer_id is not None:
            return _refused(
                "payerId",
                f"payerId is for {', '.join(sorted(NEEDS_PAYER_ID))} only, not {method.value}",
                UserErrorCode.INVALID_PAYER_ID,
            )
        if (
            why_not_usable := why_not(
                cls, config, method, order, payer_id_known=payer_id is not None
            )
        ) is not None:
            reason, words = why_not_usable
            field_name = "payerId" if reason is Unavailable.PAYER_ID_REQUIRED else "method"
            if reason in (Unavailable.ACCOUNT_UNAVAILABLE, Unavailable.AMOUNT_OUT_OF_LIMITS):
                field_name = "provider"
            return _refused(field_name, words, USER_ERROR[reason])
        if return_url is not None and (why := _return_url_problem(return_url)) is not None:
            return _refused("returnUrl", why, UserErrorCode.INVALID_RETURN_URL)
        provider = ctx.registry.provider(branch, provider_name)
        if provider is None:
            return _refused(
                "provider", f"{provider_name} is not configured", UserErrorCode.PROVIDER_NOT_ENABLED
            )
        payment: Document = {
            "_id": ObjectId(),
            "orderId": order_id,
            "branch": branch,
            "provider": provider_name,
            "method": method.value,
            "status": PaymentStatus.PENDING.value,
            "amountFen": int(order["totalFen"]),
            "currency": order["currency"],
            "outTradeNo": new_reference(now),
            "providerTradeNo": None,
            "returnUrl": return_url,
            "refunds": [],
            "refundedFen": 0,
            "reservedFen": 0,
            "flagged": None,
            "eventIds": [],
            "version": 0,
            "createdAt": now,
            "updatedAt": now,
        }
        if config.account is not None:
            payment["account"] = config.account
        # Stored before the platform hears of it, so its notification always finds it.
        await ctx.store.payments.insert(payment)
        log_context.bind(
            provider=provider_name,
            payment_id=str(payment["_id"]),
            out_trade_no=payment["outTradeNo"],
        )
        request = PaymentRequest(
            out_trade_no=payment["outTradeNo"],
            amount_fen=payment["amountFen"],
            currency=payment["currency"],
            subject=_subject(order),
            method=method,
            notify_url=ctx.notify_url(provider_name, branch),
            expires_at=order["expiresAt"],
            return_url=return_url,
            client_ip=client_ip,
            auth_code=auth_code,
            payer_id=payer_id,
        )
        if method is PaymentMethod.PAYMENT_CODE:
            charged = await self.counter.charge(payment, provider, request)
            if charged.declined:
                return _refused(
                    "authCode",
                    f"{provider_name} refused the payment code; ask the payer to show a new "
                    "code or to pay another way",
                    UserErrorCode.PAYMENT_DECLINED,
                )
            return StartResult(charged.payment, PaymentAction(kind=ActionKind.NONE), [])
        try:
            with metrics.gateway_call(provider_name, "create"):
                action = await provider.create_payment(request)
        except GatewayError as error:
            if error.outcome_unknown:
                log.warning(
                    "payment %s: %s may have opened it (%s); left PENDING for reconciliation",
                    payment["outTradeNo"],
                    provider_name,
                    error,
                )
            else:
                await ctx.change(payment["_id"], fail_unpaid)
            return StartResult(None, None, _unavailable(provider_name))
        except Exception:
            # A provider bug may strike after the platform accepted: do not guess.
            log.exception(
                "payment %s: %s failed unexpectedly; left PENDING for reconciliation",
                payment["outTradeNo"],
                provider_name,
            )
            return StartResult(None, None, _unavailable(provider_name))
        return StartResult(payment, action, [])

    def _code_provider(
        self, branch: str, provider_name: str | None, auth_code: str | None
    ) -> str | StartResult:
        """The provider that charges the scanned code, or the refusal."""
        if auth_code is None or not auth_code:
            return _refused(
                "authCode",
                "PAYMENT_CODE needs authCode, the payment code the counter scanned",
                UserErrorCode.AUTH_CODE_REQUIRED,
            )
        installed = self.context.registry.installed
        if not AUTH_CODE_SHAPE.fullmatch(auth_code):
            return _refused(
                "authCode",
                "authCode must be the scanned code: 10 to 64 letters and digits",
                UserErrorCode.INVALID_AUTH_CODE,
            )
        wallets = detect_wallet(installed.values(), auth_code)
        if provider_name is not None:
            cls = installed.get(provider_name)
            if cls is not None and cls.payment_code_pattern is not None and cls not in wallets:
                return _refused(
                    "authCode",
                    f"this is not a {cls.display_name} payment code",
                    UserErrorCode.INVALID_AUTH_CODE,
                )
            return provider_name
        if not wallets:
            return _refused(
                "authCode",
                "this is not a payment code of any wallet branchpay knows "
                f"({code_ranges(installed.values())})",
                UserErrorCode.INVALID_AUTH_CODE,
            )
        enabled = {cls.name for cls in self.context.registry.enabled(branch)}
        usable = [cls for cls in wallets if cls.name in enabled]
        if not usable:
            names = " or ".join(f"{cls.display_name} ({cls.name})" for cls in wallets)
            return _refused(
                "authCode",
                f"this is a {names} payment code; branch {branch} does not enable it",
                UserErrorCode.PROVIDER_NOT_ENABLED,
            )
        return usable[0].name


def detect_wallet(classes: Iterable[type[Provider]], auth_code: str) -> list[type[Provider]]:
    """The provider classes whose payment-code range holds the code (docs/payments.md)."""
    return [
        cls
        for cls in classes
        if PaymentMethod.PAYMENT_CODE in cls.methods
        and cls.payment_code_pattern is not None
        and cls.payment_code_pattern.fullmatch(auth_code)
    ]


def code_ranges(classes: Iterable[type[Provider]]) -> str:
    return "; ".join(
        f"{cls.display_name}: {cls.payment_code_pattern.pattern}"
        for cls in classes
        if PaymentMethod.PAYMENT_CODE in cls.methods and cls.payment_code_pattern is not None
    )


def _payer_id_problem(cls: type[Provider], payer_id: str) -> str | None:
    if not PAYER_ID_SHAPE.fullmatch(payer_id):
        return "payerId must be 1 to 128 letters, digits, '_' or '-'"
    if cls.payer_id_pattern is not None and not cls.payer_id_pattern.fullmatch(payer_id):
        return f"this is not a payer id {cls.display_name} issues"
    return None


def _refused(field_name: str, message: str, code: UserErrorCode) -> StartResult:
    return StartResult(None, None, problem(field_name, message, code))


def _unavailable(provider: str) -> list[Problem]:
    return problem(
        "provider",
        f"{provider} could not open the payment just now; try again or choose another provider",
        UserErrorCode.PROVIDER_UNAVAILABLE,
    )


def _return_url_problem(value: str) -> str | None:
    if (why := RETURN_URL.problem(value, "returnUrl")) is not None:
        return why
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket, or a host NFKC would change
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return f"returnUrl must be an http(s) URL with a host, of {RETURN_URL.summary}"
    return None


def _subject(order: Mapping[str, Any]) -> str:
    items: Sequence[Mapping[str, Any]] = order.get("items", [])
    if not items:
        return f"Order {order['_id']}"
    first = str(items[0]["title"])[:40]
    return first if len(items) == 1 else f"{first} and {len(items) - 1} more"
