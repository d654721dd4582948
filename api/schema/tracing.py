"""A span per GraphQL operation: Strawberry's OpenTelemetry extension, without resolver spans.

On the schema only when traces are on (``build_schema(tracing=...)``); this
module imports OpenTelemetry, so nothing imports it otherwise.

Two changes to Strawberry's extension, each for a reason:

- No span per resolver. Strawberry's ``resolve`` hook records every
  resolver's arguments (``createOrder``'s input holds the customer's name and
  phone number), and a schema extension with ``resolve`` is a resolve
  middleware, which switches the fast path off (api/schema/execution.py). The
  store commands and gateway calls of the operation are its children instead.
- The operation span is the current span while the operation runs (that is
  what makes those calls its children), is named as OpenTelemetry's GraphQL
  conventions say (``mutation createOrder``), carries
  ``graphql.operation.type`` and ``graphql.operation.name``, and its ``query``
  attribute is the document with every string and number literal replaced
  (``"?"``, ``0``): a literal may be a phone number. An operation with errors
  is marked failed, described by their ``extensions.code`` values.

Parsing and validation keep Strawberry's spans, children of the operation.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from graphql import (
    DocumentNode,
    FloatValueNode,
    IntValueNode,
    StringValueNode,
    Visitor,
    print_ast,
    visit,
)
from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from strawberry.extensions import LifecycleStep, SchemaExtension
from strawberry.extensions.tracing import OpenTelemetryExtension

__all__ = ["OperationSpans"]


class _Literals(Visitor):
    """Replaces string and number literals, the values a caller may have written inline."""

    def enter_string_value(self, node: StringValueNode, *_: Any) -> StringValueNode:
        return StringValueNode(value="?")

    def enter_int_value(self, node: IntValueNode, *_: Any) -> IntValueNode:
        return IntValueNode(value="0")

    def enter_float_value(self, node: FloatValueNode, *_: Any) -> IntValueNode:
        return IntValueNode(value="0")


def without_literals(document: DocumentNode) -> str:
    return print_ast(visit(document, _Literals()))


class OperationSpans(OpenTelemetryExtension):
    # Strawberry's span per resolver is left out (see the module's docstring).
    resolve = SchemaExtension.resolve  # type: ignore[assignment]

    def on_operation(self) -> Generator[None, None, None]:
        span = self._tracer.start_span(
            "GraphQL operation", kind=SpanKind.SERVER, attributes={"component": "graphql"}
        )
        self._span_holder[LifecycleStep.OPERATION] = span
        token = context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            context.detach(token)
            self._describe(span)
            span.end()

    def _describe(self, span: Span) -> None:
        execution = self.execution_context
        document = execution.graphql_document
        if document is None:  # not parsed: nothing of it is recorded
            return
        span.set_attribute("query", without_literals(document))
        try:
            kind = execution.operation_type.value
        except Exception:  # no such operation in the document: validation reported it
            kind = None
        name = execution.operation_name
        if kind is not None:
            span.set_attribute("graphql.operation.type", kind)
            span.update_name(f"{kind} {name}" if name else kind)
        if name:
            span.set_attribute("graphql.operation.name", name)
        errors = getattr(execution.result, "errors", None) or execution.pre_execution_errors
        if errors:
            codes = sorted({str((error.extensions or {}).get("code", "ERROR")) for error in errors})
            span.set_status(Status(StatusCode.ERROR, ", ".join(codes)))
