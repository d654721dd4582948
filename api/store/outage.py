"""Which driver errors mean the store did not answer, as opposed to a fault of ours."""

from __future__ import annotations

from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError


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
