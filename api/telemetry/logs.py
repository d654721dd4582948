"""One log format for every line the process writes (docs/operations.md, Logs).

structlog renders the lines of the standard ``logging`` loggers too (ours,
``branchpay.*``, and uvicorn's and PyMongo's) through one ProcessorFormatter
on the root handler: a JSON object a line by default, readable lines with
``log_format=console``. Every line has a UTC ISO timestamp, the level, the
logger, the event, and the fields bound to the current request
(api/telemetry/context.py). Tracebacks are plain text: the rich ones structlog
would pick by default print local variables, which may hold a customer's
number or a key.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import Processor

from api.settings import Settings

# Extra fields a standard-logging call may give (``extra={...}``) that become
# fields of its line: the request line's (api/web/request_id.py).
FIELDS = ("method", "path", "status", "duration_ms", "transport")

# Loggers kept at WARNING or above whatever log_level says: PyMongo's command
# and connection logs print documents (customer data) at DEBUG, and httpx logs
# every URL it calls at INFO (a webhook URL's query may hold its token).
QUIET = ("pymongo", "httpx", "httpcore")

# uvicorn's loggers as ``uvicorn.Config(log_config=...)`` should set them: no
# handler of their own, so their lines reach the root handler in our format;
# the access log is replaced by the request line, which carries the request id.
UVICORN_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        "uvicorn": {"handlers": [], "propagate": True},
        "uvicorn.error": {"handlers": [], "propagate": True},
        "uvicorn.access": {"handlers": [], "propagate": False},
    },
}

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _renderer(log_format: str) -> list[Processor]:
    if log_format == "console":
        return [
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]


def configure_logging(settings: Settings) -> None:
    """Route every logger to one stderr handler in the configured format (safe to call again)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(FIELDS)],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderer(settings.log_format),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    level = logging.getLevelNamesMapping()[settings.log_level]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    for name, wanted in UVICORN_LOG_CONFIG["loggers"].items():
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = wanted["propagate"]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
