"""The outermost middleware: every request gets an id, returned to the caller and in every log line.

The id is the caller's ``X-Request-ID`` when it is sane
(api/telemetry/context.py ``sane_request_id``), else a new one. It starts the
request's log context, goes back in the ``X-Request-ID`` header of every HTTP
response (the LastResort's and the gate's refusals too, which is why this
middleware sits outside them), and is the ``errorId`` of an INTERNAL error.
Each HTTP request ends with one INFO line (logger ``branchpay.requests``):
method, path (never the query string), status and duration, with the fields
the layers below bound (key name, operation, branch, order or payment id);
it replaces uvicorn's access log, which knows no request id. A WebSocket
gets an id per connection, sent in the handshake's answer, bound to the lines
of that connection, and a line when it ends.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.telemetry import context

HEADER = b"x-request-id"
# A path is the caller's text: a long or unprintable one is cut or escaped.
MAX_PATH_CHARS = 200

log = logging.getLogger("branchpay.requests")


def _shown_path(path: str) -> str:
    path = path[:MAX_PATH_CHARS]
    return path if path.isprintable() else path.encode("unicode_escape").decode("ascii")


class RequestId:
    """Gives each HTTP request and WebSocket connection an id and logs its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        request_id = context.sane_request_id(given.decode("latin-1") if given else None)
        request_id = request_id or context.new_request_id()
        context.start_request(request_id)
        header = (HEADER, request_id.encode("ascii"))
        status: int | None = None

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.accept"):
                kept = [h for h in message.get("headers", ()) if h[0].lower() != HEADER]
                message = {**message, "headers": [*kept, header]}
                status = message.get("status")
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, tagged)
        finally:
            fields = {
                "transport": scope["type"],
                "path": _shown_path(scope["path"]),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if scope["type"] == "http":
                fields |= {"method": scope["method"], "status": status}
            log.info("request" if scope["type"] == "http" else "websocket closed", extra=fields)
