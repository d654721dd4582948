"""startPayment, refundPayment and the orderEvents subscription: thin wrappers over the service."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from datetime import datetime
from functools import partial
from typing import cast

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from api.domain.order import OrderStatus as DomainOrderStatus
from api.domain.principal import Permission
from api.domain.problems import UserErrorCode
from api.domain.text import IDEMPOTENCY_KEY, REFUND_REASON, RETURN_URL
from api.plugins.contract import PaymentAction as DomainPaymentAction
from api.plugins.contract import PaymentMethod as DomainPaymentMethod
from api.schema.context import Context
from api.schema.errors import ApiError, ErrorCode
from api.schema.ids import object_id_of
from api.schema.mutation import user_errors
from api.schema.types import (
    ActionKind,
    Order,
    OrderStatus,
    Payment,
    PaymentMethod,
    Refund,
    UserError,
    selects,
    with_payments,
)
from api.services.live import (
    Backoff,
    StoreOutage,
    SubscriberTooSlow,
    order_changes,
    when_stored,
)
from api.services.payments import PaymentService
from api.telemetry import metrics


@strawberry.type(description="What the partner frontend must do next so the payer can pay.")
class PaymentAction:
    kind: ActionKind  # type: ignore[valid-type]
    url: str | None = strawberry.field(description="REDIRECT: open it; QR_CODE: the same URL.")
    qr_code: str | None = strawberry.field(description="QR_CODE: the content to render.")
    form_html: str | None = strawberry.field(description="FORM_POST: HTML that auto-submits.")
    app_payload: str | None = strawberry.field(description="APP_SDK: hand it to the app SDK.")
    client_params: str | None = strawberry.field(
        description="REQUEST_PAYMENT: a JSON object of the signed parameters; pass it, parsed, "
        "to wx.requestPayment (WeChat: appId, timeStamp, nonceStr, package, signType, paySign)."
    )
    trade_no: str | None = strawberry.field(
        description="TRADE_PAY: the platform's trade number; pass it to my.tradePay({tradeNO})."
    )

    @classmethod
    def from_domain(cls, action: DomainPaymentAction) -> PaymentAction:
        return cls(
            kind=action.kind,
            url=action.url,
            qr_code=action.qr_code,
            form_html=action.form_html,
            app_payload=action.app_payload,
            client_params=(
                json.dumps(dict(action.client_params), ensure_ascii=False, separators=(",", ":"))
                if action.client_params is not None
                else None
            ),
            trade_no=action.trade_no,
        )


@strawberry.input
class StartPaymentInput:
    order_id: strawberry.ID
    method: PaymentMethod  # type: ignore[valid-type]
    provider: str | None = strawberry.field(
        default=None,
        description="A provider the order's branch enables. Required but for PAYMENT_CODE, "
        "where the scanned code's range names it when left out (docs/payments.md).",
    )
    auth_code: str | None = strawberry.field(
        default=None,
        description="PAYMENT_CODE: the payment code the counter scanned from the payer's phone "
        "(10 to 64 letters and digits). A one-time secret: never stored or logged.",
    )
    payer_id: str | None = strawberry.field(
        default=None,
        description="JSAPI: the payer's id at the platform (WeChat openid; Alipay buyer user id "
        "or open_id).",
    )
    return_url: str | None = strawberry.field(
        default=None,
        description="Where the platform sends the payer back (PAGE, WAP); "
        f"{RETURN_URL.rule}, {RETURN_URL.summary}.",
    )


@strawberry.type
class StartPaymentPayload:
    payment: Payment | None
    action: PaymentAction | None
    user_errors: list[UserError]


@strawberry.input
class RefundPaymentInput:
    payment_id: strawberry.ID
    amount_fen: int = strawberry.field(description="Up to what is left to refund of the payment.")
    reason: str | None = strawberry.field(
        default=None,
        description=f"Kept with the refund and in the audit log; {REFUND_REASON.summary}, "
        "no control characters but tab and line breaks.",
    )
    idempotency_key: str = strawberry.field(
        description="Unique per branch; repeating it returns the first refund instead of a new "
        f"one. {IDEMPOTENCY_KEY.summary}: {IDEMPOTENCY_KEY.rule}."
    )


@strawberry.type
class RefundPaymentPayload:
    refund: Refund | None
    payment: Payment | None
    user_errors: list[UserError]


@strawberry.type(description="A status of an order: its state when subscribed, then each change.")
class OrderEvent:
    status: OrderStatus  # type: ignore[valid-type]
    at: datetime
    reason: str | None
    order: Order


def _payments(info: Info[Context, None]) -> PaymentService:
    service = info.context.services.payments
    if service is None:
        raise RuntimeError("the payment service is not wired into this app")
    return service


def _subscription_error(error: ApiError) -> GraphQLError:
    # Subscription results bypass the ErrorShaping extension; graphql-core keeps
    # the extensions of a GraphQLError raised by the resolver.
    return GraphQLError(error.message, extensions={"code": error.code.value})


def _invalid_id(field: str, error: ApiError) -> list[UserError]:
    return [UserError(field=[field], message=error.message, code=UserErrorCode.INVALID_ID)]


@strawberry.type
class PaymentMutation:
    @strawberry.mutation(
        description="Open a payment attempt for an order awaiting payment; each call is a new one."
    )
    async def start_payment(
        self, info: Info[Context, None], input: StartPaymentInput
    ) -> StartPaymentPayload:
        info.context.require(Permission.ORDER)
        try:
            order_id = object_id_of(input.order_id, "Order")
        except ApiError as error:
            return StartPaymentPayload(
                payment=None, action=None, user_errors=_invalid_id("orderId", error)
            )
        client = info.context.request.client
        result = await _payments(info).start(
            order_id,
            input.provider,
            DomainPaymentMethod(input.method),
            input.return_url,
            client_ip=client.host if client else None,
            visible=info.context.sees,
            auth_code=input.auth_code,
            payer_id=input.payer_id,
        )
        return StartPaymentPayload(
            payment=Payment.from_doc(result.payment) if result.payment else None,
            action=PaymentAction.from_domain(result.action) if result.action else None,
            user_errors=user_errors(result.problems),
        )

    @strawberry.mutation(description="Refund part or all of a paid payment.")
    async def refund_payment(
        self, info: Info[Context, None], input: RefundPaymentInput
    ) -> RefundPaymentPayload:
        principal = info.context.require(Permission.REFUND)
        try:
            payment_id = object_id_of(input.payment_id, "Payment")
        except ApiError as error:
            return RefundPaymentPayload(
                refund=None, payment=None, user_errors=_invalid_id("paymentId", error)
            )
        result = await _payments(info).refund(
            payment_id,
            input.amount_fen,
            input.reason,
            input.idempotency_key,
            actor=principal.name,
            visible=lambda branch: principal.may_on(Permission.REFUND, branch),
        )
        payment = result.payment
        return RefundPaymentPayload(
            refund=Refund.from_doc(result.refund, payment.get("currency", "CNY"))
            if result.refund and payment
            else None,
            payment=Payment.from_doc(payment) if payment else None,
            user_errors=user_errors(result.problems),
        )


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The order's current status, then every status change until a final one. "
        "During a store outage it sends an error coded STORE_UNAVAILABLE and goes on: when the "
        "store is back, it sends every change made meanwhile, none twice."
    )
    async def order_events(
        self, info: Info[Context, None], order_id: strawberry.ID
    ) -> AsyncGenerator[OrderEvent, None]:
        try:
            object_id = object_id_of(order_id, "Order")
        except ApiError as error:
            raise _subscription_error(error) from None
        found = False
        # A subscription's context (and its DataLoader cache) lives as long as the
        # connection: payments are read afresh for every event instead.
        fresh_payments = selects(info, "order", "payments")
        services = info.context.services
        timeout = services.settings.store_timeout_seconds
        changes = order_changes(
            services.changes, info.context.store, object_id, info.context.sees, timeout=timeout
        )
        with metrics.recorder().subscription():
            while True:
                try:
                    change = await anext(changes)
                except StopAsyncIteration:
                    break
                except SubscriberTooSlow as error:
                    raise _subscription_error(
                        ApiError(
                            ErrorCode.SUBSCRIBER_TOO_SLOW,
                            f"this subscription fell {error.limit} changes behind and was ended; "
                            "read its events faster, or subscribe again",
                        )
                    ) from None
                if isinstance(change, StoreOutage):
                    yield _outage(change)
                    continue
                order, entry = change
                found = True
                event_order = Order.from_doc(order, info.context)
                if fresh_payments:
                    # The feed counts this entry as sent: its payments are waited for, not skipped.
                    load = partial(with_payments, info, [event_order])
                    async for step in when_stored(load, timeout=timeout, backoff=Backoff()):
                        if isinstance(step, StoreOutage):
                            yield _outage(step)
                yield OrderEvent(
                    status=DomainOrderStatus(entry["status"]),
                    at=entry["at"],
                    reason=entry.get("reason"),
                    order=event_order,
                )
        if not found:
            raise _subscription_error(ApiError(ErrorCode.NOT_FOUND, "no such order"))


def _outage(outage: StoreOutage) -> OrderEvent:
    """An event that graphql-core answers as an error, leaving the subscription open.

    graphql-core completes an event that is an exception by raising it at the
    field (``data: null`` plus the error), where a raised exception would end
    the subscription. ErrorShaping's ``on_stream_result`` then turns the
    driver's error into STORE_UNAVAILABLE with an errorId, so no address or
    topology reaches the client.
    """
    return cast(OrderEvent, outage.error)
