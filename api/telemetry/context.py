"""The current request's id and log fields, carried in context variables.

The request-id middleware (api/web/request_id.py) starts a request's context;
the layers below add what they learn (the key's name, the operation, the
branch, the order or payment id) with ``bind``. Every log line of the request
carries them, the ``errorId`` of an INTERNAL error is the request id, and the
root span of a trace is tagged with it. Only names and ids are bound here:
never a secret, a phone number or a customer's name.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from typing import Any

import structlog

_REQUEST_ID: ContextVar[str | None] = ContextVar("branchpay_request_id", default=None)

# A caller's X-Request-ID is kept when it is sane: 1 to 128 visible ASCII characters
# without spaces or quotes, so it cannot break a log line or a header.
_SANE = re.compile(r"[A-Za-z0-9._:@/+=\-]{1,128}")


def sane_request_id(value: str | None) -> str | None:
    """The caller's request id when it is safe to log and echo, else None."""
    if value is None or _SANE.fullmatch(value) is None:
        return None
    return value


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id() -> str | None:
    """The id of the request being served, or None outside one."""
    return _REQUEST_ID.get()


def start_request(request_id: str) -> None:
    """A new request's context: its id, and no field of an earlier one."""
    structlog.contextvars.clear_contextvars()
    _REQUEST_ID.set(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)


def bind(**fields: Any) -> None:
    """Add fields to every later log line of this request (None values are skipped).

    Outside a request (a background job's loop) nothing is bound: the fields
    would stay on the task's later lines, which are about other orders.
    """
    if _REQUEST_ID.get() is None:
        return
    structlog.contextvars.bind_contextvars(
        **{name: value for name, value in fields.items() if value is not None}
    )


def error_id() -> str:
    """The id an error report quotes: the request's id in a request, else a new one."""
    return _REQUEST_ID.get() or new_request_id()
