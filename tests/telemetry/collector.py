"""A real OTLP/HTTP trace receiver on loopback: POST /v1/traces, protobuf decoded as sent.

It decodes each body with opentelemetry-proto's ``ExportTraceServiceRequest``,
the message every OTLP collector accepts, and keeps the spans in a flat form
the tests can search.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from providers.kit.loopback import LoopbackServer

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    attributes: dict[str, Any]
    status: str  # UNSET, OK, ERROR
    service: str
    scope: str  # the instrumentation scope: "branchpay", "strawberry", "...pymongo", ...


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, which) if which else None


@dataclass
class Collector:
    """Records every span it is sent."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def app(self) -> Starlette:
        async def traces(request: Request) -> Response:
            body = await request.body()
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            export = ExportTraceServiceRequest.FromString(body)
            received = [
                ReceivedSpan(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(),
                    kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    status=span.status.StatusCode.Name(span.status.code).removeprefix(
                        "STATUS_CODE_"
                    ),
                    service=next(
                        (
                            _value(a.value)
                            for a in resource_spans.resource.attributes
                            if a.key == "service.name"
                        ),
                        "",
                    ),
                    scope=scope_spans.scope.name,
                )
                for resource_spans in export.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]
            with self.lock:
                self.content_types.add(request.headers.get("content-type", ""))
                self.spans.extend(received)
            return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)

        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def wait_for(
        self, check: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if check(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"the collector got {sorted({s.name for s in self.received()})}")


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    server = LoopbackServer(collector.app()).start()
    collector.url = server.url
    yield collector
    server.stop()
