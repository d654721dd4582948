"""The GraphQL endpoint: Strawberry's ASGI view with our context, WebSocket login and errors.

A request that is not one GraphQL operation we can read is answered like every
other refusal, as JSON with a code and never as plain text::

    {"data": null, "errors": [{"message": "...", "extensions": {"code": "BAD_USER_INPUT"}}]}

with these HTTP statuses (docs/api.md):

- 400: the body is not JSON, not UTF-8, nested too deeply, not one JSON object
  (a string, ``null``, a number; an array, since batching is not supported),
  ``query`` missing or not a string, ``variables`` or ``extensions`` not an
  object, ``operationName`` not a string, a persisted query without ``query``
  (not supported), no operation of that name, a subscription over HTTP
  (subscriptions are served over WebSocket), repeated or malformed GET parameters;
- 405: a method other than GET and POST, or a mutation over GET (``Allow`` says
  which methods would do);
- 415: a POST whose content type is not ``application/json``.

Requests without a valid key never get here: ApiKeyGate answers 401 before
anything of the request is read. A GET without ``query`` passes the gate (it
may be a browser opening GraphiQL), so it is refused here before its other
parameters are parsed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import strawberry
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData, GraphQLRequestProtocol
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from api.schema.context import Context, Services
from api.schema.errors import ErrorCode, shaped
from api.services.budget import SharedBudget
from api.settings import Settings
from api.store.keys import bearer_token
from api.telemetry import context as log_context
from api.web.websocket import GuardedSocket, GuardedTransportWS, OpenSockets

# The members of a GraphQL request, over POST (JSON) and GET (query parameters).
REQUEST_MEMBERS = ("query", "variables", "operationName", "extensions")


class RequestRefused(HTTPException):
    """A request that is not one GraphQL operation we can read; ``allow`` fills Allow on a 405."""

    def __init__(self, status_code: int, reason: str, allow: str | None = None) -> None:
        super().__init__(status_code, reason)
        self.allow = allow


class GraphQLApp(GraphQL[Context, None]):
    websocket_adapter_class = GuardedSocket
    graphql_transport_ws_handler_class = GuardedTransportWS

    def __init__(
        self,
        schema: strawberry.Schema,
        services: Callable[[], Services],
        *,
        settings: Settings,
        failures: SharedBudget,
        sockets: OpenSockets,
        ide_page: Callable[[Request], Awaitable[Response]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if ide_page is not None else None,
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
        self.ide_page = ide_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope, receive=receive))
        except HTTPException as refused:
            # Strawberry's own refusals (an unknown operation name, a mutation
            # over GET) are HTTPExceptions too, answered in plain text by default.
            response = self._refusal(refused)
        await response(scope, receive, send)

    async def render_graphql_ide(self, request: Request) -> Response:
        # Ours (api/web/graphiql.py), served from this service; Strawberry's loads a CDN.
        assert self.ide_page is not None
        return await self.ide_page(request)

    def _refusal(self, refused: HTTPException) -> Response:
        status, reason = refused.status_code, refused.reason
        headers: dict[str, str] = {}
        if isinstance(refused, RequestRefused) and refused.allow:
            headers["allow"] = refused.allow
        elif status == 405:  # Strawberry's: a method other than GET and POST
            headers["allow"] = "GET, POST"
        # 404: GraphiQL's page asked for while it is switched off.
        code = ErrorCode.NOT_FOUND if status == 404 else ErrorCode.BAD_USER_INPUT
        body = {"data": None, "errors": [{"message": reason, "extensions": {"code": code.value}}]}
        # encode_json escapes what is not ASCII, so a lone surrogate repeated from
        # the request cannot break the answer (Starlette's JSONResponse would).
        return Response(
            self.encode_json(body),
            status_code=status,
            headers=headers,
            media_type="application/json",
        )

    def parse_json(self, data: str | bytes) -> Any:
        return self._json(data, "the body")

    def _json(self, data: str | bytes, what: str) -> Any:
        # decode_json stays Strawberry's: the WebSocket handler reads messages
        # with it and answers these cases with close codes of its own.
        try:
            return self.decode_json(data)
        except json.JSONDecodeError as error:
            reason = f"{error.msg} at character {error.pos}"
        except RecursionError:  # json's C scanner gives up near 1,000 levels
            reason = "it is nested too deeply"
        except UnicodeDecodeError:
            reason = "it is not UTF-8"
        raise RequestRefused(400, f"{what} cannot be read as JSON: {reason}")

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        transport = self._get_stream_transport_from_headers(request.headers)
        protocol: GraphQLRequestProtocol = transport.protocol if transport else "http"
        if request.method == "GET":
            data: object = self._get_parameters(request.query_params)
        else:
            content_type = (request.content_type or "").split(";")[0].strip().lower()
            if content_type != "application/json":
                shown = f"{content_type[:60]!r}" if content_type else "none"
                raise RequestRefused(
                    415,
                    f"send the operation as JSON with Content-Type: application/json (got {shown})",
                )
            data = self.parse_json(await request.get_body())
        return self._operation(data, protocol)

    def _get_parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A GET's operation: its query parameters, ``variables`` and ``extensions`` as JSON."""
        multi = getattr(params, "multi_items", None)
        items: list[tuple[str, str]] = list(multi() if multi else params.items())
        names = [name for name, _ in items if name in REQUEST_MEMBERS]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise RequestRefused(400, f"give each parameter once: {', '.join(repeated)} repeated")
        values: dict[str, Any] = {name: value for name, value in items if name in REQUEST_MEMBERS}
        if not values.get("query"):
            # Checked before anything is parsed: this GET may come without a key.
            raise RequestRefused(400, "no GraphQL query: send it in the `query` parameter")
        for name in ("variables", "extensions"):
            if name in values:
                values[name] = self._json(values[name], f"`{name}`") if values[name] else None
        return values

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        # Strawberry's, but a subscription is refused over HTTP: it would run
        # as a query and fail on its stream (subscriptions are WebSocket only).
        allowed = {OperationType.QUERY}
        if request_adapter.method == "POST":
            allowed.add(OperationType.MUTATION)
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as error:
            name = error.operation_name
            raise RequestRefused(
                400,
                "the document must hold one operation, or name one in `operationName`"
                if name is None
                else f"the document holds no operation named {name[:100]!r}",
            ) from error
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.MUTATION:
                raise RequestRefused(405, "send a mutation with POST", allow="POST") from error
            raise RequestRefused(
                400, "subscriptions are served over WebSocket (graphql-transport-ws)"
            ) from error
        except MissingQueryError as error:
            raise RequestRefused(400, "no GraphQL query: send the document in `query`") from error

    @staticmethod
    def _operation(data: object, protocol: GraphQLRequestProtocol) -> GraphQLRequestData:
        if isinstance(data, list):
            raise RequestRefused(
                400, "batching is not supported: send one operation per request, as a JSON object"
            )
        if not isinstance(data, dict):
            raise RequestRefused(
                400, 'the body must be one JSON object such as {"query": "{ branches { code } }"}'
            )
        query, variables = data.get("query"), data.get("variables")
        operation_name, extensions = data.get("operationName"), data.get("extensions")
        if extensions is not None and not isinstance(extensions, dict):
            raise RequestRefused(400, "`extensions` must be a JSON object")
        if query is None:
            if extensions and "persistedQuery" in extensions:
                raise RequestRefused(
                    400, "persisted queries are not supported: send the document in `query`"
                )
            raise RequestRefused(400, "no GraphQL query: send the document in `query`")
        if not isinstance(query, str):
            raise RequestRefused(400, "`query` must be a string holding the GraphQL document")
        if variables is not None and not isinstance(variables, dict):
            raise RequestRefused(400, "`variables` must be a JSON object of names and values")
        if operation_name is not None and not isinstance(operation_name, str):
            raise RequestRefused(400, "`operationName` must be a string")
        return GraphQLRequestData(
            query=query,
            variables=variables,
            operation_name=operation_name,
            extensions=extensions,
            protocol=protocol,
        )

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
            await self.failures.take(f"address:{client[0]}")
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED"})
        context.principal = principal
        context.token = token
        # The connection's lines, and those of every operation on it, name its key.
        log_context.bind(key_name=principal.name)
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
        """A refused request keeps its HTTP meaning: 429 with Retry-After when over budget.

        A store outage is not the client's fault and passes: 503 with Retry-After
        tells clients and proxies to come back, not to give up.
        """
        response = super().create_response(response_data, sub_response)
        if isinstance(response_data, dict) and response_data.get("data") is None:
            errors: list[Any] = list(response_data.get("errors") or ())
            for error in errors:
                extensions: dict[str, Any] = dict(error.get("extensions") or {})
                if extensions.get("code") == "RATE_LIMITED":
                    response.status_code = 429
                    response.headers["retry-after"] = str(extensions.get("retryAfter", 1))
                    break
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
