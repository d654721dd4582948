"""The GraphQL schema: types, queries, mutations, and the extensions that apply to every field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
)
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from api.schema.bills import BillMutation, BillQuery
from api.schema.config_edits import ConfigEditMutation, ConfigEditQuery
from api.schema.errors import ErrorShaping
from api.schema.execution import LeafFastPathExecutionContext
from api.schema.limits import RequestLimits
from api.schema.log_fields import OperationLogFields
from api.schema.metrics import OperationMetrics
from api.schema.mutation import Mutation as OrderMutation
from api.schema.payments import PaymentMutation, Subscription
from api.schema.query import Query as OrderQuery
from api.schema.types import Offering, Order, Payment
from api.schema.webhooks import WebhookMutation, WebhookQuery
from api.settings import Settings

if TYPE_CHECKING:
    from api.telemetry.traces import Tracing

Query = merge_types("Query", (OrderQuery, WebhookQuery, BillQuery, ConfigEditQuery))
Mutation = merge_types(
    "Mutation",
    (OrderMutation, PaymentMutation, WebhookMutation, BillMutation, ConfigEditMutation),
)


class BranchpaySchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors are logged by ErrorShaping, once, without client noise."""


def build_schema(
    settings: Settings | None = None, *, tracing: Tracing | None = None, **options: Any
) -> strawberry.Schema:
    """The schema with the request limits of ``settings`` (defaults when None).

    With ``tracing`` (traces on), each operation is a span (api/schema/tracing.py).
    """
    settings = settings or Settings()
    # Depth, aliases, directives, variables and cost are measured in one linear
    # pass (api/schema/limits.py) before graphql-core's (cached) validation.
    # Strawberry's QueryDepthLimiter and MaxAliasesLimiter re-walk a fragment
    # at every spread, exponential in a fragment bomb, so they are not used.
    extensions: list[type[SchemaExtension] | Any] = [
        ErrorShaping,
        # After ErrorShaping: it counts each operation by the code its errors were given.
        OperationMetrics,
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        lambda: ParserCache(maxsize=256),
        lambda: RequestLimits(settings),
        OperationLogFields,
    ]
    if not settings.introspection:
        extensions.append(DisableIntrospection)
    if tracing is not None:
        from api.schema.tracing import OperationSpans

        provider = tracing.provider
        # First, so that its span encloses the others and it sees the errors ErrorShaping coded.
        extensions.insert(0, lambda: OperationSpans(tracer_provider=provider))
    # Plain leaf fields skip graphql-core's per-field machinery
    # (api/schema/execution.py); BRANCHPAY_GRAPHQL_FAST_PATH=false, or a test
    # passing Strawberry's own class, runs the stock execution instead.
    if settings.graphql_fast_path:
        options.setdefault("execution_context_class", LeafFastPathExecutionContext)
    return BranchpaySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[Order, Offering, Payment],
        extensions=extensions,
        **options,
    )


schema = build_schema()
