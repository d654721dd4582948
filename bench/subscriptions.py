"""Scenario (s): idle ``orderEvents`` subscriptions on one API process, memory and fan-out.

One API process on the scratch database of (c) and (d), with the per-key
subscription limit raised to the count. Each subscription is what a checkout
page holds: a WebSocket of its own (graphql-transport-ws, the bench's key in
the connection's headers) following one PENDING_PAYMENT order; the orders are
the scratch database's, created over GraphQL when too few are left.

1. The API's RSS (its process tree, ``bench.procstat``) after a settle with no
   subscription, then again once all of them are open and have had their
   first status (PENDING_PAYMENT) and another settle: the difference over the
   count is the memory of one idle subscription. The API's CPU over that
   second settle is what the idle subscriptions cost while nothing happens.
2. The fan-out: the bench moves each order to CANCELLED through the store's
   own ``OrderRepository.move`` (what a cancellation writes: status, history
   entry, outbox), one order after the other at ``write_rate`` writes per
   second; the latency of a subscriber runs from the moment its order's write
   was sent to the moment its socket delivered the CANCELLED event (the same
   clock, ``perf_counter``, in this process). Every write reaches the API
   through its one change stream on ``orders``, which fans it out to the
   subscriber of that order. A subscriber that has not had its event
   ``RECEIPT_TIMEOUT`` seconds after the last write is counted missing.

The baseline of the ratio is the same scenario with ``BASELINE_SUBSCRIPTIONS``
on the same process just before, so the ratio says what 1,000 open
subscriptions do to one subscriber's latency, not what the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from bson import ObjectId
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from api.domain.order import OrderStatus
from api.schema.ids import object_id_of, to_global_id
from api.store import Store
from bench.percentiles import Latencies
from bench.procstat import cpu_seconds, rss_bytes
from bench.scenarios import CREATE_ORDER, ORDER_EVENTS, Spec, _create_order

BASELINE_SUBSCRIPTIONS = 10
# Sockets being opened at once (each waits for its first status before the next).
OPENING_CONCURRENCY = 32
CREATING_CONCURRENCY = 8
SETTLE_SECONDS = 3.0
RECEIPT_TIMEOUT = 30.0
OPEN_TIMEOUT = 60.0
# Orders that would expire during the scenario are not followed.
EXPIRY_MARGIN = timedelta(minutes=5)
CANCEL_REASON = "make bench fan-out"


@dataclass(frozen=True, slots=True)
class FanOut:
    """What one pass of (s) measured."""

    subscriptions: int  # asked for
    opened: int  # open and past their first status
    rss_before: int
    rss_after: int
    idle_cpu_seconds: float  # the API's CPU over the settle with all of them open
    settle_seconds: float
    latencies: Latencies  # write sent to the event received, per subscriber
    missing: int  # subscribers whose event did not arrive
    written: int  # orders moved, one per subscriber
    write_seconds: float  # from the first write sent to the last one done
    open_seconds: float

    @property
    def rss_per_subscription(self) -> float:
        return (self.rss_after - self.rss_before) / self.opened if self.opened else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "subscriptions": self.subscriptions,
            "opened": self.opened,
            "rssBefore": self.rss_before,
            "rssAfter": self.rss_after,
            "rssPerSubscription": self.rss_per_subscription,
            "idleCpuSecondsPerSecond": self.idle_cpu_seconds / self.settle_seconds,
            "written": self.written,
            "received": len(self.latencies),
            "missing": self.missing,
            "p50Ms": self.latencies.percentile(0.50).seconds * 1000,
            "p99Ms": self.latencies.percentile(0.99).seconds * 1000,
            "maxMs": self.latencies.max.seconds * 1000,
            "writeSeconds": self.write_seconds,
            "openSeconds": self.open_seconds,
        }


class SubscriptionFailed(Exception):
    pass


async def _pending_orders(
    store: Store, client: httpx.AsyncClient, count: int, rng: random.Random
) -> list[ObjectId]:
    """``count`` PENDING_PAYMENT orders of the database far from expiry; created when too few."""
    wanted = {
        "status": OrderStatus.PENDING_PAYMENT.value,
        "expiresAt": {"$gt": datetime.now(UTC) + EXPIRY_MARGIN},
    }
    # Once each: an index scan that yields to concurrent writes may return an order twice.
    cursor = store.orders.collection.find(wanted, {"_id": 1}).limit(count)
    found = list(dict.fromkeys([doc["_id"] async for doc in cursor]))
    gate = asyncio.Semaphore(CREATING_CONCURRENCY)

    async def create() -> ObjectId:
        async with gate:
            answer = await client.post(
                "/graphql", json={"query": CREATE_ORDER, "variables": _create_order(rng)}
            )
        created = ((answer.json().get("data") or {}).get("createOrder") or {}).get("order")
        if answer.status_code != 200 or not created:
            raise SubscriptionFailed(f"createOrder: {answer.status_code} {answer.text[:200]}")
        return object_id_of(created["id"], "Order")

    if len(found) < count:
        # One alone first: concurrent first spends of a key's new rate-limit bucket can
        # race on its upsert (an INTERNAL answer on SecantusDB; see docs/performance.md).
        found.append(await create())
    found += await asyncio.gather(*(create() for _ in range(count - len(found))))
    return found


async def _status(ws: AsyncWebSocketSession, timeout: float) -> str:
    """The next ``orderEvents`` status on the socket, answering the protocol's pings."""
    while True:
        message = await ws.receive_json(timeout=timeout)
        kind = message.get("type")
        if kind == "ping":
            await ws.send_json({"type": "pong"})
            continue
        if kind == "pong":
            continue
        if kind != "next" or message["payload"].get("errors"):
            raise SubscriptionFailed(f"orderEvents: {message}")
        return str(message["payload"]["data"]["orderEvents"]["status"])


