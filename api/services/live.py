"""Live order status for subscriptions, fed by a MongoDB change stream on the orders collection.

The stream sees every write to the order, whichever server process made it.
Each order document keeps its ``statusHistory``; the feed emits the history
entries it has not sent yet, so a burst of changes that the stream coalesces
into one lookup still yields every status, in order, and the current state is
never sent twice.

The same count makes the feed survive a store outage. A subscription lives for
hours, outside any request's deadline, so each store call here carries its own
(``pymongo.timeout``). When the store stops answering (down, paused,
unreachable), the feed yields one :class:`StoreOutage` and retries with a
bounded, jittered backoff: it reopens the change stream, re-reads the order and
emits the history entries written meanwhile. Every status change is sent once,
whether it was written before, during or after the outage. It stops when the
subscriber goes away (the task is cancelled) and after a final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pymongo
from bson import ObjectId
from pymongo.errors import PyMongoError

from api.domain.order import OrderStatus
from api.store import Store
from api.store.cancellation import raise_if_cancelled
from api.store.outage import is_store_outage

Document = dict[str, Any]
T = TypeVar("T")

# No status leaves these, so the feed ends after sending one of them.
FINAL = frozenset({OrderStatus.REFUNDED, OrderStatus.CANCELLED, OrderStatus.EXPIRED})


@dataclass(frozen=True, slots=True)
class StoreOutage:
    """The store stopped answering and the feed is retrying; ``error`` is for the log only."""

    error: PyMongoError


class Backoff:
    """Delays between retries: doubling from ``first`` up to ``most``, each jittered.

    The jitter (a delay between half and all of the step) spreads the retries
    of many subscribers, so a store coming back is not met by all at once.
    """

    def __init__(self, first: float = 0.5, most: float = 5.0) -> None:
        self.first = first
        self.most = most
        self._step = first

    def next(self) -> float:
        step = self._step
        self._step = min(self._step * 2, self.most)
        return random.uniform(step / 2, step)

    def reset(self) -> None:
        self._step = self.first


async def order_changes(
    store: Store,
    order_id: ObjectId,
    visible: Callable[[str], bool],
    *,
    timeout: float = 4.0,
    backoff: Backoff | None = None,
) -> AsyncIterator[tuple[Document, Document] | StoreOutage]:
    """Yield (order, history entry): the current state first, then every later status change.

    Returns nothing for an unknown order or one of a branch the caller may not
    see; ends after a final status. ``timeout`` bounds each store call; a
    failed one yields a :class:`StoreOutage` (once per outage) before the
    retries, which go on until the store answers or the caller stops.
    """
    orders = store.collection("orders")
    pipeline = [
        {"$match": {"documentKey._id": order_id, "operationType": {"$in": ["update", "replace"]}}}
    ]
    # Each getMore waits at most this long on the server for a change, well
    # inside the deadline that tells a quiet stream from a stopped store.
    await_ms = max(1, min(1000, round(timeout * 500)))
    delays = backoff or Backoff()
    sent: int | None = None  # history entries sent; None until the current state is
    in_outage = False
    while True:
        try:
            # Open the stream before reading the state, so no change falls between the two.
            stream = await _bounded(
                orders.watch(pipeline, full_document="updateLookup", max_await_time_ms=await_ms),
                timeout,
            )
            try:
                order = await _bounded(store.orders.get(order_id), timeout)
                in_outage = False
                delays.reset()
                if order is None or not visible(order["branch"]):
                    return
                history: list[Document] = order.get("statusHistory", [])
                if sent is None:
                    sent = len(history)
                    fallback = {"status": order["status"], "at": order["updatedAt"]}
                    current = history[-1] if history else fallback
                    yield order, current
                    if OrderStatus(order["status"]) in FINAL:
                        return
                while True:
                    # What was written while the stream was closed, then each change.
                    for entry in history[sent:]:
                        yield order, entry
                        if OrderStatus(entry["status"]) in FINAL:
                            return
                    sent = max(sent, len(history))
                    change: Document | None = None
                    while change is None:
                        if not stream.alive:
                            return  # invalidated: the collection is gone
                        change = await _bounded(stream.try_next(), timeout)
                    found = change.get("fullDocument")
                    if found is None:
                        found = await _bounded(store.orders.get(order_id), timeout)
                    if found is None:
                        return
                    order = found
                    history = order.get("statusHistory", [])
            finally:
                # Under a deadline too: closing sends killCursors, which would
                # otherwise wait out a stopped store. A stream that cannot be
                # closed dies with the store.
                with contextlib.suppress(PyMongoError), pymongo.timeout(timeout):
                    await stream.close()
        except PyMongoError as error:
            if not is_store_outage(error):
                raise
            if not in_outage:
                in_outage = True
                yield StoreOutage(error)
            await asyncio.sleep(delays.next())


async def when_stored(
    call: Callable[[], Awaitable[T]], *, timeout: float = 4.0, backoff: Backoff | None = None
) -> AsyncIterator[T | StoreOutage]:
    """Yield ``call()``'s result once the store answers, after one StoreOutage if it did not.

    For a read that completes an event the feed has already counted as sent: it
    must not be dropped, so it is retried (reads only; a write is never repeated
    here).
    """
    delays = backoff or Backoff()
    reported = False
    while True:
        try:
            result = await _bounded(call(), timeout)
        except PyMongoError as error:
            if not is_store_outage(error):
                raise
            if not reported:
                reported = True
                yield StoreOutage(error)
            await asyncio.sleep(delays.next())
            continue
        yield result
        return


async def _bounded(call: Awaitable[T], timeout: float) -> T:
    """A store call under a deadline of its own, that honours a cancellation it swallowed."""
    with pymongo.timeout(timeout):
        result = await call
    raise_if_cancelled()
    return result
