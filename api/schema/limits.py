"""The request limits, measured in one pass over the document and its variables.

Depth, aliases, directives and the query cost are computed together; each
fragment is measured once per context and reused at every spread, so a
document whose expansion is exponential (``...F1 ...F1`` nested 60 times) is
measured in time linear in its text and refused by the numbers it would
expand to. The variables are walked once: their lists, their values, their
nesting and their strings are bounded, and strings with a NUL byte or a lone
surrogate (which MongoDB cannot store) are refused naming where they are.

The cost of a request, in points:

- every field costs 1;
- a connection (a type named ``...Connection``) multiplies the cost of its
  ``edges`` and ``nodes`` by ``first`` (the default page size when absent,
  at most the maximum page size);
- any other list multiplies the cost of its children by ``list_cost_factor``;
- a connection's ``totalCount`` costs ``count_cost``: it walks every match.

The depth counts every field but ``__Type.ofType``, a type's wrappers, which
the standard introspection query nests 9 deep.

The width of a selection set (its fields, those of fragments spread into it
included) is bounded too: graphql-core's validation compares fields of the
same name pair by pair, quadratic in that width.

``QueryLimits`` refuses a request over any limit before graphql-core validates
or executes it, with BAD_USER_INPUT naming the limit and, for the cost, the
computed value. ``RequestLimits`` then spends the cost from the API key's budget
and reports ``extensions.cost`` on every response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
)
from strawberry.extensions import ValidationCache

from api.schema.errors import ApiError, ErrorCode
from api.services.budget import Charge
from api.settings import Settings
from api.telemetry import metrics

CONNECTION_SUFFIX = "Connection"
PAGED_FIELDS = frozenset({"edges", "nodes"})


@dataclass(frozen=True, slots=True)
class Measure:
    """What a selection expands to: its depth, aliases, directives and cost in points."""

    depth: int = 0
    aliases: int = 0
    directives: int = 0
    cost: int = 0
    # Fields this selection adds to the selection set it is in (through fragments too),
    # and the most fields any selection set inside it holds.
    fields: int = 0
    widest: int = 0


class LimitError(Exception):
    """The document or its variables exceed a limit; the message names it."""


def text_problem(value: str) -> str | None:
    """Why a string cannot be accepted (NUL byte, lone surrogate), or None."""
    if "\x00" in value:
        return "contains a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


class DocumentMeasure:
    """Measures one operation of a parsed document against the schema, fragments once each."""

    def __init__(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        variables: Mapping[str, Any] | None,
        settings: Settings,
    ) -> None:
        self.schema = schema
        self.variables = variables or {}
        self.settings = settings
        self.fragments = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self.document = document
        self._memo: dict[tuple[str, int], Measure] = {}
        self._active: set[str] = set()

    def operation(self, operation_name: str | None) -> Measure:
        operation = self._operation(operation_name)
        if operation is None:
            return Measure()
        root = self._root_type(operation.operation)
        self._check_literals_of_definitions(operation)
        inner = self._selection_set(operation.selection_set, root, 0)
        return Measure(
            inner.depth,
            inner.aliases,
            inner.directives + len(operation.directives or ()),
            inner.cost,
            inner.fields,
            max(inner.widest, inner.fields),
        )

    def _operation(self, name: str | None) -> OperationDefinitionNode | None:
        operations = [
            definition
            for definition in self.document.definitions
            if isinstance(definition, OperationDefinitionNode)
        ]
        if name is None:
            # Several operations without a name chosen: graphql-core refuses it later.
            return operations[0] if len(operations) == 1 else None
        return next((op for op in operations if op.name and op.name.value == name), None)

    def _root_type(self, operation: OperationType) -> GraphQLObjectType | None:
        if operation is OperationType.QUERY:
            return self.schema.query_type
        if operation is OperationType.MUTATION:
            return self.schema.mutation_type
        return self.schema.subscription_type

    def _check_literals_of_definitions(self, operation: OperationDefinitionNode) -> None:
        for definition in operation.variable_definitions or ():
            if definition.default_value is not None:
                self._check_literal(definition.default_value, f"${definition.variable.name.value}")

    def _selection_set(
        self, node: SelectionSetNode, parent: GraphQLNamedType | None, page: int
    ) -> Measure:
        depth = aliases = directives = cost = fields = widest = 0
        for selection in node.selections:
            directives += self._directives(selection.directives)
            if isinstance(selection, FieldNode):
                measure = self._field(selection, parent, page)
            elif isinstance(selection, InlineFragmentNode):
                condition = (
                    self.schema.get_type(selection.type_condition.name.value)
                    if selection.type_condition
                    else parent
                )
                measure = self._selection_set(selection.selection_set, condition, page)
            elif isinstance(selection, FragmentSpreadNode):
                measure = self._fragment(selection.name.value, page)
            else:  # pragma: no cover - graphql-core has no other selection
                continue
            depth = max(depth, measure.depth)
            aliases += measure.aliases
            directives += measure.directives
            cost += measure.cost
            fields += measure.fields
            widest = max(widest, measure.widest)
        return Measure(depth, aliases, directives, cost, fields, widest)

    def _fragment(self, name: str, page: int) -> Measure:
        key = (name, page)
        if (known := self._memo.get(key)) is not None:
            return known
        definition = self.fragments.get(name)
        if definition is None:
            return Measure()  # graphql-core names the unknown fragment
        if name in self._active:
            raise LimitError(f"fragment {name} spreads itself")
        self._active.add(name)
        try:
            condition = self.schema.get_type(definition.type_condition.name.value)
            measure = self._selection_set(definition.selection_set, condition, page)
            measure = Measure(
                measure.depth,
                measure.aliases,
                measure.directives + self._directives(definition.directives),
                measure.cost,
                measure.fields,
                measure.widest,
            )
        finally:
            self._active.discard(name)
        self._memo[key] = measure
        return measure

    def _field(self, node: FieldNode, parent: GraphQLNamedType | None, page: int) -> Measure:
        name = node.name.value
        aliases = 1 if node.alias is not None else 0
        for argument in node.arguments or ():
            self._check_literal(argument.value, f"argument `{argument.name.value}` of `{name}`")
        if node.selection_set is None:
            counts = name == "totalCount" and getattr(parent, "name", "").endswith(
                CONNECTION_SUFFIX
            )
            return Measure(1, aliases, 0, self.settings.count_cost if counts else 1, 1, 0)
        definition = (
            parent.fields.get(name)
            if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType)
            else None
        )
        child_type = get_named_type(definition.type) if definition is not None else None
        is_list = definition is not None and isinstance(
            get_nullable_type(definition.type), GraphQLList
        )
        child_page = 0
        if child_type is not None and child_type.name.endswith(CONNECTION_SUFFIX):
            child_page = self._first(node)
            multiplier = 1
        elif page and name in PAGED_FIELDS:
            multiplier = page
        elif is_list:
            multiplier = self.settings.list_cost_factor
        else:
            multiplier = 1
        children = self._selection_set(node.selection_set, child_type, child_page)
        # A type's wrappers (`[Order!]!`): the standard introspection query, GraphiQL's,
        # nests `ofType` 9 deep. It adds no depth; `fields` and `type` inside it still do.
        unwraps = name == "ofType" and getattr(parent, "name", "") == "__Type"
        return Measure(
            children.depth + (0 if unwraps else 1),
            children.aliases + aliases,
            children.directives,
            1 + multiplier * children.cost,
            1,
            max(children.widest, children.fields),
        )

    def _first(self, node: FieldNode) -> int:
        """The page size a connection field asks for, as the resolver will bound it."""
        value: Any = None
        for argument in node.arguments or ():
            if argument.name.value != "first":
                continue
            if isinstance(argument.value, IntValueNode):
                value = int(argument.value.value)
            elif isinstance(argument.value, VariableNode):
                value = self.variables.get(argument.value.name.value)
        if not isinstance(value, int) or isinstance(value, bool):
            value = self.settings.default_page_size
        return max(0, min(int(value), self.settings.max_page_size))

    def _directives(self, directives: tuple[DirectiveNode, ...] | None) -> int:
        for directive in directives or ():
            for argument in directive.arguments or ():
                self._check_literal(
                    argument.value, f"argument `{argument.name.value}` of @{directive.name.value}"
                )
        return len(directives or ())

    def _check_literal(self, value: ValueNode, where: str) -> None:
        if isinstance(value, StringValueNode):
            check_string(value.value, where, self.settings)
        elif isinstance(value, ListValueNode):
            for item in value.values:
                self._check_literal(item, where)
        elif isinstance(value, ObjectValueNode):
            for field in value.fields:
                self._check_literal(field.value, f"{where}.{field.name.value}")


def check_string(value: str, where: str, settings: Settings) -> None:
    if len(value) > settings.max_string_length:
        raise LimitError(
            f"the string in {where} has {len(value)} characters; at most "
            f"{settings.max_string_length} (max_string_length)"
        )
    if problem := text_problem(value):
        raise LimitError(f"the string in {where} {problem}")


def check_variables(variables: Mapping[str, Any] | None, settings: Settings) -> None:
    """Bound the variables in one walk: list sizes, value count, nesting, strings."""
    if not variables:
        return
    count = 0
    # An explicit stack: variables nested thousands deep must not exhaust Python's.
    stack: list[tuple[str, Any, int]] = [
        (f"${name}", value, 1) for name, value in variables.items()
    ]
    while stack:
        where, value, depth = stack.pop()
        count += 1
        if count > settings.max_variable_values:
            raise LimitError(
                f"the variables hold more than {settings.max_variable_values} values "
                "(max_variable_values)"
            )
        if isinstance(value, str):
            check_string(value, f"variable {where}", settings)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > settings.max_variable_depth:
            raise LimitError(
                f"variable {where} is nested deeper than {settings.max_variable_depth} levels "
                "(max_variable_depth)"
            )
        if isinstance(value, list):
            if len(value) > settings.max_variable_list_items:
                raise LimitError(
                    f"variable {where} is a list of {len(value)} items; at most "
                    f"{settings.max_variable_list_items} (max_variable_list_items)"
                )
            stack.extend((f"{where}[{index}]", item, depth + 1) for index, item in enumerate(value))
        else:
            for key, item in value.items():
                check_string(key, f"a key of variable {where}", settings)
                stack.append((f"{where}.{key}", item, depth + 1))


def measure_request(
    schema: GraphQLSchema,
    document: DocumentNode,
    variables: Mapping[str, Any] | None,
    operation_name: str | None,
    settings: Settings,
) -> Measure:
    """The request's measure; raises LimitError naming the first limit it exceeds."""
    check_variables(variables, settings)
    measure = DocumentMeasure(schema, document, variables, settings).operation(operation_name)
    bounds = (
        ("depth", measure.depth, settings.max_query_depth, "max_query_depth"),
        ("aliases", measure.aliases, settings.max_aliases, "max_aliases"),
        ("directives", measure.directives, settings.max_directives, "max_directives"),
    )
    for what, value, limit, setting in bounds:
        if value > limit:
            raise LimitError(f"the query's {what} is {value}; at most {limit} ({setting})")
    if measure.cost > settings.max_query_cost:
        raise LimitError(
            f"the query costs {measure.cost} points; at most {settings.max_query_cost} "
            "per request (max_query_cost)"
        )
    if measure.widest > settings.max_selection_width:
        raise LimitError(
            f"a selection set holds {measure.widest} fields (fragments spread into it "
            f"included); at most {settings.max_selection_width} (max_selection_width)"
        )
    return measure


