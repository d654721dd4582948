"""The API-key gate in front of /graphql: authentication and the per-key rate limit.

Routes an embedding program adds (``create_app(gated_routes=...)``, the
bench's plain endpoints) sit behind it too, so that the ceiling GraphQL is
measured against pays for the same authentication.

It runs before any GraphQL work: a request without a valid key gets 401 (and
an address that fails too often 429), and a key whose budget is spent gets 429
with ``Retry-After``, all as GraphQL-shaped JSON errors with ``extensions.code``.
Every request owes 1 point of its key's budget on arrival, so even requests
that never parse are limited: a request that runs pays it with its query cost
once validated (api/schema/limits.py), in one store round trip; one that ends
without running pays it here as it ends. A key whose last answer from the store
said it is short of a point is refused here without asking the store again.
GraphiQL's page (a GET without a query) opens without a key; the queries it
sends need one like any other client's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from api.services.budget import Charge, SharedBudget
from api.store.keys import KeyRing, bearer_token
from api.telemetry import context, metrics


def error_body(code: str, message: str) -> bytes:
    return json.dumps(
        {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    ).encode()


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyGate:
    def __init__(
        self,
        app: ASGIApp,
        keys: Callable[[], KeyRing],
        budget: SharedBudget,
        failures: SharedBudget,
        path: str = "/graphql",
        prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.keys = keys
        self.budget = budget
        self.failures = failures
        self.path = path
        # Further paths behind the same gate (routes an embedding program adds).
        self.prefixes = prefixes

    def _guards(self, path: str) -> bool:
        return path == self.path or any(path.startswith(prefix) for prefix in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guards(scope["path"]) or self._ide_page(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        principal = await self.keys().authenticate(token) if token else None
        if principal is None:
            # Failed attempts count against the caller's address, so keys can't be guessed fast.
            client = scope.get("client") or ("unknown", 0)
            if wait := (await self.failures.take(f"address:{client[0]}")).wait:
                # The address is not a label: it is unbounded, and personal data.
                metrics.recorder().rate_limited("failed-auth", None)
                await _answer(
                    send,
                    429,
                    error_body(
                        "RATE_LIMITED",
                        f"too many failed authentications from this address; retry after {wait} s",
                    ),
                    [(b"retry-after", str(wait).encode())],
                )
                return
            await _answer(
                send,
                401,
                error_body(
                    "UNAUTHENTICATED", "send a valid API key as `Authorization: Bearer <key>`"
                ),
                [(b"www-authenticate", b"Bearer")],
            )
            return
        # The key's name, never its secret, on every later line of the request.
        context.bind(key_name=principal.name)
        key = f"key:{principal.name}"
        if wait := self.budget.wait_known(key):
            metrics.recorder().rate_limited("per-key", principal.name)
            await self._too_many(send, wait)
            return
        charge = Charge(key)
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["charge"] = charge
        try:
            await self.app(scope, receive, send)
        finally:
            if not charge.paid:
                await self.budget.take(key, 1)

    def _ide_page(self, scope: Scope) -> bool:
        if scope["method"] != "GET" or scope["path"] != self.path:
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return "query" not in query

    @staticmethod
    async def _too_many(send: Send, wait: int) -> None:
        await _answer(
            send,
            429,
            error_body(
                "RATE_LIMITED", f"this key's query-cost budget is spent; retry after {wait} s"
            ),
            [(b"retry-after", str(wait).encode())],
        )
