"""The GraphQL operations' metrics: one count by type, name and outcome, and the latency.

The outcome is ``ok``, ``user_error`` (a mutation payload with ``userErrors``)
or the ``extensions.code`` of the first top-level error. Listed after
ErrorShaping, so the errors it reads already carry their code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionResult as StrawberryExecutionResult

from api.telemetry import metrics


def outcome_of(result: object) -> str:
    if not isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult):
        return "ok"
    if result.errors:
        extensions = result.errors[0].extensions or {}
        code = extensions.get("code")
        # Parse errors end the operation before ErrorShaping gives them a code.
        return str(code) if isinstance(code, str) else "BAD_USER_INPUT"
    data: Any = result.data
    if isinstance(data, dict):
        for value in data.values():
            if isinstance(value, dict) and value.get("userErrors"):
                return "user_error"
    return "ok"


class OperationMetrics(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        record = metrics.recorder()
        if not record.enabled:
            yield
            return
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        context = self.execution_context
        try:
            operation_type = context.operation_type.value
        except Exception:  # the document did not parse or names no operation
            operation_type = "unknown"
        try:
            name = context.operation_name
        except Exception:
            name = None
        record.graphql_request(operation_type, name, outcome_of(context.result), seconds)
