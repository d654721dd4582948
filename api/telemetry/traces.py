"""OpenTelemetry traces of one process, sent over OTLP/HTTP (extra ``otel``, docs/operations.md).

Imported only when ``BRANCHPAY_OTEL_ENDPOINT`` is set (through
:func:`api.telemetry.spans.load_tracing`); without it nothing imports
OpenTelemetry. :class:`Tracing` owns the tracer provider (resource
``service.name``, a batch processor, the OTLP/HTTP exporter). ``start``
instruments PyMongo (a span per store command) and httpx (a span per gateway
call and webhook try) and routes :mod:`api.telemetry.spans` here; ``stop``
undoes that and flushes what is still queued. The instrumentations patch
process-wide state, so one app per process traces (as ``branchpay serve`` runs).

A store command or HTTP call made outside any span of ours (the background
loops poll the store several times a second) starts no trace: only the
requests, GraphQL operations, notifications and webhook deliveries do, with
their calls inside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor, RequestInfo
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util.types import Attributes

from api.settings import Settings
from api.telemetry import spans

__all__ = ["Tracing", "traces_url"]

TRACES_PATH = "/v1/traces"
# An export, retries included, gives up after this: a collector that is down delays
# a shutdown's flush by this much at most (the spans still queued are then lost).
EXPORT_SECONDS = 4.0
# The URL attributes the httpx instrumentation records (old and stable conventions).
_URL_ATTRIBUTES = ("http.url", "url.full")


def traces_url(endpoint: str) -> str:
    """Where spans are POSTed: ``endpoint`` as OTEL_EXPORTER_OTLP_ENDPOINT means it.

    A base URL (``http://collector:4318``) gets ``/v1/traces`` appended; a URL
    that already ends with it is used as it is.
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise spans.TracingUnavailable(
            f"BRANCHPAY_OTEL_ENDPOINT must be an http(s) URL such as http://127.0.0.1:4318, "
            f"not {endpoint!r}"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(TRACES_PATH):
        path += TRACES_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class _NoBareCalls(Sampler):
    """Drops a client span (store command, HTTP call) that has no parent; samples the rest."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "NoBareCalls"


async def _without_query(span: Span, request: RequestInfo) -> None:
    """A URL's query may carry a signature or a partner's token: keep scheme, host and path."""
    recorded = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        url = recorded.get(name)
        if isinstance(url, str):
            parts = urlsplit(url)
            span.set_attribute(name, urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


class Tracing:
    """The process's tracer provider, its exporter, and the instrumented libraries."""

    def __init__(self, settings: Settings) -> None:
        assert settings.otel_endpoint is not None
        self.provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: settings.otel_service_name}),
            sampler=ParentBased(root=_NoBareCalls()),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(
                    endpoint=traces_url(settings.otel_endpoint), timeout=EXPORT_SECONDS
                )
            )
        )
        self.tracer = self.provider.get_tracer("branchpay")
        self._pymongo = PymongoInstrumentor()
        self._httpx = HTTPXClientInstrumentor()

    def start(self) -> None:
        """Instrument the libraries; before the store client and HTTP clients are made."""
        self._pymongo.instrument(tracer_provider=self.provider)
        self._httpx.instrument(tracer_provider=self.provider, async_request_hook=_without_query)
        spans.record_with(self)

    def stop(self) -> None:
        """Stop tracing and send what is still queued (the provider's shutdown flushes)."""
        spans.record_with(None)
        self._httpx.uninstrument()
        self._pymongo.uninstrument()
        self.provider.shutdown()

    def span(
        self, name: str, attributes: Mapping[str, spans.Attribute]
    ) -> AbstractContextManager[object]:
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def note(self, attributes: Mapping[str, spans.Attribute]) -> None:
        trace.get_current_span().set_attributes(attributes)
