"""The GraphQL endpoint: Strawberry's ASGI view with our context, WebSocket login and errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from api.schema.context import Context, Services
from api.schema.errors import ErrorCode, shape
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

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        # A store outage is not the client's fault and passes: 503 with
        # Retry-After tells clients and proxies to come back, not to give up.
        responses = response_data if isinstance(response_data, list) else [response_data]
        codes = {
            error["extensions"].get("code")
            for data in responses
            for error in data.get("errors") or []
            if isinstance(error, dict) and isinstance(error.get("extensions"), dict)
        }
        if response.status_code == 200 and ErrorCode.STORE_UNAVAILABLE in codes:
            response.status_code = 503
            retry_after = self._services().settings.store_retry_after_seconds
            response.headers["retry-after"] = str(retry_after)
        return response
