"""The GraphQL schema: types, queries, mutations, and the extensions that apply to every field."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from api.schema.errors import ErrorShaping
from api.schema.mutation import Mutation as OrderMutation
from api.schema.payments import PaymentMutation, Subscription
from api.schema.query import Query
from api.schema.types import Offering, Order, Payment

Mutation = merge_types("Mutation", (OrderMutation, PaymentMutation))


class BranchpaySchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors are logged by ErrorShaping, once, without client noise."""


def build_schema(**options: Any) -> strawberry.Schema:
    return BranchpaySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[Order, Offering, Payment],
        extensions=[
            ErrorShaping,
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=256),
        ],
        **options,
    )


schema = build_schema()
