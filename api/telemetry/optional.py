"""Traces are optional (extra ``otel``): whether they can start, and loading them.

``api.telemetry.traces`` imports OpenTelemetry, so it is imported here, only
when ``BRANCHPAY_OTEL_ENDPOINT`` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from api.settings import Settings
from api.telemetry.spans import TracingUnavailable

if TYPE_CHECKING:
    from api.telemetry.traces import Tracing

__all__ = ["TracingUnavailable", "check_tracing", "load_tracing"]


def load_tracing(settings: Settings) -> Tracing:
    """The process's tracing for ``settings.otel_endpoint``, not started yet.

    Raises :class:`TracingUnavailable` when the extra is missing or the endpoint
    is not an http(s) URL; ``branchpay serve`` checks that first with
    :func:`check_tracing`, before it starts anything.
    """
    return check_tracing(settings)(settings)


def check_tracing(settings: Settings) -> type[Tracing]:
    """The tracing class, once the extra is known to be installed and the endpoint sane."""
    try:
        from api.telemetry.traces import Tracing, traces_url
    except ImportError as error:
        raise TracingUnavailable(
            f"BRANCHPAY_OTEL_ENDPOINT is set, but OpenTelemetry is not installed ({error}): "
            "install branchpay with its extra `otel` (pip install 'branchpay[otel]'), "
            "or unset BRANCHPAY_OTEL_ENDPOINT"
        ) from None
    traces_url(settings.otel_endpoint or "")
    return Tracing
