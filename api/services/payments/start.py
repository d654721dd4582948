"""Starting a payment (``startPayment``): open a new attempt for an order at a provider.

The order, the provider and the method are checked first; the attempt is
stored PENDING before the platform hears of it, so its notification always
finds it. A platform that surely did not open it marks it FAILED; one that may
have opened it (or a provider bug) leaves it PENDING for reconciliation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bson import ObjectId

from api.domain.order import OrderStatus
from api.domain.payment import PaymentStatus, fail_unpaid
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import PROVIDER, RETURN_URL, quoted
from api.plugins.contract import (
    GatewayError,
    PaymentAction,
    PaymentMethod,
    PaymentRequest,
    new_reference,
)
from api.services.payments.context import Document, PaymentContext, log, problem
from api.telemetry import context as log_context
from api.telemetry import metrics


@dataclass(frozen=True, slots=True)
class StartResult:
    payment: Document | None
    action: PaymentAction | None
    problems: list[Problem]


class Start:
    def __init__(self, context: PaymentContext) -> None:
        self.context = context

    async def start(
        self,
        order_id: ObjectId,
        provider_name: str,
        method: PaymentMethod,
        return_url: str | None = None,
        *,
        visible: Callable[[str], bool],
        client_ip: str | None = None,
    ) -> StartResult:
        """Open a new attempt for the order at the provider; each call is a new attempt.

        An order of a branch the caller may not see is refused like a missing one.
        """
        ctx = self.context
        order = await ctx.store.orders.get(order_id)
        if order is None or not visible(order["branch"]):
            return StartResult(
                None, None, problem("orderId", "no such order", UserErrorCode.ORDER_NOT_FOUND)
            )
        log_context.bind(branch=order["branch"], order_id=str(order_id))
        now = ctx.now()
        if order["status"] != OrderStatus.PENDING_PAYMENT.value:
            return StartResult(
                None,
                None,
                problem(
                    "orderId",
                    f"only an order awaiting payment can be paid; this one is {order['status']}",
                    UserErrorCode.ORDER_NOT_PAYABLE,
                ),
            )
        if now >= order["expiresAt"]:
            return StartResult(
                None,
                None,
                problem("orderId", "the order's payment time ran out", UserErrorCode.ORDER_EXPIRED),
            )
        branch = order["branch"]
        enabled = {cls.name: cls for cls in ctx.registry.enabled(branch)}
        cls = enabled.get(provider_name)
        if cls is None:
            names = ", ".join(enabled) or "none"
            return StartResult(
                None,
                None,
                problem(
                    "provider",
                    f"{quoted(provider_name, PROVIDER)} is not enabled for branch {branch}; "
                    f"enabled: {names}",
                    UserErrorCode.PROVIDER_NOT_ENABLED,
                ),
            )
        if method not in cls.methods:
            supported = ", ".join(m.value for m in cls.methods)
            return StartResult(
                None,
                None,
                problem(
                    "method",
                    f"{provider_name} does not support {method.value}; it supports {supported}",
                    UserErrorCode.METHOD_NOT_SUPPORTED,
                ),
            )
        if return_url is not None and (why := _return_url_problem(return_url)) is not None:
            return StartResult(
                None, None, problem("returnUrl", why, UserErrorCode.INVALID_RETURN_URL)
            )
        provider = ctx.registry.provider(branch, provider_name)
        if provider is None:
            return StartResult(
                None,
                None,
                problem(
                    "provider",
                    f"{provider_name} is not configured",
                    UserErrorCode.PROVIDER_NOT_ENABLED,
                ),
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
        )
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
