"""OperationSpans: a span per operation that keeps the fast path on and records no literal.

A real SDK tracer provider with its in-memory exporter records the spans; the
schemas are the fast-path tests' own (tests/schema/test_execution.py) and a
small one whose resolver makes a call of its own, as a store command would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import strawberry
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from api.schema.errors import ApiError, ErrorCode, ErrorShaping
from api.schema.tracing import OperationSpans
from tests.schema.test_execution import Query as Items
from tests.schema.test_execution import _answer, _CountingContext


def _recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _traced(provider: TracerProvider, query: type, context_class: type) -> strawberry.Schema:
    return strawberry.Schema(
        query=query,
        execution_context_class=context_class,
        extensions=[lambda: OperationSpans(tracer_provider=provider), ErrorShaping],
    )


def test_the_fast_path_stays_on_and_answers_as_the_stock_execution() -> None:
    provider, exporter = _recording()
    query = "query Items { items { id name count lines { sku } firstLine { sku } later } }"
    _CountingContext.calls = []
    fast = _answer(_traced(provider, Items, _CountingContext), query)
    # Only the root field and the resolvers went the long way (as without the extension).
    assert sorted(_CountingContext.calls) == ["items"] + ["later"] * 5
    stock = _answer(_traced(provider, Items, StrawberryGraphQLCoreExecutionContext), query)
    assert fast == stock and not fast[1]
    names = [span.name for span in exporter.get_finished_spans()]
    # One operation span each, with its parsing and validation; no span per resolver.
    assert sorted(names) == sorted(["query Items", "GraphQL Parsing", "GraphQL Validation"] * 2)


@strawberry.type
class Lookup:
    @strawberry.field
    async def customer(self, info: strawberry.Info, phone: str, times: int) -> str:
        tracer: trace.Tracer = info.context["tracer"]
        with tracer.start_as_current_span("store command"):
            await asyncio.sleep(0)
        if phone == "refused":
            raise ApiError(ErrorCode.BAD_USER_INPUT, "refused")
        return f"found {times}"


def _spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def _run(provider: TracerProvider, document: str) -> Any:
    schema = _traced(provider, Lookup, StrawberryGraphQLCoreExecutionContext)
    tracer = provider.get_tracer("test")
    return asyncio.run(schema.execute(document, context_value={"tracer": tracer}))


def test_calls_inside_are_children_and_literals_are_not_recorded() -> None:
    provider, exporter = _recording()
    result = _run(provider, '{ customer(phone: "13800138000", times: 3) }')
    assert result.data == {"customer": "found 3"}
    spans = _spans(exporter)
    operation = spans["query"]  # anonymous: named by its type
    assert operation.attributes is not None
    assert operation.attributes["graphql.operation.type"] == "query"
    assert "graphql.operation.name" not in operation.attributes
    assert operation.attributes["query"] == '{\n  customer(phone: "?", times: 0)\n}'
    assert operation.status.status_code is StatusCode.UNSET
    inside = spans["store command"]
    assert inside.parent is not None and inside.parent.span_id == operation.context.span_id
    assert "13800138000" not in repr([dict(s.attributes or {}) for s in spans.values()])


def test_an_operation_with_errors_is_marked_failed_with_their_codes() -> None:
    provider, exporter = _recording()
    result = _run(provider, 'query Refused { customer(phone: "refused", times: 1) }')
    assert [e.extensions["code"] for e in result.errors] == ["BAD_USER_INPUT"]
    operation = _spans(exporter)["query Refused"]
    assert operation.status.status_code is StatusCode.ERROR
    assert operation.status.description == "BAD_USER_INPUT"
    invalid = _run(provider, "query Invalid { nosuch }")
    assert invalid.errors
    assert _spans(exporter)["query Invalid"].status.status_code is StatusCode.ERROR
