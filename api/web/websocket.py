"""GraphQL over WebSocket (graphql-transport-ws) with the same rules as HTTP.

Every ``subscribe`` message (subscription, query or mutation) goes through the
same schema extensions as an HTTP request (limits, cost, budget), spends the
same 1 point on arrival, and re-checks its API key first. Beyond that:

- a message over ``max_body_bytes`` closes the socket with 4413, one nested
  too deeply or not shaped as the protocol says with 4400;
- ``connection_init`` must arrive within ``ws_connection_init_timeout_seconds``
  (4408); failed ones count against the address like failed HTTP logins, and
  an address over that limit is closed with 4429;
- at most ``ws_max_operations_per_connection`` operations per socket and
  ``ws_max_subscriptions_per_key`` per API key (in this process) are open;
- a store that does not answer within ``store_timeout_seconds`` gets
  ``connection_init`` a close with 1013 (try again later) and a
  ``subscribe`` an ``error`` with STORE_UNAVAILABLE;
- a key revoked while its sockets are open has them closed with 4403 (their
  subscriptions end) as soon as the keys' change stream tells this process
  (api/store/keys.py); while that stream does not run, and once after each
  time it opens, the open sockets' keys are read again every
  ``key_recheck_interval_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable
from json import JSONDecodeError
from typing import Any

import pymongo
from graphql import GraphQLError, GraphQLFormattedError
from starlette.websockets import WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    ErrorMessage,
    Message,
    SubscribeMessage,
)
from strawberry.types.execution import PreExecutionError

from api.schema.context import Context
from api.schema.errors import shaped
from api.services.budget import SharedBudget
from api.settings import Settings
from api.store.keys import KeyRing
from api.store.outage import is_store_outage, report_store_outage

CLOSE_BAD_MESSAGE = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_LARGE = 4413
CLOSE_TOO_MANY_FAILURES = 4429
CLOSE_TRY_AGAIN = 1013
MAX_OPERATION_ID = 128


def _refusal(message: str, **extensions: Any) -> GraphQLFormattedError:
    return GraphQLError(message, extensions={"code": "RATE_LIMITED", **extensions}).formatted


class OpenSockets:
    """The process's open sockets by API key name; revoked keys' sockets are closed.

    ``close_key`` is called by the key cache when the keys' change stream
    delivers a revocation; ``close_revoked`` (a background job) reads the open
    sockets' keys from the store while no stream runs, and once after each
    time one opens, since revocations made while it did not run may be missed.
    """

    def __init__(self, keys: Callable[[], KeyRing]) -> None:
        self._keys = keys
        self._by_key: dict[str, set[GuardedTransportWS]] = defaultdict(set)
        self._checked_epoch: int | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def add(self, name: str, handler: GuardedTransportWS) -> None:
        self._by_key[name].add(handler)

    def discard(self, name: str, handler: GuardedTransportWS) -> None:
        handlers = self._by_key.get(name)
        if handlers is not None:
            handlers.discard(handler)
            if not handlers:
                del self._by_key[name]

    def operations_of(self, name: str) -> int:
        return sum(len(handler.operations) for handler in self._by_key.get(name, ()))

    def close_key(self, name: str) -> None:
        """Close the sockets of the key ``name`` (revoked), without waiting for them."""
        for handler in list(self._by_key.pop(name, ())):
            task = asyncio.create_task(handler.end(CLOSE_FORBIDDEN, "API key revoked"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close_revoked(self) -> int:
        """Close every socket of a key revoked since it connected; returns how many."""
        epoch = self._keys().live_epoch
        if epoch is not None and epoch == self._checked_epoch:
            return 0  # the stream runs and tells close_key
        if not self._by_key:
            self._checked_epoch = epoch
            return 0
        revoked = await self._keys().revoked_among(list(self._by_key))
        self._checked_epoch = epoch
        closed = 0
        for name in revoked:
            for handler in list(self._by_key.pop(name, ())):
                await handler.end(CLOSE_FORBIDDEN, "API key revoked")
                closed += 1
        return closed

    async def aclose(self) -> None:
        """Wait for the sockets being closed (the app's shutdown)."""
        await asyncio.gather(*self._closing, return_exceptions=True)


class GuardedSocket(ASGIWebSocketAdapter):
    """Reads messages within the size limit; a message too large or too deep closes the socket."""

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        limit: int = self.view.settings.max_body_bytes  # type: ignore[attr-defined]
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                try:
                    text = await self.ws.receive_text()
                except KeyError as error:
                    raise NonTextMessageReceived from error
                # Characters never outnumber UTF-8 bytes; count bytes only when it matters.
                if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                    await self.ws.close(CLOSE_TOO_LARGE, f"message exceeds {limit} bytes")
                    return
                try:
                    message = self.view.decode_json(text)
                except JSONDecodeError as error:
                    if not ignore_parsing_errors:
                        raise NonJsonMessageReceived from error
                    continue
                except RecursionError:
                    await self.ws.close(CLOSE_BAD_MESSAGE, "message nested too deeply")
                    return
                yield message
        except WebSocketDisconnect:
            pass


def _malformed(message: object) -> str | None:
    """Why a message does not follow graphql-transport-ws, or None."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "a message is an object with a string `type`"
    if message["type"] not in ("subscribe", "complete"):
        return None
    identifier = message.get("id")
    if not isinstance(identifier, str) or not 0 < len(identifier) <= MAX_OPERATION_ID:
        return f"`id` is a string of 1 to {MAX_OPERATION_ID} characters"
    if message["type"] == "complete":
        return None
    payload = message.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return "a subscribe message's `payload.query` is a string"
    if not isinstance(payload.get("variables"), dict | None):
        return "`payload.variables` is an object"
    if not isinstance(payload.get("operationName"), str | None):
        return "`payload.operationName` is a string"
    return None


class GuardedTransportWS(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with the key re-checked, the budget spent and the limits kept."""

    @property
    def _settings(self) -> Settings:
        return self.context.services.settings

    @property
    def _sockets(self) -> OpenSockets:
        return self.view.sockets  # type: ignore[attr-defined,no-any-return]

    def _address(self) -> str:
        client = self.context.request.scope.get("client") or ("unknown", 0)
        return f"address:{client[0]}"

    async def end(self, code: int, reason: str) -> None:
        """Close the socket from outside its message loop; its operations end with it."""
        with contextlib.suppress(Exception):
            await self.websocket.close(code=code, reason=reason)
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)

    async def handle_message(self, message: Message) -> None:
        if problem := _malformed(message):
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        failures: SharedBudget = self.view.failures  # type: ignore[attr-defined]
        # Spending nothing reads the address's bucket as every process sees it.
        if (await failures.take(self._address(), 0)).remaining < 1:
            await self.websocket.close(
                CLOSE_TOO_MANY_FAILURES, "too many failed authentications from this address"
            )
            return
        try:
            with pymongo.timeout(self._settings.store_timeout_seconds):
                await super().handle_connection_init(message)
        except Exception as error:
            if not is_store_outage(error):
                raise
            report_store_outage(error, "WebSocket connection_init")
            await self.websocket.close(CLOSE_TRY_AGAIN, "STORE_UNAVAILABLE: try again later")
            return
        principal = self.context.principal
        if self.connection_acknowledged and principal is not None:
            self._sockets.add(principal.name, self)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        context = self.context
        if not self.connection_acknowledged or context.principal is None:
            await super().handle_subscribe(message)  # closes with 4401
            return
        # The key is checked again for every operation (from memory, api/store/keys.py).
        try:
            with pymongo.timeout(self._settings.store_timeout_seconds):
                principal = await context.store.keys.authenticate(context.token or "")
        except Exception as error:
            if not is_store_outage(error):
                raise
            report_store_outage(error, "WebSocket subscribe")
            await self._refuse(
                message,
                GraphQLError(
                    "the store is unavailable; try again later",
                    extensions={"code": "STORE_UNAVAILABLE"},
                ).formatted,
            )
            return
        if principal is None:
            await self.end(CLOSE_FORBIDDEN, "API key revoked")
            return
        context.principal = principal
        budget = context.services.budget
        if budget is not None and (wait := (await budget.take(f"key:{principal.name}")).wait):
            await self._refuse(
                message,
                _refusal(f"the key's budget is spent; retry after {wait} s", retryAfter=wait),
            )
            return
        limit = self._settings.ws_max_subscriptions_per_key
        if self._sockets.operations_of(principal.name) >= limit:
            await self._refuse(
                message,
                _refusal(f"this key has {limit} operations open (ws_max_subscriptions_per_key)"),
            )
            return
        await super().handle_subscribe(message)

    async def _handle_pre_execution_error(
        self, operation: Operation[Context, None], result: PreExecutionError
    ) -> None:
        # Refusals by the limits and parse errors end the operation before
        # ErrorShaping sees them: shape them as HTTP does.
        if result.errors:
            result.errors = shaped(result.errors)
        await super()._handle_pre_execution_error(operation, result)

    async def _refuse(self, message: SubscribeMessage, error: GraphQLFormattedError) -> None:
        refusal: ErrorMessage = {"id": message["id"], "type": "error", "payload": [error]}
        await self.send_message(refusal)

    async def shutdown(self) -> None:
        principal = self.context.principal
        if principal is not None:
            self._sockets.discard(principal.name, self)
        await super().shutdown()
