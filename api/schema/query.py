"""Read-only fields: branches, catalogs, orders with cursor pagination, nodes."""

from __future__ import annotations

from datetime import datetime
from functools import partial

import strawberry
from bson import ObjectId
from bson.errors import InvalidId
from strawberry.types import Info

from api.domain.order import OfferingKind as DomainOfferingKind
from api.domain.order import OrderStatus as DomainOrderStatus
from api.schema.context import Context
from api.schema.errors import bad_input
from api.schema.ids import decode_cursor, encode_cursor, from_global_id, object_id_of
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
)
from api.store.orders import ORDER_FIELDS, OrderQuery, Position


@strawberry.input(description="All given conditions must hold; an empty list matches nothing.")
class OrderFilter:
    branches: list[str] | None = None
    status: list[OrderStatus] | None = None  # type: ignore[valid-type]
    created_after: datetime | None = None
    created_before: datetime | None = None


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


@strawberry.type
class Query:
    @strawberry.field(description="The state of plugins.toml: live reloads and rejected edits.")
    def config_status(self, info: Info[Context, None]) -> ConfigStatus:
        status = info.context.request.app.state.registry.status
        return ConfigStatus(
            ok=status.ok,
            path=str(status.path),
            loaded_at=status.loaded_at,
            generation=status.generation,
            error=status.error,
        )

    @strawberry.field(description="Every branch, in plugins.toml order.")
    def branches(self, info: Info[Context, None]) -> list[Branch]:
        return [Branch.from_view(view) for view in info.context.services.branches().values()]

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
            raise bad_input(f"no branch {branch!r}")
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
        query = OrderQuery()
        if filter is not None:
            query = OrderQuery(
                branches=filter.branches,
                statuses=[DomainOrderStatus(s) for s in filter.status]
                if filter.status is not None
                else None,
                created_after=_aware(filter.created_after, "createdAfter"),
                created_before=_aware(filter.created_before, "createdBefore"),
            )
        store = info.context.store
        docs = await store.orders.page(query, position, limit + 1, ORDER_FIELDS) if limit else []
        edges = [
            OrderEdge(
                cursor=encode_cursor(Position(doc["createdAt"], doc["_id"])),
                node=Order.from_doc(doc),
            )
            for doc in docs[:limit]
        ]
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
        return Order.from_doc(doc) if doc else None

    @strawberry.field(description="Any object by its global ID, or null when it does not exist.")
    async def node(self, info: Info[Context, None], id: strawberry.ID) -> Node | None:
        type_name, key = from_global_id(id)
        store = info.context.store
        if type_name == "Offering":
            found = await store.catalog.get_many([key])
            return Offering.from_doc(found[0]) if found else None
        try:
            object_id = ObjectId(key)
        except InvalidId:
            raise bad_input(f"malformed ID {id[:80]!r}") from None
        if type_name == "Order":
            doc = await store.orders.get(object_id)
            return Order.from_doc(doc) if doc else None
        payment = await store.collection("payments").find_one({"_id": object_id})
        return Payment.from_doc(payment) if payment else None
