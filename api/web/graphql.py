"""The GraphQL endpoint: Strawberry's ASGI view with our context, WebSocket login and errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from api.schema.context import Context, Services
from api.schema.errors import shaped
from api.security.keys import bearer_token
from api.security.ratelimit import RateLimiter
from api.settings import Settings
from api.web.websocket import GuardedSocket, GuardedTransportWS, OpenSockets


class GraphQLApp(GraphQL[Context, None]):
    websocket_adapter_class = GuardedSocket
    graphql_transport_ws_handler_class = GuardedTransportWS

    def __init__(
        self,
        schema: strawberry.Schema,
        services: Callable[[], Services],
        *,
        settings: Settings,
        failures: RateLimiter,
        sockets: OpenSockets,
        **options: Any,
    ) -> None:
        super().__init__(
            schema,
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
            connection_init_wait_timeout=timedelta(
                seconds=settings.ws_connection_init_timeout_seconds
            ),
            max_subscriptions_per_connection=settings.ws_max_operations_per_connection,
            **options,
        )
        self._services = services
        self.settings = settings
        # Failed logins by address, shared with the HTTP gate; the open sockets by key.
        self.failures = failures
        self.sockets = sockets

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        # HTTP requests were authenticated by ApiKeyGate; WebSockets are on connect.
        principal = request.scope.get("state", {}).get("principal")
        return Context(request=request, services=self._services(), principal=principal)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        header = params.get("Authorization") or params.get("authorization")
        token = bearer_token(header if isinstance(header, str) else None)
        token = token or bearer_token(context.request.headers.get("authorization"))
        principal = await context.store.keys.authenticate(token) if token else None
        if principal is None:
            client = context.request.scope.get("client") or ("unknown", 0)
            self.failures.take(f"address:{client[0]}")
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED"})
        context.principal = principal
        context.token = token
        acknowledged: UnsetType = UNSET
        return acknowledged

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        # Parse errors end the operation before ErrorShaping sees them.
        if result.errors:
            result.errors = shaped(result.errors)
        return await super().process_result(request, result)

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        """A refused request keeps its HTTP meaning: 429 with Retry-After when over budget."""
        response = super().create_response(response_data, sub_response)
        if isinstance(response_data, dict) and response_data.get("data") is None:
            errors: list[Any] = list(response_data.get("errors") or ())
            for error in errors:
                extensions: dict[str, Any] = dict(error.get("extensions") or {})
                if extensions.get("code") == "RATE_LIMITED":
                    response.status_code = 429
                    response.headers["retry-after"] = str(extensions.get("retryAfter", 1))
                    break
        return response
