"""Read-only fields: branches, catalogs, orders with cursor pagination, nodes."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

import strawberry
from bson import ObjectId
from bson.errors import InvalidId
from strawberry.scalars import JSON
from strawberry.types import Info

from api.domain.order import OfferingKind as DomainOfferingKind
from api.domain.order import OrderStatus as DomainOrderStatus
from api.domain.order import normalise_phone
from api.domain.principal import Permission
from api.domain.text import AUDIT_CURSOR, BRANCH_CODE, PHONE, quoted
from api.schema.context import Context
from api.schema.errors import bad_input
from api.schema.ids import (
    decode_cursor,
    encode_cursor,
    from_global_id,
    object_id_cursor,
    object_id_of,
)
from api.schema.types import (
    Branch,
    Node,
    Offering,
    OfferingKind,
    Order,
    OrderConnection,
    OrderEdge,
    OrderStatus,
    PageInfo,
    Payment,
    selects,
    with_payments,
)
from api.store.orders import ORDER_FIELDS, OrderQuery, Position


@strawberry.input(description="All given conditions must hold; an empty list matches nothing.")
class OrderFilter:
    branches: list[str] | None = strawberry.field(
        default=None, description=f"Branch codes, each of {BRANCH_CODE.summary}."
    )
    status: list[OrderStatus] | None = None  # type: ignore[valid-type]
    created_after: datetime | None = None
    created_before: datetime | None = None
    customer_phone: str | None = strawberry.field(
        default=None,
        description="Orders of this mobile number (found without storing it in clear); "
        f"{PHONE.summary}.",
    )


def _scope(info: Info[Context, None], requested: list[str] | None) -> list[str] | None:
    """The branches the caller asked for (None: all) narrowed to those its key may see."""
    for index, code in enumerate(requested or ()):
        # Checked here, because the codes go into the store's query as they are.
        if (why := BRANCH_CODE.problem(code, f"filter.branches[{index}]")) is not None:
            raise bad_input(why)
    principal = info.context.principal
    return [] if principal is None else principal.scope(requested)


def _phone_digest(info: Info[Context, None], phone: str | None) -> str | None:
    if phone is None:
        return None
    if (why := PHONE.problem(phone, "filter.customerPhone")) is not None:
        raise bad_input(why)
    number = normalise_phone(phone)
    if number is None:
        raise bad_input("filter.customerPhone must be a mainland China mobile number")
    return info.context.services.vault.fingerprint(number, "phone")


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise bad_input(f"{name} needs a time zone, e.g. 2026-11-25T08:00:00Z")
    return value


@strawberry.type(
    description="The plugins.toml in force, and why a newer file is not, if it is not."
)
class ConfigStatus:
    ok: bool = strawberry.field(description="The file as it is on disk now is in force.")
    path: str
    loaded_at: datetime = strawberry.field(
        description="When the configuration in force was loaded."
    )
    generation: int = strawberry.field(description="Counts successful loads since start-up.")
    error: str | None = strawberry.field(
        description="Why the file on disk was rejected; the last good configuration keeps serving."
    )


@strawberry.type(description="One admin action: who did what, when.")
class AuditEntry:
    id: strawberry.ID
    at: datetime
    actor: str = strawberry.field(description="The API key's name, or the OS user of a CLI call.")
    action: str = strawberry.field(
        description="KEY_CREATED, KEY_REVOKED, PROVIDER_ENABLED, PROVIDER_DISABLED, "
        "CONFIG_CHANGED (a reload applied it), REFUND_ISSUED, WEBHOOK_ENDPOINT_CREATED, "
        "WEBHOOK_ENDPOINT_UPDATED, WEBHOOK_ENDPOINT_DELETED, WEBHOOK_SECRET_ROTATED, "
        "WEBHOOK_ENDPOINT_DISABLED (three days of failures), "
        "WEBHOOK_ENDPOINT_PAUSED (its owner key was revoked), "
        "WEBHOOK_EVENT_REPLAYED, WEBHOOK_DELIVERIES_RETRIED."
    )
    target: str
    branch: str | None
    detail: JSON


@strawberry.type
class AuditLogPage:
    entries: list[AuditEntry]
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(
    description="A platform notification whose signature verified but that was not this "
    "branch's (another merchant or sub-merchant, an unknown out-trade-number, another "
    "amount): answered so the platform stops, kept here, applied never."
)
class NotificationMismatch:
    id: strawberry.ID
    received_at: datetime
    provider: str
    branch: str
    reason: str
    event_id: str | None
    kind: str | None = strawberry.field(description="The event's kind, when it was parsed.")
    out_trade_no: str | None
    amount_fen: int | None = strawberry.field(description="The amount the notification said.")


def _check_first(info: Info[Context, None], first: int) -> None:
    """A page size within 0 and the service's largest page, or BAD_USER_INPUT."""
    largest = info.context.services.settings.max_page_size
    if not 0 <= first <= largest:
        raise bad_input(f"first must be between 0 and {largest}")


