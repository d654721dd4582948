"""What one request of each scenario is, over GraphQL, over the plain endpoint, or to the store.

(a) ``orders(first: 50)`` of one branch and one status, selecting about 15
fields including items and payments; (a-ops) the same page with no filter, for
an ops key: every branch, newest first; (b) ``order(id)`` of a random existing
order; (c) ``createOrder`` with a fresh idempotency key; (d) one payment round
trip: create an order, subscribe to its ``orderEvents``, ``startPayment``
with the sandbox, pay at the sandbox simulator, and receive PAID once the
simulator's signed notification reached ``/notify``; (w) the same round trip
with the bench sending the simulator's notification itself, timed from that
moment to the PAID event and to the partner's ``order.paid`` webhook
(``bench.webhooks`` runs the rest of (w)). The plain endpoint
(``api/bench.py``) answers (a) and (b) with the same JSON body; the driver
target runs the same store queries with no HTTP at all.

The hostile scenario adds two: (h) a partner sending one of the worst
documents the limits allow (``bench/hostile.py`` generates them), each with a
fresh operation name so no parser or validation cache spares the service its
work; and a ``/healthz`` probe. Every answer is labelled (``Answer``), so the
attacker's requests are counted served or refused by HTTP status and error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from api.schema.ids import to_global_id
from api.store import Store
from bench.synthetic import BRANCHES, order_id

PAGE_SIZE = 50
ROUND_TRIP_TIMEOUT = 30.0
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


START_PAYMENT = (
    "mutation BenchPay($input: StartPaymentInput!) {"
    " startPayment(input: $input) { payment { id status } action { kind url }"
    " userErrors { code message } } }"
)
# (w) settles at the simulator by the attempt's number.
WEBHOOK_START_PAYMENT = (
    "mutation BenchWebhookPay($input: StartPaymentInput!) {"
    " startPayment(input: $input) { payment { id status outTradeNo }"
    " userErrors { code message } } }"
)
ORDER_EVENTS = "subscription BenchEvents($id: ID!) { orderEvents(orderId: $id) { status } }"


class Scenario(enum.StrEnum):
    ORDERS = "a"
    # (a) for an ops key over every branch, no filter: newest first across branches.
    ORDERS_ALL = "a-ops"
    ORDER = "b"
    CREATE = "c"
    PAY = "d"
    WEBHOOK = "w"
    HOSTILE = "h"
    HEALTH = "healthz"


class Target(enum.StrEnum):
    GRAPHQL = "graphql"
    PLAIN = "plain"
    DRIVER = "driver"


DESCRIPTIONS = {
    Scenario.ORDERS: "(a) orders(first: 50)",
    Scenario.ORDERS_ALL: "(a) ops-wide orders(first: 50), no filter",
    Scenario.ORDER: "(b) order(id)",
    Scenario.CREATE: "(c) createOrder",
    Scenario.PAY: "(d) pay round trip",
    Scenario.WEBHOOK: "(w) webhooks",
    Scenario.HOSTILE: "(h) hostile partner",
    Scenario.HEALTH: "(h) /healthz probe",
}
# The operation name of every hostile document; each request appends a nonce to it.
HOSTILE_OPERATION = "Hostile"


@dataclass(frozen=True, slots=True)
class HostileDocument:
    """One document the attacker sends, with what the service's limits see in it."""

    shape: str
    query: str
    variables: dict[str, Any]
    cost: int
    tokens: int
    depth: int
    aliases: int
    # In words, e.g. "16 x orders(first: 100) { totalCount edges { cursor } }".
    summary: str
    # What the generator sized, e.g. {"pages": 16, "first": 100}.
    parameters: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "summary": self.summary,
            "parameters": self.parameters,
            "cost": self.cost,
            "tokens": self.tokens,
            "depth": self.depth,
            "aliases": self.aliases,
            "bytes": len(self.query.encode()),
            "query": self.query,
            "variables": self.variables,
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
    # Scenario (h): the documents the attacker chooses from.
    documents: tuple[HostileDocument, ...] = ()
    # Above 0, each worker sends one request every `interval` seconds (a probe)
    # instead of one right after the other, and latency counts from when it was due.
    interval: float = 0.0
    # Send nothing in the warm-up: the attacker's budget is spent in the window.
    quiet_warmup: bool = False
    # Scenario (w): the sandbox simulator and the partner's webhook receiver.
    gateway_url: str = ""
    receiver_url: str = ""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    json: dict[str, Any] | None = None
    # What the answer is counted under (the hostile document's shape).
    label: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """How one request ended: whether the caller got what it asked for, and under what label."""

    ok: bool
    label: str
    # Seconds between two moments inside the request, by name: (w) times the webhook and
    # the subscription from the same notification.
    parts: tuple[tuple[str, float], ...] = ()


