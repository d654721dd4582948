"""What one request of each scenario is, over GraphQL, over the plain endpoint, or to the store.

(a) ``orders(first: 50)`` of one branch and one status, selecting about 15
fields including items and payments; (b) ``order(id)`` of a random existing
order; (c) ``createOrder`` with a fresh idempotency key. The plain endpoint
(``api/bench.py``) answers (a) and (b) with the same JSON body; the driver
target runs the same store queries with no HTTP at all.
"""

from __future__ import annotations

import enum
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from api.schema.ids import to_global_id
from api.store import Store
from bench.synthetic import BRANCHES, order_id

PAGE_SIZE = 50
# Statuses every branch has well over a page of, even in the 10 k set.
PAGE_STATUSES = ("PAID", "EXPIRED", "CANCELLED", "PENDING_PAYMENT")

ORDER_FIELDS = """
    id status createdAt updatedAt expiresAt
    branch { code name }
    total { amountFen currency }
    customer { name phone }
    items { offeringId kind title quantity unitPrice { amountFen } subtotal { amountFen } }
    payments { id provider status amount { amountFen } outTradeNo }
"""
ORDERS_QUERY = (
    "query BenchOrders($filter: OrderFilter, $first: Int) {"
    " orders(filter: $filter, first: $first) {"
    f" edges {{ cursor node {{ {ORDER_FIELDS} }} }}"
    " pageInfo { hasNextPage endCursor } } }"
)
ORDER_QUERY = f"query BenchOrder($id: ID!) {{ order(id: $id) {{ {ORDER_FIELDS} }} }}"
CREATE_ORDER = (
    "mutation BenchCreate($input: CreateOrderInput!) {"
    " createOrder(input: $input) { order { id status total { amountFen } }"
    " userErrors { code message } } }"
)
# Idempotency keys of orders the bench creates; removed after scenario (c).
CREATED_KEY_PREFIX = "bench-created-"


class Scenario(enum.StrEnum):
    ORDERS = "a"
    ORDER = "b"
    CREATE = "c"


class Target(enum.StrEnum):
    GRAPHQL = "graphql"
    PLAIN = "plain"
    DRIVER = "driver"


DESCRIPTIONS = {
    Scenario.ORDERS: "(a) orders(first: 50) by branch+status",
    Scenario.ORDER: "(b) order(id), random id",
    Scenario.CREATE: "(c) createOrder, fresh keys",
}


@dataclass(frozen=True, slots=True)
class Spec:
    """One measurement: everything the load generator process needs, picklable."""

    scenario: Scenario
    target: Target
    concurrency: int
    duration: float
    warmup: float
    orders: int
    base: datetime
    base_url: str = ""
    mongodb_uri: str = ""
    database: str = ""
    headers: tuple[tuple[str, str], ...] = field(default=())
    seed: int = 7


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    json: dict[str, Any] | None = None


def _random_global_id(spec: Spec, rng: random.Random) -> str:
    return to_global_id("Order", str(order_id(spec.base, rng.randrange(spec.orders))))


def http_request(spec: Spec, rng: random.Random) -> HttpRequest:
    if spec.scenario is Scenario.ORDERS:
        branch, status = rng.choice(BRANCHES), rng.choice(PAGE_STATUSES)
        if spec.target is Target.PLAIN:
            query = urlencode({"branch": branch, "status": status, "first": PAGE_SIZE})
            return HttpRequest("GET", f"/bench/orders?{query}")
        variables = {"filter": {"branches": [branch], "status": [status]}, "first": PAGE_SIZE}
        return HttpRequest("POST", "/graphql", {"query": ORDERS_QUERY, "variables": variables})
    if spec.scenario is Scenario.ORDER:
        order = _random_global_id(spec, rng)
        if spec.target is Target.PLAIN:
            return HttpRequest("GET", f"/bench/order/{order}")
        return HttpRequest("POST", "/graphql", {"query": ORDER_QUERY, "variables": {"id": order}})
    branch = rng.choice(BRANCHES)
    variables = {
        "input": {
            "branch": branch,
            "items": [{"offeringId": to_global_id("Offering", f"{branch}-plan-59")}],
            "customer": {"name": "Bench Li", "phone": f"139{rng.randrange(10**8):08d}"},
            "idempotencyKey": f"{CREATED_KEY_PREFIX}{uuid.uuid4().hex}",
        }
    }
    return HttpRequest("POST", "/graphql", {"query": CREATE_ORDER, "variables": variables})


def succeeded(spec: Spec, status_code: int, body: bytes) -> bool:
    """A request counts only when the user would have got what they asked for."""
    if status_code != 200:
        return False
    if spec.target is Target.PLAIN:
        return True
    if spec.scenario is Scenario.CREATE:
        payload = json.loads(body)
        created = (payload.get("data") or {}).get("createOrder") or {}
        return not payload.get("errors") and created.get("userErrors") == []
    return b'"errors"' not in body


def store_call(spec: Spec, store: Store) -> Callable[[random.Random], Awaitable[bool]]:
    """The driver target: the store queries of one request, with nothing around them."""
    from api.bench import payments_of
    from api.domain.order import OrderStatus
    from api.store.orders import ORDER_FIELDS as PROJECTION
    from api.store.orders import OrderQuery

    async def orders_page(rng: random.Random) -> bool:
        query = OrderQuery(
            branches=[rng.choice(BRANCHES)], statuses=[OrderStatus(rng.choice(PAGE_STATUSES))]
        )
        docs = await store.orders.page(query, None, PAGE_SIZE + 1, PROJECTION)
        await payments_of(store, [doc["_id"] for doc in docs[:PAGE_SIZE]])
        return len(docs) > 0

    async def one_order(rng: random.Random) -> bool:
        wanted = order_id(spec.base, rng.randrange(spec.orders))
        doc = await store.orders.get(wanted, PROJECTION)
        await payments_of(store, [wanted])
        return doc is not None

    if spec.scenario is Scenario.ORDERS:
        return orders_page
    if spec.scenario is Scenario.ORDER:
        return one_order
    raise ValueError("createOrder has no driver-only ceiling")