async def _subscriber(
    client: httpx.AsyncClient,
    order: ObjectId,
    opening: asyncio.Semaphore,
    opened: list[ObjectId],
    received: dict[ObjectId, float],
    done: asyncio.Event,
) -> None:
    """One checkout: open, take the first status, wait idle for the next, keep open until done."""
    await opening.acquire()
    holding = True
    ws: AsyncWebSocketSession
    try:
        async with aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send_json({"type": "connection_init"})
            if (await ws.receive_json(timeout=OPEN_TIMEOUT)).get("type") != "connection_ack":
                raise SubscriptionFailed("orderEvents: no connection_ack")
            variables = {"id": to_global_id("Order", str(order))}
            await ws.send_json(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": ORDER_EVENTS, "variables": variables},
                }
            )
            if await _status(ws, OPEN_TIMEOUT) != OrderStatus.PENDING_PAYMENT.value:
                raise SubscriptionFailed("orderEvents: the order is not PENDING_PAYMENT")
            opening.release()
            holding = False
            opened.append(order)
            waiting = asyncio.ensure_future(_status(ws, OPEN_TIMEOUT + 10 * RECEIPT_TIMEOUT))
            ended = asyncio.ensure_future(done.wait())
            await asyncio.wait({waiting, ended}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
                at = time.perf_counter()
                if waiting.result() == OrderStatus.CANCELLED.value:
                    received[order] = at
            waiting.cancel()
            # Open until every subscriber is done: a closing socket is not the others' cost.
            await ended
    finally:
        if holding:
            opening.release()


async def _pass(
    spec: Spec, api_pid: int, count: int, write_rate: float, rng: random.Random
) -> FanOut:
    store = Store.connect(spec.mongodb_uri, spec.database)
    limits = httpx.Limits(max_connections=count + 16, max_keepalive_connections=16)
    async with httpx.AsyncClient(
        base_url=spec.base_url, headers=dict(spec.headers), timeout=OPEN_TIMEOUT, limits=limits
    ) as client:
        try:
            orders = await _pending_orders(store, client, count, rng)
            await asyncio.sleep(SETTLE_SECONDS)
            rss_before = rss_bytes(api_pid)
            opening = asyncio.Semaphore(OPENING_CONCURRENCY)
            opened: list[ObjectId] = []
            received: dict[ObjectId, float] = {}
            done = asyncio.Event()
            started = time.perf_counter()
            tasks = [
                asyncio.create_task(_subscriber(client, order, opening, opened, received, done))
                for order in orders
            ]
            # Until each one is open or failed (a failed one's task is done).
            while time.perf_counter() - started < OPEN_TIMEOUT:
                if len(opened) + sum(task.done() for task in tasks) >= count:
                    break
                await asyncio.sleep(0.05)
            open_seconds = time.perf_counter() - started
            cpu_from = cpu_seconds(api_pid)
            await asyncio.sleep(SETTLE_SECONDS)
            idle_cpu = cpu_seconds(api_pid) - cpu_from
            rss_after = rss_bytes(api_pid)
            written: dict[ObjectId, float] = {}
            first_write = time.perf_counter()
            for index, order in enumerate(list(opened)):
                due = first_write + index / write_rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                written[order] = time.perf_counter()
                await store.orders.move(
                    order, OrderStatus.CANCELLED, datetime.now(UTC), reason=CANCEL_REASON
                )
            write_seconds = time.perf_counter() - first_write
            deadline = time.perf_counter() + RECEIPT_TIMEOUT
            while len(received) < len(written) and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            done.set()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await store.close()
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if not opened and failures:
        raise SubscriptionFailed(f"no subscription opened: {failures[0]!r}")
    lags = [received[order] - written[order] for order in written if order in received]
    return FanOut(
        subscriptions=count,
        opened=len(opened),
        rss_before=rss_before,
        rss_after=rss_after,
        idle_cpu_seconds=max(0.0, idle_cpu),
        settle_seconds=SETTLE_SECONDS,
        latencies=Latencies.of(lags),
        missing=len(written) - len(lags),
        written=len(written),
        write_seconds=write_seconds,
        open_seconds=open_seconds,
    )


def fan_out(spec: Spec, api_pid: int, count: int, write_rate: float, seed: int = 7) -> FanOut:
    """One pass of (s): ``count`` idle subscriptions on the API ``api_pid`` at ``spec.base_url``."""
    with contextlib.closing(asyncio.new_event_loop()) as loop:
        return loop.run_until_complete(_pass(spec, api_pid, count, write_rate, random.Random(seed)))
