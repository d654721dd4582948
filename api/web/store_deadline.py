"""Every HTTP request's store work runs under one deadline, so an outage is answered fast.

PyMongo's client-side operation timeout (``pymongo.timeout``, documented as
"CSOT") bounds every driver call made inside the block, together: server
selection, waiting for a pooled connection, the round trips, and ``maxTimeMS``
sent to the server (SecantusDB and MongoDB both accept it). When the deadline
passes, the driver raises an error whose ``timeout`` is true, which
api/schema/errors.py answers as STORE_UNAVAILABLE. The deadline is a context
variable, so tasks started inside the request (DataLoader batches) inherit it.

WebSocket scopes are left alone: a subscription lives for hours, so its store
calls carry deadlines of their own (api/services/live.py).

The deadline is wall-clock time from the request's start, not the sum of its
store calls: a request that waits on a payment platform (startPayment,
refundPayment, a second success's automatic refund) spends it too. What it
writes afterwards then fails as STORE_UNAVAILABLE and is finished by
reconciliation or by repeating the request with its idempotency key.
"""

from __future__ import annotations

import pymongo
from starlette.types import ASGIApp, Receive, Scope, Send


class StoreDeadline:
    """Runs each HTTP request under ``pymongo.timeout(seconds)``."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with pymongo.timeout(self.seconds):
            await self.app(scope, receive, send)
