"""Live order status for subscriptions, fed by the process's change stream on orders.

Every subscription of the process reads one change stream on the orders
collection (api/store/changes.py: the hub), which sees every write to an order,
whichever server process made it. Each order document keeps its
``statusHistory``; the feed emits the history entries it has not sent yet, so
a burst of changes that the stream coalesces into one lookup still yields
every status, in order, and the current state is never sent twice.

The same count makes the feed survive a store outage. A subscription lives for
hours, outside any request's deadline, so each store call here carries its own
(``pymongo.timeout``). When the store stops answering (down, paused,
unreachable), the feed yields one :class:`StoreOutage` while the hub retries
with a bounded, jittered backoff and reopens its stream from its resume token:
the changes written meanwhile arrive then. Only when the stream could not
resume (``Opened.gap``) does the feed read the order again and emit the
history entries written meanwhile. Every status change is sent once, whether
it was written before, during or after the outage. It stops when the
subscriber goes away (the task is cancelled), after a final status, and with
:class:`SubscriberTooSlow` when it fell too far behind the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pymongo
from bson import ObjectId
from pymongo.errors import PyMongoError

from api.domain.order import OrderStatus
from api.store import Store
from api.store.cancellation import raise_if_cancelled
from api.store.changes import (
    Backoff,
    ChangeHub,
    Opened,
    StoreOutage,
    StreamEnded,
    SubscriberTooSlow,
)
from api.store.outage import is_store_outage

__all__ = [
    "FINAL",
    "Backoff",
    "StoreOutage",
    "SubscriberTooSlow",
    "order_changes",
    "when_stored",
]

Document = dict[str, Any]
T = TypeVar("T")

# No status leaves these, so the feed ends after sending one of them.
FINAL = frozenset({OrderStatus.REFUNDED, OrderStatus.CANCELLED, OrderStatus.EXPIRED})


async def order_changes(
    hub: ChangeHub,
    store: Store,
    order_id: ObjectId,
    visible: Callable[[str], bool],
    *,
    timeout: float = 4.0,
    backoff: Callable[[], Backoff] = Backoff,
) -> AsyncIterator[tuple[Document, Document] | StoreOutage]:
    """Yield (order, history entry): the current state first, then every later status change.

    Returns nothing for an unknown order or one of a branch the caller may not
    see; ends after a final status. ``timeout`` bounds each store call; a
    failed one yields a :class:`StoreOutage` (once per outage) before the
    retries, which go on until the store answers or the caller stops. Raises
    :class:`SubscriberTooSlow` when the hub dropped the subscriber.
    """
    sent: int | None = None  # history entries sent; None until the current state is
    in_outage = False
    with hub.subscribe("orders", order_id) as changes:
        while True:
            try:
                item = await changes.next()
            except StreamEnded:
                return  # invalidated: the collection is gone
            if isinstance(item, StoreOutage):
                if not in_outage:
                    in_outage = True
                    yield item
                continue
            if isinstance(item, Opened):
                if sent is not None and not item.gap:
                    in_outage = False
                    continue  # resumed: the changes made meanwhile follow
                # The stream runs, so no change falls between it and this read.
                order = None
                async for step in when_stored(
                    lambda: store.orders.get(order_id), timeout=timeout, backoff=backoff()
                ):
                    if isinstance(step, StoreOutage):
                        if not in_outage:
                            in_outage = True
                            yield step
                    else:
                        order = step
                in_outage = False
                if order is None or not visible(order["branch"]):
                    return
            else:
                order = item.get("fullDocument")
                if order is None:
                    return  # the order is gone
                if sent is None:
                    continue  # the state is read when the stream runs, not from a change
            history: list[Document] = order.get("statusHistory", [])
            if sent is None:
                sent = len(history)
                fallback = {"status": order["status"], "at": order["updatedAt"]}
                yield order, history[-1] if history else fallback
                if OrderStatus(order["status"]) in FINAL:
                    return
            # What was written while the stream was closed, or since the last change.
            for entry in history[sent:]:
                yield order, entry
                if OrderStatus(entry["status"]) in FINAL:
                    return
            sent = max(sent, len(history))


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
