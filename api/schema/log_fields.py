"""The operation's name and type on every log line of its execution (docs/operations.md, Logs).

Bound when execution starts, once the document is parsed and validated: over
HTTP into the request's context, over WebSocket into the operation's own task,
so two operations of one connection keep their lines apart.
"""

from __future__ import annotations

from collections.abc import Iterator

from strawberry.extensions import SchemaExtension

from api.telemetry import context

# A GraphQL name is letters, digits and underscores; a very long one is cut.
MAX_NAME_CHARS = 100


class OperationLogFields(SchemaExtension):
    def on_execute(self) -> Iterator[None]:
        execution = self.execution_context
        name = execution.operation_name
        context.bind(
            operation=name[:MAX_NAME_CHARS] if name else None,
            operation_type=execution.operation_type.value,
        )
        yield
