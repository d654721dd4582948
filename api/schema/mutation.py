"""Mutations: thin wrappers that turn input into service calls and problems into userErrors."""

from __future__ import annotations

from collections.abc import Sequence

import strawberry
from strawberry.types import Info

from api.domain.order import RequestedItem
from api.domain.principal import Permission
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import CANCEL_REASON, CUSTOMER_NAME, ID_CARD, IDEMPOTENCY_KEY, OPTION, PHONE
from api.schema.context import Context
from api.schema.errors import ApiError
from api.schema.ids import from_global_id, object_id_of
from api.schema.types import Order, UserError


@strawberry.input
class OptionChoiceInput:
    name: str = strawberry.field(description=f"An option of the offering; {OPTION.summary}.")
    value: str = strawberry.field(description=f"One of its choices; {OPTION.summary}.")


@strawberry.input
class OrderItemInput:
    offering_id: strawberry.ID
    quantity: int = 1
    options: list[OptionChoiceInput] = strawberry.field(default_factory=list)


@strawberry.input
class CustomerInput:
    name: str = strawberry.field(
        description=f"{CUSTOMER_NAME.summary} on one line, surrounding spaces stripped."
    )
    phone: str = strawberry.field(
        description=f"A mainland China mobile number, e.g. 13812345678; {PHONE.summary}."
    )
    id_card_number: str | None = strawberry.field(
        default=None,
        description="Resident ID card number, for real-name registration of a number; "
        f"{ID_CARD.summary}.",
    )


@strawberry.input
class CreateOrderInput:
    branch: str
    items: list[OrderItemInput]
    customer: CustomerInput
    idempotency_key: str = strawberry.field(
        description="Unique per branch; repeating it returns the first order instead of a new one. "
        f"{IDEMPOTENCY_KEY.summary}: {IDEMPOTENCY_KEY.rule}."
    )


@strawberry.type
class CreateOrderPayload:
    order: Order | None
    user_errors: list[UserError]


@strawberry.input
class CancelOrderInput:
    order_id: strawberry.ID
    reason: str | None = strawberry.field(
        default=None,
        description=f"Kept in the order's history; {CANCEL_REASON.summary}, "
        "no control characters but tab and line breaks.",
    )


@strawberry.type
class CancelOrderPayload:
    order: Order | None
    user_errors: list[UserError]


def user_errors(problems: Sequence[Problem]) -> list[UserError]:
    return [UserError(field=list(p.field), message=p.message, code=p.code) for p in problems]


def _requested_items(items: Sequence[OrderItemInput]) -> tuple[list[RequestedItem], list[Problem]]:
    requested: list[RequestedItem] = []
    problems: list[Problem] = []
    for index, item in enumerate(items):
        path = ("items", str(index))
        try:
            type_name, key = from_global_id(item.offering_id)
        except ApiError:
            type_name, key = "", ""
        if type_name != "Offering":
            problems.append(
                Problem((*path, "offeringId"), "not an offering ID", UserErrorCode.INVALID_ID)
            )
            continue
        names = [choice.name for choice in item.options]
        if len(set(names)) != len(names):
            problems.append(
                Problem(
                    (*path, "options"),
                    "each option may be chosen once",
                    UserErrorCode.UNKNOWN_OPTION,
                )
            )
            continue
        options = {choice.name: choice.value for choice in item.options}
        requested.append(RequestedItem(key, item.quantity, options))
    return requested, problems


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create an order priced from the branch's catalog.")
    async def create_order(
        self, info: Info[Context, None], input: CreateOrderInput
    ) -> CreateOrderPayload:
        info.context.require(Permission.ORDER)
        requested, problems = _requested_items(input.items)
        if problems:
            return CreateOrderPayload(order=None, user_errors=user_errors(problems))
        order, problems = await info.context.services.orders.create(
            input.branch,
            requested,
            input.customer.name,
            input.customer.phone,
            input.idempotency_key,
            customer_id_card=input.customer.id_card_number,
            visible=info.context.sees,
        )
        return CreateOrderPayload(
            order=Order.from_doc(order, info.context) if order else None,
            user_errors=user_errors(problems),
        )

    @strawberry.mutation(description="Cancel an order that awaits payment.")
    async def cancel_order(
        self, info: Info[Context, None], input: CancelOrderInput
    ) -> CancelOrderPayload:
        info.context.require(Permission.ORDER)
        try:
            order_id = object_id_of(input.order_id, "Order")
        except ApiError as error:
            return CancelOrderPayload(
                order=None,
                user_errors=[
                    UserError(
                        field=["orderId"], message=error.message, code=UserErrorCode.INVALID_ID
                    )
                ],
            )
        order = await info.context.store.orders.get(order_id)
        if order is None or not info.context.sees(order["branch"]):
            return CancelOrderPayload(
                order=None,
                user_errors=[
                    UserError(
                        field=["orderId"],
                        message="no such order",
                        code=UserErrorCode.ORDER_NOT_FOUND,
                    )
                ],
            )
        cancelled, problems = await info.context.services.orders.cancel(order, input.reason)
        return CancelOrderPayload(
            order=Order.from_doc(cancelled, info.context) if cancelled else None,
            user_errors=user_errors(problems),
        )