def _refusal(error: ApiError) -> GraphQLError:
    return GraphQLError(error.message, original_error=error)


class RequestLimits(ValidationCache):
    """Refuses a request over a limit, validates it (cached), then spends its cost.

    The limits come first, so graphql-core never walks a document they refuse.
    A valid request's cost is taken from its API key's budget
    (``Services.budget``, shared by every process on the store), together with
    the point an HTTP request owes for arriving (its ``Charge``, left by the
    gate): one store round trip. A key that has not enough left gets
    RATE_LIMITED with the seconds until it has. Every response then carries
    ``extensions.cost``. One instance serves one operation.
    """

    def __init__(self, settings: Settings, maxsize: int | None = 256) -> None:
        super().__init__(maxsize=maxsize)
        self.settings = settings
        self.requested: int | None = None
        self.remaining: int | None = None

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        assert context.graphql_document is not None
        try:
            measure = measure_request(
                context.schema._schema,
                context.graphql_document,
                context.variables,
                context.operation_name,
                self.settings,
            )
        except LimitError as error:
            refusal = ApiError(ErrorCode.BAD_USER_INPUT, str(error))
            context.pre_execution_errors = [_refusal(refusal)]
            yield
            return
        self.requested = measure.cost
        yield from super().on_validate()

    async def on_execute(self) -> AsyncIterator[None]:
        # Validation passed (else execution would not start): spend the cost now.
        await self._spend()
        yield

    async def _spend(self) -> None:
        context = self.execution_context.context
        principal = getattr(context, "principal", None)
        services = getattr(context, "services", None)
        budget = getattr(services, "budget", None)
        if principal is None or budget is None or self.requested is None:
            return
        bucket = f"key:{principal.name}"
        request = getattr(context, "request", None)
        charge = getattr(request, "scope", {}).get("state", {}).get("charge")
        if not isinstance(charge, Charge) or charge.key != bucket or charge.paid:
            charge = None
        spend = await budget.take(bucket, self.requested + (0 if charge is None else 1))
        self.remaining, wait = spend.remaining, spend.wait
        if charge is not None and not wait:
            charge.paid = True
        if wait:
            metrics.recorder().rate_limited("per-key", principal.name)
            raise ApiError(
                ErrorCode.RATE_LIMITED,
                f"this request costs {self.requested} points and the key has "
                f"{self.remaining} left; retry after {wait} s",
                retryAfter=wait,
            )

    def get_results(self) -> dict[str, Any]:
        if self.requested is None:
            return {}
        return {
            "cost": {
                "requested": self.requested,
                "maximum": self.settings.max_query_cost,
                "remaining": self.remaining,
                "refillPerSecond": self.settings.rate_limit_per_second,
            }
        }
