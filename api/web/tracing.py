"""The root span of each HTTP request, tagged with the request id (only when traces are on).

Added by the app when ``BRANCHPAY_OTEL_ENDPOINT`` is set; this module imports
OpenTelemetry, so nothing imports it otherwise. Every request starts a trace
of its own: a caller's ``traceparent`` is not followed (partners and payment
platforms are outside our tracing). The span is named ``METHOD /route`` after
the route that served it (``POST /notify/{provider}/{branch}``), and carries
the request id as ``branchpay.request_id``: the id the request-id middleware
outside it (api/web/request_id.py) gave the request, which the response's
``X-Request-ID`` returns. The health probes and the metrics scrape are not
traced.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.telemetry.context import request_id

REQUEST_ID = "branchpay.request_id"
# Probes and scrapes come every few seconds and would bury the requests worth a trace.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestSpans:
    """A SERVER span around each HTTP request; WebSockets are left to their operations' spans."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        current = request_id()
        if current is not None:
            attributes[REQUEST_ID] = current
        with self.tracer.start_as_current_span(
            method, context=Context(), kind=SpanKind.SERVER, attributes=attributes
        ) as span:

            async def answer(message: Message) -> None:
                if message["type"] == "http.response.start":
                    _answered(span, message)
                await send(message)

            try:
                await self.app(scope, receive, answer)
            finally:
                route = scope.get("route")
                if isinstance(route, Route):
                    span.update_name(f"{method} {route.path}")
                    span.set_attribute("http.route", route.path)


def _answered(span: Span, message: Message) -> None:
    status: int = message["status"]
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
