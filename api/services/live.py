"""Live order status for subscriptions, fed by a MongoDB change stream on the orders collection.

The stream sees every write to the order, whichever server process made it.
Each order document keeps its ``statusHistory``; the feed emits the history
entries it has not sent yet, so a burst of changes that the stream coalesces
into one lookup still yields every status, in order, and the current state is
never sent twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from bson import ObjectId

from api.domain.order import OrderStatus
from api.store import Store

Document = dict[str, Any]

# No status leaves these, so the feed ends after sending one of them.
FINAL = frozenset({OrderStatus.REFUNDED, OrderStatus.CANCELLED, OrderStatus.EXPIRED})


async def order_changes(
    store: Store, order_id: ObjectId, visible: Callable[[str], bool] = lambda branch: True
) -> AsyncIterator[tuple[Document, Document]]:
    """Yield (order, history entry): the current state first, then every later status change.

    Returns nothing for an unknown order or one of a branch the caller may not
    see; ends after a final status.
    """
    orders = store.collection("orders")
    pipeline = [
        {"$match": {"documentKey._id": order_id, "operationType": {"$in": ["update", "replace"]}}}
    ]
    # Open the stream before reading the current state, so no change falls between the two.
    async with await orders.watch(pipeline, full_document="updateLookup") as stream:
        order = await store.orders.get(order_id)
        if order is None or not visible(order["branch"]):
            return
        history: list[Document] = order.get("statusHistory", [])
        sent = len(history)
        current = history[-1] if history else {"status": order["status"], "at": order["updatedAt"]}
        yield order, current
        if OrderStatus(order["status"]) in FINAL:
            return
        async for change in stream:
            order = change.get("fullDocument") or await store.orders.get(order_id)
            if order is None:
                return
            history = order.get("statusHistory", [])
            for entry in history[sent:]:
                yield order, entry
                if OrderStatus(entry["status"]) in FINAL:
                    return
            sent = max(sent, len(history))