@strawberry.type
class Query:
    @strawberry.field(
        description="The append-only log of admin actions, newest first (ops: every entry; "
        "branch_admin: its branches' entries)."
    )
    async def audit_log(
        self, info: Info[Context, None], first: int = 50, after: str | None = None
    ) -> AuditLogPage:
        principal = info.context.require(Permission.AUDIT)
        _check_first(info, first)
        before = object_id_cursor(after, AUDIT_CURSOR, "auditLog")
        # A branch admin reads its branches' entries; ops every entry, global ones too.
        branches = principal.scope(None)
        docs = await info.context.store.audit.page(first + 1, before, branches) if first else []
        entries = [
            AuditEntry(
                id=strawberry.ID(str(doc["_id"])),
                at=doc["at"],
                actor=doc["actor"],
                action=doc["action"],
                target=doc["target"],
                branch=doc.get("branch"),
                detail=doc.get("detail", {}),
            )
            for doc in docs[:first]
        ]
        return AuditLogPage(
            entries=entries,
            has_next_page=len(docs) > first,
            end_cursor=entries[-1].id if entries else after,
        )

    @strawberry.field(
        description="Refused genuine notifications, newest first (keys that reconcile: their "
        "branches'; ops: all)."
    )
    async def notification_mismatches(
        self, info: Info[Context, None], first: int = 50
    ) -> list[NotificationMismatch]:
        principal = info.context.require(Permission.RECONCILE)
        _check_first(info, first)
        docs = await info.context.store.payments.mismatches_of(principal.scope(None), first)
        return [
            NotificationMismatch(
                id=strawberry.ID(str(doc["_id"])),
                received_at=doc["receivedAt"],
                provider=doc["provider"],
                branch=doc["branch"],
                reason=doc["reason"],
                event_id=doc.get("eventId"),
                kind=doc.get("kind"),
                out_trade_no=doc.get("outTradeNo"),
                amount_fen=doc.get("amountFen"),
            )
            for doc in docs
        ]

    @strawberry.field(
        description="The state of plugins.toml: live reloads and rejected edits (admins)."
    )
    def config_status(self, info: Info[Context, None]) -> ConfigStatus:
        info.context.require(Permission.ADMIN)
        status = info.context.services.config_status()
        return ConfigStatus(
            ok=status.ok,
            path=str(status.path),
            loaded_at=status.loaded_at,
            generation=status.generation,
            error=status.error,
        )

    @strawberry.field(description="Every branch, in plugins.toml order.")
    def branches(self, info: Info[Context, None]) -> list[Branch]:
        return [
            Branch.from_view(view)
            for code, view in info.context.services.branches().items()
            if info.context.sees(code)
        ]

    @strawberry.field
    def branch(self, info: Info[Context, None], code: str) -> Branch | None:
        view = info.context.branch(code)
        return Branch.from_view(view) if view else None

    @strawberry.field(description="What a branch sells, optionally of one kind.")
    async def catalog(
        self,
        info: Info[Context, None],
        branch: str,
        kind: OfferingKind | None = None,  # type: ignore[valid-type]
    ) -> list[Offering]:
        if info.context.branch(branch) is None:
            raise bad_input(f"no branch {quoted(branch, BRANCH_CODE)}")
        docs = await info.context.store.catalog.for_branch(
            branch, DomainOfferingKind(kind) if kind else None
        )
        return [Offering.from_doc(doc) for doc in docs]

    @strawberry.field(
        description="Orders of all branches, newest first. `first` defaults to 20, at most 100."
    )
    async def orders(
        self,
        info: Info[Context, None],
        filter: OrderFilter | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> OrderConnection:
        settings = info.context.services.settings
        limit = settings.default_page_size if first is None else first
        if not 0 <= limit <= settings.max_page_size:
            raise bad_input(f"first must be between 0 and {settings.max_page_size}")
        position = decode_cursor(after) if after is not None else None
        query = OrderQuery(branches=_scope(info, None))
        if filter is not None:
            query = OrderQuery(
                branches=_scope(info, filter.branches),
                statuses=[DomainOrderStatus(s) for s in filter.status]
                if filter.status is not None
                else None,
                created_after=_aware(filter.created_after, "createdAfter"),
                created_before=_aware(filter.created_before, "createdBefore"),
                customer_phone_digest=_phone_digest(info, filter.customer_phone),
            )
        store = info.context.store
        docs = await store.orders.page(query, position, limit + 1, ORDER_FIELDS) if limit else []
        edges = [
            OrderEdge(
                cursor=encode_cursor(Position(doc["createdAt"], doc["_id"])),
                node=Order.from_doc(doc, info.context),
            )
            for doc in docs[:limit]
        ]
        if selects(info, "edges", "node", "payments"):
            await with_payments(info, [edge.node for edge in edges])
        return OrderConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=len(docs) > limit,
                has_previous_page=position is not None,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else after,
            ),
            count_total=partial(store.orders.count, query),
        )

    @strawberry.field
    async def order(self, info: Info[Context, None], id: strawberry.ID) -> Order | None:
        doc = await info.context.store.orders.get(object_id_of(id, "Order"), ORDER_FIELDS)
        if not doc or not info.context.sees(doc["branch"]):
            return None
        order = Order.from_doc(doc, info.context)
        if selects(info, "payments"):
            await with_payments(info, [order])
        return order

    @strawberry.field(description="Any object by its global ID, or null when it does not exist.")
    async def node(self, info: Info[Context, None], id: strawberry.ID) -> Node | None:
        type_name, key = from_global_id(id)
        store = info.context.store
        node: Node | None = None
        doc: dict[str, Any] | None
        if type_name == "Offering":
            found = await store.catalog.get_many([key])
            doc = found[0] if found else None
            node = Offering.from_doc(doc) if doc else None
        else:
            try:
                object_id = ObjectId(key)
            except InvalidId:
                raise bad_input(f"malformed ID {id[:80]!r}") from None
            if type_name == "Order":
                doc = await store.orders.get(object_id)
                node = Order.from_doc(doc, info.context) if doc else None
            else:
                doc = await store.payments.get(object_id)
                node = Payment.from_doc(doc) if doc else None
        # Another branch's object is indistinguishable from one that does not exist.
        return node if doc is not None and info.context.sees(doc["branch"]) else None