def _random_global_id(spec: Spec, rng: random.Random) -> str:
    return to_global_id("Order", str(order_id(spec.base, rng.randrange(spec.orders))))


def _create_order(rng: random.Random) -> dict[str, Any]:
    branch = rng.choice(BRANCHES)
    return {
        "input": {
            "branch": branch,
            "items": [{"offeringId": to_global_id("Offering", f"{branch}-plan-59")}],
            "customer": {"name": "Bench Li", "phone": f"139{rng.randrange(10**8):08d}"},
            "idempotencyKey": f"{CREATED_KEY_PREFIX}{uuid.uuid4().hex}",
        }
    }


def _hostile_request(spec: Spec, rng: random.Random) -> HttpRequest:
    document = rng.choice(spec.documents)
    # Same tokens, new document: ParserCache and ValidationCache miss every time.
    named = f"query {HOSTILE_OPERATION}_{rng.getrandbits(48):012x} "
    query = document.query.replace(f"query {HOSTILE_OPERATION} ", named, 1)
    return HttpRequest(
        "POST",
        "/graphql",
        {"query": query, "variables": document.variables},
        label=document.shape,
    )


def http_request(spec: Spec, rng: random.Random) -> HttpRequest:
    if spec.scenario is Scenario.HOSTILE:
        return _hostile_request(spec, rng)
    if spec.scenario is Scenario.HEALTH:
        return HttpRequest("GET", "/healthz")
    if spec.scenario is Scenario.ORDERS:
        branch, status = rng.choice(BRANCHES), rng.choice(PAGE_STATUSES)
        if spec.target is Target.PLAIN:
            query = urlencode({"branch": branch, "status": status, "first": PAGE_SIZE})
            return HttpRequest("GET", f"/bench/orders?{query}")
        variables = {"filter": {"branches": [branch], "status": [status]}, "first": PAGE_SIZE}
        return HttpRequest("POST", "/graphql", {"query": ORDERS_QUERY, "variables": variables})
    if spec.scenario is Scenario.ORDERS_ALL:
        if spec.target is Target.PLAIN:
            return HttpRequest("GET", f"/bench/orders?first={PAGE_SIZE}")
        variables = {"filter": None, "first": PAGE_SIZE}
        return HttpRequest("POST", "/graphql", {"query": ORDERS_QUERY, "variables": variables})
    if spec.scenario is Scenario.ORDER:
        order = _random_global_id(spec, rng)
        if spec.target is Target.PLAIN:
            return HttpRequest("GET", f"/bench/order/{order}")
        return HttpRequest("POST", "/graphql", {"query": ORDER_QUERY, "variables": {"id": order}})
    return HttpRequest("POST", "/graphql", {"query": CREATE_ORDER, "variables": _create_order(rng)})


def refusal_code(status_code: int, body: bytes) -> str:
    """``429 RATE_LIMITED``: the status and the first error's code, as a partner reads them."""
    try:
        errors = json.loads(body).get("errors") or []
        code = (errors[0].get("extensions") or {}).get("code") if errors else None
    except (ValueError, AttributeError, IndexError):
        return f"{status_code} non-JSON"
    return f"{status_code} {code or 'no code'}"


