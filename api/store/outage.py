"""Which driver errors mean the store did not answer, as opposed to a fault of ours."""

from __future__ import annotations

import logging

from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError

from api.telemetry import context

log = logging.getLogger("branchpay.store")


def is_store_outage(error: BaseException | None) -> bool:
    """Whether the store did not answer: down, paused, unreachable or over the deadline.

    ConnectionFailure covers AutoReconnect, NetworkTimeout,
    ServerSelectionTimeoutError and WaitQueueTimeoutError; ExecutionTimeout is
    the server giving up at maxTimeMS; ``PyMongoError.timeout`` is PyMongo's
    own mark of any error caused by a timeout (the client-side deadline
    included). Other driver errors (a duplicate key, a bad query) are ours.
    An error raised ``from`` an outage is one too.
    """
    while error is not None:
        if isinstance(error, ConnectionFailure | ExecutionTimeout):
            return True
        if isinstance(error, PyMongoError) and error.timeout:
            return True
        error = error.__cause__
    return False


def report_store_outage(error: BaseException, where: object) -> str:
    """Log one warning line for a store outage; returns the errorId the client is given.

    The errorId is the request's id (a new one outside a request, e.g. a background job).

    No traceback: an outage is not a bug, and every request during one would
    print the same one. The driver's message names the store's address, which
    belongs in our logs but never in an answer.
    """
    error_id = context.error_id()
    summary = str(error).split(", Timeout:")[0][:200]
    log.warning(
        "store unavailable %s at %s: %s: %s", error_id, where, type(error).__name__, summary
    )
    return error_id
