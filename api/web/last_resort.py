"""The outermost middleware: an exception that escapes the app is answered in JSON, with a code.

Starlette's own last resort answers ``500 text/plain`` ("Internal Server
Error"), without a code or an errorId. This one sits outside every other
middleware (the API-key gate reads the store before GraphQL runs, so a store
outage surfaces there as an exception) and answers like a GraphQL error:

- a store outage (api/schema/errors.py ``is_store_outage``): HTTP 503,
  ``Retry-After``, code STORE_UNAVAILABLE, logged as one warning line;
- anything else: HTTP 500, code INTERNAL, logged with its traceback.

Both carry an ``errorId`` that is in the log, and never the exception's text; it is the
request id (api/web/request_id.py), so the lines of the request are found by it.
When the response has already started, nothing can be answered any more: the
error is logged and the connection is left to the server to close.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schema.errors import (
    ErrorCode,
    error_document,
    internal_message,
    store_unavailable_message,
)
from api.store.outage import is_store_outage, report_store_outage
from api.telemetry import context

log = logging.getLogger("branchpay.errors")


class LastResort:
    """Answers JSON 500 INTERNAL (or 503 STORE_UNAVAILABLE) for what escapes ``app``."""

    def __init__(self, app: ASGIApp, retry_after_seconds: int) -> None:
        self.app = app
        self.retry_after = retry_after_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as error:  # the last resort: nothing is let through as plain text
            where = f"{scope.get('method', '')} {scope.get('path', '')}"
            headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
            if is_store_outage(error):
                error_id = report_store_outage(error, where)
                status, code = 503, ErrorCode.STORE_UNAVAILABLE
                message = store_unavailable_message(error_id)
                headers.append((b"retry-after", str(self.retry_after).encode()))
            else:
                error_id = context.error_id()
                log.error("internal error %s at %s", error_id, where, exc_info=error)
                status, code, message = 500, ErrorCode.INTERNAL, internal_message(error_id)
            if started:
                log.warning("error %s came after the response started; the answer is cut", error_id)
                return
            body = json.dumps(error_document(code, message, error_id)).encode()
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
