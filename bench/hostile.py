"""The hostile partner's documents: the worst the service's request limits still let through.

Everything is sized from the settings (``max_query_cost``, ``max_aliases``,
``max_query_depth``, ``max_tokens``, ``max_directives``, ``max_page_size``),
so the documents stay the worst allowed when the defaults change. Four
shapes, each the largest of its kind within every limit:

- **pages**: ``orders(first: N)`` with (a)'s whole selection, items and
  payments included, in as many aliases and pages as large as the cost
  allows (the most orders read, then the most aliases): the most fields a
  request may have resolved.
- **wide**: one ``orders`` field per alias the limit allows (plus the
  unaliased one), each with ``totalCount`` and a page of cursors as large as
  the cost allows: the most store queries (a page and a count each) and
  stored orders read per request.
- **fragments**: fragments on ``Query`` that all select ``branches { code }``,
  each spread once, as many as the tokens and the cost allow: a
  fragment-heavy document just under the token limit.
- **repeats**: ``branches { code }`` repeated at the top level as often as the
  tokens and the cost allow. graphql-core's OverlappingFieldsCanBeMerged
  compares same-named fields pair by pair, so its validation time grows
  with the square of their number; this spends the fewest tokens per field.

The cost is the service's own: ``cost_of(document, variables)`` from
``api.schema.limits``, imported when it exists. Until then (and only then)
the bench uses ``estimated_cost``, its reading of the documented model
(each field 1; a connection's ``edges``/``nodes`` children times ``first``,
or ``default_page_size``; a list's children times ``list_cost_factor``;
a fragment costed once and added at every spread), and says so in the
report. Tokens, depth, aliases and directives are counted here, in one pass
with each fragment counted once; depth counts a top-level field as 1, which
errs towards a smaller document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    Source,
    VariableNode,
    build_schema,
    get_named_type,
    parse,
)
from graphql.language import Lexer, TokenKind

from api.settings import Settings
from bench.scenarios import HOSTILE_OPERATION, ORDER_FIELDS, HostileDocument

CostOf = Callable[[str, Mapping[str, Any]], int]
Composite = GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType
SERVICE_COST = "api.schema.limits.cost_of"
ESTIMATED_COST = "bench.hostile.estimated_cost (api.schema.limits is not there yet)"
CONNECTION_CHILDREN = frozenset({"edges", "nodes"})


def service_cost_of(settings: Settings) -> tuple[CostOf, str]:
    """The service's cost function and its name; the bench's estimate only while there is none."""
    try:
        from api.schema.limits import cost_of  # type: ignore[import-not-found, unused-ignore]
    except ModuleNotFoundError as missing:
        if missing.name != "api.schema.limits":
            raise
        return functools.partial(estimated_cost, settings=settings), ESTIMATED_COST
    # A module without cost_of raises ImportError above: wiring to do, not a fallback.
    service: CostOf = cost_of
    return service, SERVICE_COST


# --- What the limits see ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counts:
    """Field nesting, aliased fields and directives of a selection, fragments expanded."""

    depth: int = 0
    aliases: int = 0
    directives: int = 0


def token_count(document: str) -> int:
    """Lexical tokens, as graphql-core's parser counts them against ``max_tokens``."""
    lexer = Lexer(Source(document))
    count = 0
    while lexer.advance().kind is not TokenKind.EOF:
        count += 1
    return count