def answer(spec: Spec, request: HttpRequest, status_code: int, body: bytes) -> Answer:
    """The answer's verdict and label: the attacker's by shape and code, the others' as before."""
    if spec.scenario is Scenario.HOSTILE:
        if status_code == 200 and b'"errors"' not in body:
            return Answer(True, f"{request.label}: served")
        return Answer(False, f"{request.label}: {refusal_code(status_code, body)}")
    if succeeded(spec, status_code, body):
        return Answer(True, "served")
    return Answer(False, "unexpected answer")


def succeeded(spec: Spec, status_code: int, body: bytes) -> bool:
    """A request counts only when the user would have got what they asked for."""
    if status_code != 200:
        return False
    if spec.target is Target.PLAIN or spec.scenario is Scenario.HEALTH:
        return True
    if spec.scenario is Scenario.CREATE:
        payload = json.loads(body)
        created = (payload.get("data") or {}).get("createOrder") or {}
        return not payload.get("errors") and created.get("userErrors") == []
    return b'"errors"' not in body


def store_call(spec: Spec, store: Store) -> Callable[[random.Random], Awaitable[bool]]:
    """The driver target: the store queries of one request, with nothing around them."""
    from api.domain.order import OrderStatus
    from api.store.orders import ORDER_FIELDS as PROJECTION
    from api.store.orders import OrderQuery

    async def orders_page(rng: random.Random) -> bool:
        query = OrderQuery(
            branches=[rng.choice(BRANCHES)], statuses=[OrderStatus(rng.choice(PAGE_STATUSES))]
        )
        docs = await store.orders.page(query, None, PAGE_SIZE + 1, PROJECTION)
        await store.payments.of_orders([doc["_id"] for doc in docs[:PAGE_SIZE]])
        return len(docs) > 0

    async def one_order(rng: random.Random) -> bool:
        wanted = order_id(spec.base, rng.randrange(spec.orders))
        doc = await store.orders.get(wanted, PROJECTION)
        await store.payments.of_orders([wanted])
        return doc is not None

    if spec.scenario is Scenario.ORDERS:
        return orders_page
    if spec.scenario is Scenario.ORDER:
        return one_order
    raise ValueError("createOrder has no driver-only ceiling")


def health_probe(base_url: str) -> Callable[[random.Random], Awaitable[Answer]]:
    """``GET /healthz`` on a new connection, as a load balancer checks: a few lines of asyncio.

    httpx costs a client a millisecond or more of CPU a request; a probe must
    not be slow because the generator that sends it is starved of CPU on a
    shared machine, or its latency says nothing about the API.
    """
    address = urlsplit(base_url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"

    async def probe(rng: random.Random) -> Answer:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request.encode())
            answered = await reader.read()  # to the end: the server closes the connection
        finally:
            writer.close()
        ok = answered.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
        return Answer(ok, "served" if ok else "unexpected answer")

    return probe


class RoundTripFailed(Exception):
    """A step of the payment round trip did not give what a partner expects."""


def _data(response: httpx.Response, field: str) -> dict[str, Any]:
    payload = response.json()
    result = (payload.get("data") or {}).get(field)
    if response.status_code != 200 or payload.get("errors") or not result:
        raise RoundTripFailed(f"{field}: {response.status_code} {payload.get('errors')}")
    if result.get("userErrors"):
        raise RoundTripFailed(f"{field}: {result['userErrors']}")
    return dict(result)


async def _next_status(ws: AsyncWebSocketSession) -> str:
    message = await ws.receive_json(timeout=ROUND_TRIP_TIMEOUT)
    if message.get("type") != "next" or message["payload"].get("errors"):
        raise RoundTripFailed(f"orderEvents: {message}")
    return str(message["payload"]["data"]["orderEvents"]["status"])


async def _new_order(client: httpx.AsyncClient, rng: random.Random) -> tuple[str, str]:
    """A new order over GraphQL: its global id and its branch."""
    variables = _create_order(rng)
    created = await client.post("/graphql", json={"query": CREATE_ORDER, "variables": variables})
    return _data(created, "createOrder")["order"]["id"], variables["input"]["branch"]


