"""The GraphQL object types, built from stored documents without further queries.

Fields that need another collection (an order's payments) go through the
request's DataLoaders, so a page of orders costs a fixed number of round trips.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from datetime import datetime
from typing import Annotated, Any, cast

import strawberry
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from api.config.branches import BranchView
from api.domain.order import OfferingKind as DomainOfferingKind
from api.domain.order import OrderStatus as DomainOrderStatus
from api.domain.payment import PaymentStatus as DomainPaymentStatus
from api.domain.payment import ReversalState as DomainReversalState
from api.domain.pii import reveal_customer
from api.plugins.contract import ActionKind as DomainActionKind
from api.plugins.contract import PaymentMethod as DomainPaymentMethod
from api.schema.context import Context
from api.schema.ids import to_global_id
from api.services.payments.options import Needs as DomainNeeds
from api.services.payments.options import Unavailable as DomainUnavailable

Document = dict[str, Any]

OrderStatus = strawberry.enum(DomainOrderStatus, name="OrderStatus")
OfferingKind = strawberry.enum(
    DomainOfferingKind,
    name="OfferingKind",
    description="NUMBER: a mobile number subscription; PLAN: a monthly plan; "
    "TOP_UP: credit for any number; HANDSET: a phone with options.",
)
PaymentStatus = strawberry.enum(DomainPaymentStatus, name="PaymentStatus")
PaymentMethod = strawberry.enum(
    DomainPaymentMethod,
    name="PaymentMethod",
    description="PAGE: desktop redirect; WAP: mobile H5; QR_CODE: payer scans; "
    "APP: platform app SDK; PAYMENT_CODE: the counter scans the payer's payment code "
    "(authCode); JSAPI: inside the platform's app (WeChat JSAPI / mini program, Alipay mini "
    "program), for the payer named by payerId.",
)
ActionKind = strawberry.enum(
    DomainActionKind,
    name="ActionKind",
    description="REDIRECT: open url; QR_CODE: render qrCode; FORM_POST: render formHtml; "
    "APP_SDK: hand appPayload to the app SDK; REQUEST_PAYMENT: pass clientParams to "
    "wx.requestPayment; TRADE_PAY: pass tradeNo to my.tradePay; NONE: nothing to show "
    "(a payment code was charged; the payment's status tells, and a PENDING one settles "
    "by itself: follow orderEvents).",
)
ReversalState = strawberry.enum(
    DomainReversalState,
    name="ReversalState",
    description="A counter sale whose outcome stayed unknown, voided at the platform: "
    "PENDING while asked, DONE when closed (unpaid) or its money returned (paid).",
)
PaymentUnavailable = strawberry.enum(
    DomainUnavailable,
    name="PaymentUnavailable",
    description="Why a payment option cannot be used for the order.",
)
PaymentNeeds = strawberry.enum(
    DomainNeeds, name="PaymentNeeds", description="What startPayment must carry for a method."
)


@strawberry.type(description="An amount of money as an integer count of fen (1/100 yuan).")
class Money:
    amount_fen: int
    currency: str


def money(amount_fen: int, currency: str = "CNY") -> Money:
    return Money(amount_fen=amount_fen, currency=currency)


@strawberry.interface(description="An object with a global ID, fetchable with `node(id:)`.")
class Node:
    id: strawberry.ID


@strawberry.type
class ProviderInfo:
    name: str
    display_name: str
    methods: list[PaymentMethod]  # type: ignore[valid-type]


@strawberry.type(description="A provincial branch of an operator.")
class Branch:
    code: str
    name: str
    province: str
    operator: str
    providers: list[ProviderInfo] = strawberry.field(
        description="The payment providers the branch enables now, in its order of preference."
    )

    @classmethod
    def from_view(cls, view: BranchView) -> Branch:
        return cls(
            code=view.code,
            name=view.name,
            province=view.province,
            operator=view.operator,
            providers=[
                ProviderInfo(name=p.name, display_name=p.display_name, methods=list(p.methods))
                for p in view.providers
            ],
        )


def branch_of(context: Context, code: str) -> Branch:
    """The branch as the caller sees it, built once per configuration and context.

    A page of orders repeats a few branches. The memo keeps the view it was
    built from, so a reload of plugins.toml (new views) is seen by a context
    that lives on, such as a subscription's.
    """
    view = context.branch(code)
    key = ("branch", code)
    memo = context.memo.get(key)
    if memo is not None and memo[0] is view:
        return memo[1]  # type: ignore[no-any-return]
    if view is None:
        # The branch was removed from plugins.toml; its orders stay readable.
        branch = Branch(code=code, name=code, province="", operator="", providers=[])
    else:
        branch = Branch.from_view(view)
    context.memo[key] = (view, branch)
    return branch


@strawberry.type
class OptionChoice:
    value: str
    price_delta: Money


@strawberry.type(description="A choice the buyer must make, e.g. colour or storage.")
class OfferingOption:
    name: str
    choices: list[OptionChoice]


@strawberry.type(
    description="Something a branch sells; its price is the server's, never the client's."
)
class Offering(Node):
    kind: OfferingKind  # type: ignore[valid-type]
    title: str
    description: str | None
    price: Money
    options: list[OfferingOption]
    number: str | None = strawberry.field(description="The mobile number, for NUMBER offerings.")
    premium: bool
    branch_code: strawberry.Private[str]

    @strawberry.field
    def branch(self, info: Info[Context, None]) -> Branch:
        return branch_of(info.context, self.branch_code)

    @classmethod
    def from_doc(cls, doc: Document) -> Offering:
        return cls(
            id=strawberry.ID(to_global_id("Offering", doc["_id"])),
            kind=DomainOfferingKind(doc["kind"]),
            title=doc["title"],
            description=doc.get("description"),
            price=money(doc["priceFen"]),
            options=[
                OfferingOption(
                    name=group["name"],
                    choices=[
                        OptionChoice(value=c["value"], price_delta=money(c.get("priceDeltaFen", 0)))
                        for c in group["choices"]
                    ],
                )
                for group in doc.get("options", [])
            ],
            number=doc.get("number"),
            premium=bool(doc.get("premium", False)),
            branch_code=doc["branch"],
        )


@strawberry.type
class SelectedOption:
    name: str
    value: str
    price_delta: Money


@strawberry.type(description="One line of an order, priced when the order was created.")
class OrderItem:
    offering_id: strawberry.ID
    kind: OfferingKind  # type: ignore[valid-type]
    title: str
    quantity: int
    unit_price: Money
    options: list[SelectedOption]
    subtotal: Money

    @classmethod
    def from_doc(cls, doc: Document, currency: str) -> OrderItem:
        return cls(
            offering_id=strawberry.ID(to_global_id("Offering", doc["offeringId"])),
            kind=DomainOfferingKind(doc["kind"]),
            title=doc["title"],
            quantity=doc["quantity"],
            unit_price=money(doc["unitPriceFen"], currency),
            options=[
                SelectedOption(
                    name=o["name"],
                    value=o["value"],
                    price_delta=money(o["priceDeltaFen"], currency),
                )
                for o in doc.get("options", [])
            ],
            subtotal=money(doc["subtotalFen"], currency),
        )


@strawberry.type
class Customer:
    name: str
    phone: str = strawberry.field(
        description="Masked (138****5678) unless the key is ops or the branch's admin."
    )
    id_card_number: str | None = strawberry.field(
        description="Masked like the phone; null when none was given."
    )


@strawberry.type
class Refund:
    id: strawberry.ID
    amount: Money
    status: str
    out_refund_no: str
    created_at: datetime
    reason: str | None = strawberry.field(
        default=None, description="The reason given with the refund, as given."
    )

    @classmethod
    def from_doc(cls, doc: Document, currency: str) -> Refund:
        return cls(
            id=strawberry.ID(doc["outRefundNo"]),
            amount=money(doc["amountFen"], currency),
            status=doc["status"],
            out_refund_no=doc["outRefundNo"],
            created_at=doc["createdAt"],
            reason=doc.get("reason"),
        )


@strawberry.type(description="One attempt to pay an order through one provider.")
class Payment(Node):
    provider: str
    method: PaymentMethod  # type: ignore[valid-type]
    status: PaymentStatus  # type: ignore[valid-type]
    amount: Money
    out_trade_no: str
    provider_trade_no: str | None
    refunds: list[Refund]
    created_at: datetime
    updated_at: datetime
    flagged: str | None = strawberry.field(
        default=None,
        description="Why the payment awaits review (e.g. the platform reported another amount).",
    )
    reversal: ReversalState | None = strawberry.field(  # type: ignore[valid-type]
        default=None,
        description="A counter sale being voided (PENDING) or voided (DONE) at the platform; "
        "such a payment never pays its order.",
    )

    @classmethod
    def from_doc(cls, doc: Document) -> Payment:
        currency = doc.get("currency", "CNY")
        return cls(
            id=strawberry.ID(to_global_id("Payment", str(doc["_id"]))),
            provider=doc["provider"],
            method=DomainPaymentMethod(doc["method"]),
            status=DomainPaymentStatus(doc["status"]),
            amount=money(doc["amountFen"], currency),
            out_trade_no=doc["outTradeNo"],
            provider_trade_no=doc.get("providerTradeNo"),
            refunds=[Refund.from_doc(r, currency) for r in doc.get("refunds", [])],
            created_at=doc["createdAt"],
            updated_at=doc["updatedAt"] if "updatedAt" in doc else doc["createdAt"],
            flagged=doc["flagged"]["reason"] if doc.get("flagged") else None,
            reversal=DomainReversalState(doc["reversal"]) if doc.get("reversal") else None,
        )


class _PaymentsLater:
    """An order's payments, loaded through the request's DataLoader when awaited.

    Not a coroutine: one that is never awaited (the field was not selected)
    costs nothing and warns about nothing.
    """

    __slots__ = ("context", "order_id")

    def __init__(self, context: Context, order_id: Any) -> None:
        self.context = context
        self.order_id = order_id

    def __await__(self) -> Generator[Any, None, list[Payment]]:
        return self._load().__await__()

    async def _load(self) -> list[Payment]:
        docs = await self.context.payments_by_order.load(self.order_id)
        return [Payment.from_doc(doc) for doc in docs]


@strawberry.type(description="One way to pay an order: a provider and a method.")
class PaymentOption:
    provider: str
    display_name: str
    method: PaymentMethod  # type: ignore[valid-type]
    available: bool
    reason: PaymentUnavailable | None = strawberry.field(  # type: ignore[valid-type]
        description="Why it cannot be used for this order; null when it can."
    )
    detail: str | None = strawberry.field(description="The reason in words, for a person.")
    needs: list[PaymentNeeds] = strawberry.field(  # type: ignore[valid-type]
        description="What startPayment must carry beside the provider and method."
    )


@strawberry.type(description="An order of one branch, priced from its catalog.")
class Order(Node):
    status: OrderStatus  # type: ignore[valid-type]
    total: Money
    items: list[OrderItem]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime = strawberry.field(
        description="When an unpaid order turns EXPIRED; unchanged once paid."
    )
    # Built with the order for the caller (from_doc), so that a page of orders
    # completes them as plain fields rather than through a resolver each.
    branch: Branch
    customer: Customer = strawberry.field(
        description="Who ordered; personal data is masked for most keys."
    )
    doc: strawberry.Private[Document]
    # A list when the query that built the order fetched them with its page
    # (with_payments); otherwise an awaitable that asks the DataLoader when, and
    # only if, the field is executed, so the orders of a response share one batch.
    payments: list[Payment] = strawberry.field(
        description="Every payment attempt of the order, oldest first."
    )

    @strawberry.field(
        description="Every provider of the order's branch with each of its methods, in the "
        "branch's order; one that cannot be used for this order says why. Offer a button only "
        "for an available one."
    )
    def payment_options(
        self,
        info: Info[Context, None],
        payer_id_known: Annotated[
            bool,
            strawberry.argument(
                description="Whether the frontend has the payer's id at the platform (an "
                "openid inside WeChat, a buyer id inside Alipay), which JSAPI needs."
            ),
        ] = False,
    ) -> list[PaymentOption]:
        service = info.context.services.payments
        if service is None:
            return []
        return [
            PaymentOption(
                provider=option.provider,
                display_name=option.display_name,
                method=option.method,
                available=option.available,
                reason=option.reason,
                detail=option.detail,
                needs=list(option.needs),
            )
            for option in service.options(self.doc, payer_id_known=payer_id_known)
        ]

    @classmethod
    def from_doc(cls, doc: Document, context: Context) -> Order:
        """The order as the caller of ``context`` sees it (personal data masked or not)."""
        currency = doc.get("currency", "CNY")
        branch = doc["branch"]
        stored = doc["customer"]
        principal = context.principal
        reveal = principal is not None and principal.sees_pii_of(branch)
        phone, id_card = reveal_customer(context.services.vault, stored, reveal=reveal)
        return cls(
            id=strawberry.ID(to_global_id("Order", str(doc["_id"]))),
            status=DomainOrderStatus(doc["status"]),
            total=money(doc["totalFen"], currency),
            items=[OrderItem.from_doc(item, currency) for item in doc["items"]],
            created_at=doc["createdAt"],
            updated_at=doc["updatedAt"],
            expires_at=doc["expiresAt"],
            branch=branch_of(context, branch),
            customer=Customer(name=stored["name"], phone=phone, id_card_number=id_card),
            payments=cast("list[Payment]", _PaymentsLater(context, doc["_id"])),
            doc=doc,
        )


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class OrderEdge:
    cursor: str
    node: Order


@strawberry.type(description="A page of orders, newest first (createdAt, then id, descending).")
class OrderConnection:
    edges: list[OrderEdge]
    page_info: PageInfo
    count_total: strawberry.Private[Any]

    @strawberry.field(description="How many orders match the filter, over all pages.")
    async def total_count(self) -> int:
        return int(await self.count_total())


@strawberry.type(description="Why a request was refused; nothing was written.")
class UserError:
    field: list[str] | None
    message: str
    code: str


def selects(info: Info[Context, None], *path: str) -> bool:
    """Whether the current field's selection holds the field path, through fragments and aliases.

    Directives are not evaluated: a field under ``@skip(if: true)`` counts as
    selected, which costs a query at most.
    """
    # info.selected_fields holds the current field's own node(s).
    return any(_holds(field.selections, path) for field in info.selected_fields)


def _holds(selections: Sequence[Selection], path: Sequence[str]) -> bool:
    if not path:
        return True
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == path[0] and _holds(selection.selections, path[1:]):
                return True
        elif _holds(selection.selections, path):  # a fragment spread or an inline fragment
            return True
    return False


async def with_payments(info: Info[Context, None], orders: Sequence[Order]) -> None:
    """Fetch the payments of ``orders`` now, in one query, and attach them.

    Resolved lazily, ``payments`` makes every order of a page an awaitable
    field; fetched here with the page, the page completes synchronously
    (docs/performance.md).
    """
    found = await info.context.store.payments.of_orders([order.doc["_id"] for order in orders])
    for order in orders:
        order.payments = [Payment.from_doc(payment) for payment in found[order.doc["_id"]]]