def _fragments(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


def _operation(document: DocumentNode) -> OperationDefinitionNode:
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            return definition
    raise ValueError("the document has no operation")


def counts(document: str) -> Counts:
    """Depth, aliases and directives, each fragment counted once and reused at every spread."""
    parsed = parse(document)
    fragments = _fragments(parsed)
    memo: dict[str, Counts] = {}

    def of(selection_set: SelectionSetNode | None, seen: frozenset[str]) -> Counts:
        depth = aliases = directives = 0
        for selection in selection_set.selections if selection_set else ():
            directives += len(selection.directives or ())
            if isinstance(selection, FieldNode):
                inner = of(selection.selection_set, seen)
                depth = max(depth, 1 + inner.depth)
                aliases += inner.aliases + (selection.alias is not None)
                directives += inner.directives
                continue
            if isinstance(selection, InlineFragmentNode):
                inner = of(selection.selection_set, seen)
            else:
                assert isinstance(selection, FragmentSpreadNode)
                inner = spread(selection.name.value, seen)
            depth = max(depth, inner.depth)
            aliases += inner.aliases
            directives += inner.directives
        return Counts(depth, aliases, directives)

    def spread(name: str, seen: frozenset[str]) -> Counts:
        if name in seen or name not in fragments:
            return Counts()  # a cycle or an unknown fragment: validation refuses it
        if name not in memo:
            fragment = fragments[name]
            inner = of(fragment.selection_set, seen | {name})
            memo[name] = Counts(
                inner.depth, inner.aliases, inner.directives + len(fragment.directives or ())
            )
        return memo[name]

    operation = _operation(parsed)
    whole = of(operation.selection_set, frozenset())
    return Counts(whole.depth, whole.aliases, whole.directives + len(operation.directives or ()))


# --- The documented cost model, while the service has none -----------------------------


@functools.cache
def _schema() -> GraphQLSchema:
    from api.schema import schema

    return build_schema(schema.as_str())


def _is_connection(field: GraphQLField) -> bool:
    named = get_named_type(field.type)
    return (
        "first" in field.args
        and isinstance(named, GraphQLObjectType)
        and bool(CONNECTION_CHILDREN & set(named.fields))
    )


def _is_list(field: GraphQLField) -> bool:
    kind = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    return isinstance(kind, GraphQLList)


def _first(
    node: FieldNode, field: GraphQLField, variables: Mapping[str, Any], settings: Settings
) -> int:
    for argument in node.arguments or ():
        if argument.name.value != "first":
            continue
        if isinstance(argument.value, IntValueNode):
            return int(argument.value.value)
        if isinstance(argument.value, VariableNode):
            given = variables.get(argument.value.name.value)
            return settings.default_page_size if given is None else int(given)
    default = field.args["first"].default_value
    return default if isinstance(default, int) else settings.default_page_size


def estimated_cost(document: str, variables: Mapping[str, Any], *, settings: Settings) -> int:
    """The cost of ``document`` by the documented model; the bench's stand-in for the service's.

    Linear in the document: each fragment is costed once per page size it is
    spread under and added at every spread.
    """
    schema = _schema()
    parsed = parse(document)
    fragments = _fragments(parsed)
    # A fragment's cost depends on its type and on the page it sits in (under a connection).
    memo: dict[tuple[str, int | None], int] = {}

    def selection_cost(
        selection_set: SelectionSetNode | None,
        parent: Composite,
        page: int | None,
        seen: frozenset[str],
    ) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += field_cost(selection, parent, page, seen)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                on = schema.get_type(condition.name.value) if condition else parent
                total += selection_cost(
                    selection.selection_set,
                    on if isinstance(on, Composite) else parent,
                    page,
                    seen,
                )
            else:
                assert isinstance(selection, FragmentSpreadNode)
                total += spread_cost(selection.name.value, page, seen)
        return total

    def field_cost(
        node: FieldNode, parent: Composite, page: int | None, seen: frozenset[str]
    ) -> int:
        fields = {} if isinstance(parent, GraphQLUnionType) else parent.fields
        field = fields.get(node.name.value)
        if field is None:  # __typename, introspection or a mistake: one point, no children
            return 1
        named = get_named_type(field.type)
        if not isinstance(named, Composite) or node.selection_set is None:
            return 1
        if page is not None and node.name.value in CONNECTION_CHILDREN:
            return 1 + page * selection_cost(node.selection_set, named, None, seen)
        if _is_connection(field):
            first = _first(node, field, variables, settings)
            return 1 + selection_cost(node.selection_set, named, first, seen)
        children = selection_cost(node.selection_set, named, None, seen)
        return 1 + (settings.list_cost_factor * children if _is_list(field) else children)

    def spread_cost(name: str, page: int | None, seen: frozenset[str]) -> int:
        if name in seen or name not in fragments:
            return 0  # a cycle or an unknown fragment: validation refuses it
        if (name, page) not in memo:
            fragment = fragments[name]
            on = schema.get_type(fragment.type_condition.name.value)
            if not isinstance(on, Composite):
                return 0
            memo[name, page] = selection_cost(fragment.selection_set, on, page, seen | {name})
        return memo[name, page]

    operation = _operation(parsed)
    root = schema.get_root_type(operation.operation)
    if root is None:
        raise ValueError(f"the schema has no {operation.operation.value} type")
    return selection_cost(operation.selection_set, root, None, frozenset())


# --- The shapes --------------------------------------------------------------------------


def _operation_text(selections: str, fragments: str = "") -> str:
    return f"query {HOSTILE_OPERATION} {{ {selections} }}{fragments}"


def _orders_fields(pages: int, first: int, selection: str) -> str:
    # One unaliased `orders`, the rest aliased: each alias is one more field.
    return " ".join(
        f"{'' if index == 0 else f'p{index}: '}orders(first: {first}) {{ {selection} }}"
        for index in range(pages)
    )


PAGE_SELECTION = (
    f"edges {{ cursor node {{ {' '.join(ORDER_FIELDS.split())} }} }}"
    " pageInfo { hasNextPage endCursor }"
)
WIDE_SELECTION = "totalCount edges { cursor }"
REPEATED_FIELD = "branches { code }"


def pages_document(pages: int, first: int) -> str:
    return _operation_text(_orders_fields(pages, first, PAGE_SELECTION))


def wide_document(pages: int, first: int) -> str:
    return _operation_text(_orders_fields(pages, first, WIDE_SELECTION))


def fragments_document(count: int) -> str:
    spreads = " ".join(f"...F{index}" for index in range(count))
    definitions = "".join(
        f" fragment F{index} on Query {{ {REPEATED_FIELD} }}" for index in range(count)
    )
    return _operation_text(spreads, definitions)


def repeats_document(count: int) -> str:
    return _operation_text(" ".join([REPEATED_FIELD] * count))


# --- The search --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    cost: int
    tokens: int
    counts: Counts


class Limits:
    """The request limits of ``settings``, and what a document amounts to against them."""

    def __init__(self, settings: Settings, cost_of: CostOf) -> None:
        self.settings = settings
        self.cost_of = cost_of

    def measure(self, document: str) -> Measured:
        return Measured(self.cost_of(document, {}), token_count(document), counts(document))

    def allow(self, document: str) -> bool:
        # Tokens first: the cost and the counts would parse a document the service refuses unread.
        settings = self.settings
        if token_count(document) > settings.max_tokens:
            return False
        seen = counts(document)
        return (
            seen.depth <= settings.max_query_depth
            and seen.aliases <= settings.max_aliases
            and seen.directives <= settings.max_directives
            and self.cost_of(document, {}) <= settings.max_query_cost
        )

    def record(self, shape: str, document: str, summary: str, **parameters: int) -> HostileDocument:
        measured = self.measure(document)
        return HostileDocument(
            shape=shape,
            query=document,
            variables={},
            cost=measured.cost,
            tokens=measured.tokens,
            depth=measured.counts.depth,
            aliases=measured.counts.aliases,
            summary=summary,
            parameters=parameters,
        )


def largest(allowed: Callable[[int], bool], high: int) -> int:
    """The largest ``n`` in 1..high that is allowed, when all up to some ``n`` are; 0 if none."""
    low = 0  # allowed (or nothing yet)
    while low < high:
        middle = (low + high + 1) // 2
        if allowed(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _allows_pages(limits: Limits, pages: int, first: int) -> bool:
    return limits.allow(pages_document(pages, first))


def _allows_wide(limits: Limits, pages: int, first: int) -> bool:
    return limits.allow(wide_document(pages, first))


def worst_pages(limits: Limits) -> HostileDocument | None:
    """Most orders read with (a)'s selection (pages times first); more pages on a tie."""
    settings = limits.settings
    best: tuple[int, int, int] | None = None  # (orders read, pages, first)
    first = settings.max_page_size
    for pages in range(1, settings.max_aliases + 2):
        # One more page never allows larger ones.
        first = largest(functools.partial(_allows_pages, limits, pages), first)
        if first == 0:
            break
        if best is None or (pages * first, pages) > best[:2]:
            best = (pages * first, pages, first)
    if best is None:
        return None
    _, pages, first = best
    return limits.record(
        "pages",
        pages_document(pages, first),
        f"{pages} x orders(first: {first}) with items and payments",
        pages=pages,
        first=first,
    )


def worst_wide(limits: Limits) -> HostileDocument | None:
    """The most `orders` fields, each with totalCount and the largest page of cursors allowed."""
    settings = limits.settings
    for pages in range(settings.max_aliases + 1, 0, -1):
        first = largest(functools.partial(_allows_wide, limits, pages), settings.max_page_size)
        if first:
            return limits.record(
                "wide",
                wide_document(pages, first),
                f"{pages} x orders(first: {first}) {{ totalCount edges {{ cursor }} }}",
                pages=pages,
                first=first,
            )
    return None


def worst_fragments(limits: Limits) -> HostileDocument | None:
    count = largest(lambda n: limits.allow(fragments_document(n)), limits.settings.max_tokens)
    if not count:
        return None
    return limits.record(
        "fragments",
        fragments_document(count),
        f"{count} fragments on Query, each `{REPEATED_FIELD}`, each spread once",
        count=count,
    )


def worst_repeats(limits: Limits) -> HostileDocument | None:
    count = largest(lambda n: limits.allow(repeats_document(n)), limits.settings.max_tokens)
    if not count:
        return None
    return limits.record(
        "repeats",
        repeats_document(count),
        f"`{REPEATED_FIELD}` {count} times at the top level",
        count=count,
    )


def worst_documents(settings: Settings, cost_of: CostOf) -> tuple[HostileDocument, ...]:
    """The worst document of each shape within the limits; shapes that fit none are left out."""
    limits = Limits(settings, cost_of)
    found = (
        worst_pages(limits),
        worst_wide(limits),
        worst_fragments(limits),
        worst_repeats(limits),
    )
    return tuple(document for document in found if document is not None)
