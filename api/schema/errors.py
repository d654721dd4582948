"""Every error a GraphQL client can get, and how errors are shaped before they leave.

Two families (docs/api.md, Errors):

- ``userErrors`` in a mutation payload, ``UserError { field message code }``:
  the request was understood but refused; nothing was written. The codes are
  the ``UserErrorCode`` enum in api/domain/problems.py, the only list of them
  (docs/api.md is tested against it). An order, payment or branch the API key
  may not see is reported exactly like one that does not exist.
- top-level ``errors`` with ``extensions.code``::

      BAD_USER_INPUT    malformed query, variables, ID or cursor; a limit exceeded
      UNAUTHENTICATED   no or unknown API key
      FORBIDDEN         the key's role may not do this
      NOT_FOUND         the addressed resource does not exist (or is not yours)
      RATE_LIMITED      the key's query-cost budget is spent; retry after the Retry-After seconds
      STORE_UNAVAILABLE the store did not answer in time (HTTP 503, Retry-After, errorId);
                        also sent, without ending it, to an orderEvents subscription,
                        which resumes when the store is back
      SUBSCRIBER_TOO_SLOW an orderEvents subscription fell ws_subscription_queue_events
                        changes behind (its client reads too slowly) and was ended
      INTERNAL          our fault; the message carries only an ``errorId`` that is logged
                        (the request id: X-Request-ID of the answer, request_id of its log lines)

No stack trace or internal message ever reaches a client: a store outage is
logged as one warning line with its errorId, an internal error with its
traceback.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types import StreamExecutionResult
from strawberry.types.execution import ExecutionResult as StrawberryExecutionResult

from api.store.outage import is_store_outage, report_store_outage
from api.telemetry import context

log = logging.getLogger("branchpay.errors")


class ErrorCode(enum.StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
    INTERNAL = "INTERNAL"


class ApiError(Exception):
    """An error meant for the client: its message is safe to show."""

    def __init__(self, code: ErrorCode, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # More for the client beside the code, e.g. RATE_LIMITED's retryAfter seconds.
        self.extensions = extensions


def bad_input(message: str) -> ApiError:
    return ApiError(ErrorCode.BAD_USER_INPUT, message)


def store_unavailable_message(error_id: str) -> str:
    return f"the store is unavailable; retry later (errorId {error_id})"


def internal_message(error_id: str) -> str:
    return f"internal error; quote errorId {error_id} when reporting it"


def error_document(code: ErrorCode, message: str, error_id: str) -> dict[str, Any]:
    """A GraphQL response body with one top-level error, for answers made outside GraphQL."""
    return {
        "data": None,
        "errors": [{"message": message, "extensions": {"code": code.value, "errorId": error_id}}],
    }


def shape(error: GraphQLError) -> GraphQLError:
    """The error as the client sees it: a safe message and ``extensions.code``."""
    original = error.original_error
    extra: dict[str, Any]
    if isinstance(original, ApiError):
        message, code, extra = original.message, original.code, original.extensions
    elif original is None or isinstance(original, GraphQLError):
        # Syntax, validation and variable coercion errors: graphql-core's own
        # messages, which only repeat what the client sent.
        message, code, extra = error.message, ErrorCode.BAD_USER_INPUT, {}
    elif is_store_outage(original):
        error_id = report_store_outage(original, error.path)
        message = store_unavailable_message(error_id)
        code, extra = ErrorCode.STORE_UNAVAILABLE, {"errorId": error_id}
    else:
        error_id = context.error_id()
        log.error("internal error %s at %s", error_id, error.path, exc_info=original)
        message = internal_message(error_id)
        code, extra = ErrorCode.INTERNAL, {"errorId": error_id}
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={"code": code.value, **extra},
    )


def shaped(errors: Sequence[GraphQLError]) -> list[GraphQLError]:
    """The errors with a code: those without one are shaped, those with one kept as they are."""
    return [
        error if error.extensions and "code" in error.extensions else shape(error)
        for error in errors
    ]


class ErrorShaping(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult) and result.errors:
            result.errors = shaped(result.errors)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        # Results sent over WebSocket (each subscription event, and the answer
        # to a query or mutation) leave before on_operation ends: shape them here.
        # Incremental-delivery frames are not used by this schema.
        if isinstance(result, StrawberryExecutionResult) and result.errors:
            result.errors = shaped(result.errors)
        yield
