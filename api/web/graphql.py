"""The GraphQL endpoint: Strawberry's ASGI view with our context, WebSocket login and errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from api.schema.context import Context, Services
from api.schema.errors import shape
from api.security.keys import bearer_token


class GraphQLApp(GraphQL[Context, None]):
    def __init__(
        self, schema: strawberry.Schema, services: Callable[[], Services], **options: Any
    ) -> None:
        super().__init__(schema, **options)
        self._services = services

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
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED"})
        context.principal = principal
        acknowledged: UnsetType = UNSET
        return acknowledged

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        # Parse errors end the operation before ErrorShaping sees them.
        if result.errors:
            result.errors = [
                error if error.extensions and "code" in error.extensions else shape(error)
                for error in result.errors
            ]
        return await super().process_result(request, result)