@contextlib.asynccontextmanager
async def _order_events(
    client: httpx.AsyncClient, order: str
) -> AsyncIterator[AsyncWebSocketSession]:
    """An ``orderEvents`` subscription over graphql-transport-ws, past the order's first status."""
    ws: AsyncWebSocketSession
    async with aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send_json({"type": "connection_init"})
        if (await ws.receive_json(timeout=ROUND_TRIP_TIMEOUT)).get("type") != "connection_ack":
            raise RoundTripFailed("orderEvents: no connection_ack")
        await ws.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": ORDER_EVENTS, "variables": {"id": order}},
            }
        )
        if await _next_status(ws) != "PENDING_PAYMENT":
            raise RoundTripFailed("orderEvents: a new order is not PENDING_PAYMENT")
        yield ws


async def _start_payment(client: httpx.AsyncClient, order: str, query: str) -> dict[str, Any]:
    started = await client.post(
        "/graphql",
        json={
            "query": query,
            "variables": {"input": {"orderId": order, "provider": "sandbox", "method": "QR_CODE"}},
        },
    )
    return _data(started, "startPayment")


async def pay_round_trip(client: httpx.AsyncClient, rng: random.Random) -> bool:
    """Scenario (d): from a new order to its PAID event, as a partner frontend sees it."""
    order, _branch = await _new_order(client, rng)
    async with _order_events(client, order) as ws:
        action = (await _start_payment(client, order, START_PAYMENT))["action"]
        # The payer's "pay" at the platform; the simulator notifies the API on its own.
        paid = await client.post(action["url"], data={"outcome": "success"})
        if paid.status_code != 200:
            raise RoundTripFailed(f"sandbox pay page: {paid.status_code}")
        return await _next_status(ws) == "PAID"


async def webhook_round_trip(client: httpx.AsyncClient, rng: random.Random, spec: Spec) -> Answer:
    """Scenario (w): one paid order, timed from its notification to PAID and to ``order.paid``.

    As (d) up to the payer's success; then the simulator settles the attempt and
    hands back its signed notification (``/control/.../settle``, as the service
    tests do), and the bench sends it to ``/notify`` itself: the clock starts as
    the notification leaves, not at some moment inside the simulator. From that
    moment, in the same flow: the ``orderEvents`` subscription's PAID event (as
    (d) waits for it) and the receiver's arrival stamp of the webhook
    ``order.paid`` for this order (``bench.receiver``).
    """
    order, branch = await _new_order(client, rng)
    async with _order_events(client, order) as ws:
        payment = (await _start_payment(client, order, WEBHOOK_START_PAYMENT))["payment"]

        async def paid_event() -> float:
            if await _next_status(ws) != "PAID":
                raise RoundTripFailed("orderEvents: the paid order is not PAID")
            return time.perf_counter()

        async def webhook() -> float:
            waited = await client.get(f"{spec.receiver_url}/wait/order.paid/{order}")
            if waited.status_code != 200:
                raise RoundTripFailed(f"webhook: no order.paid received ({waited.status_code})")
            return float(waited.json()["at"])

        async with asyncio.TaskGroup() as group:
            # Asked before the clock starts: the receiver stamps the arrival itself.
            received = group.create_task(webhook())
            settled = await client.post(
                f"{spec.gateway_url}/control/payments/{payment['outTradeNo']}/settle",
                json={"outcome": "success", "deliver": False},
            )
            if settled.status_code != 200:
                raise RoundTripFailed(f"sandbox settle: {settled.status_code}")
            notification = settled.json()["notification"]
            subscribed = group.create_task(paid_event())
            sent = time.perf_counter()
            notified = await client.post(
                f"/notify/sandbox/{branch}",
                content=notification["body"].encode(),
                headers=notification["headers"],
            )
            if notified.status_code != 200:
                raise RoundTripFailed(f"/notify: {notified.status_code}")
    return Answer(
        True,
        "served",
        parts=(("subscription", subscribed.result() - sent), ("webhook", received.result() - sent)),
    )
