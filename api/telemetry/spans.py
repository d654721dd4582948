"""Spans of branchpay's own work (a notification, a webhook delivery), when traces are on.

Traces are optional (extra ``otel``, docs/operations.md "Traces"). Off, this
module imports nothing of OpenTelemetry: :func:`span` hands out one shared
null context manager and :func:`note` returns at once, so a traced path costs
a global read. On, ``api.telemetry.traces`` installs its recorder here with
:func:`record_with`, and the same calls open real spans. ``api.telemetry.optional``
loads it.

Attributes are recorded as ``branchpay.<name>``: names and ids only, as in
the logs: never a secret, a URL, a phone number or a customer's name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

Attribute = str | int | float | bool


class Recorder(Protocol):
    def span(
        self, name: str, attributes: Mapping[str, Attribute]
    ) -> AbstractContextManager[object]: ...

    def note(self, attributes: Mapping[str, Attribute]) -> None: ...


class TracingUnavailable(RuntimeError):
    """Traces cannot start: the extra ``otel`` is missing, or the endpoint is no http(s) URL."""


_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
_recorder: Recorder | None = None


def record_with(recorder: Recorder | None) -> None:
    """Send spans to ``recorder`` from now on; None: record nothing."""
    global _recorder
    _recorder = recorder


def span(name: str, **attributes: Attribute | None) -> AbstractContextManager[object]:
    """A span around a block, child of the current one.

    Each attribute is recorded as ``branchpay.<name>``; None ones are left out.
    An exception leaving the block is recorded on the span and marks it failed.
    """
    if _recorder is None:
        return _NO_SPAN
    return _recorder.span(name, _present(attributes))


def note(**attributes: Attribute | None) -> None:
    """Add attributes to the current span, e.g. what a notification came to."""
    if _recorder is not None:
        _recorder.note(_present(attributes))


def _present(attributes: Mapping[str, Attribute | None]) -> dict[str, Attribute]:
    return {f"branchpay.{name}": value for name, value in attributes.items() if value is not None}
