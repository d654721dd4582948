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

What the limits see is the service's own measure (``api.schema.limits``:
``measure_request`` refuses, ``DocumentMeasure`` counts depth, aliases,
directives and cost in one pass, each fragment once); only the tokens are
counted here, as graphql-core's parser counts them against ``max_tokens``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from graphql import GraphQLSchema, Source, parse
from graphql.language import Lexer, TokenKind

from api.schema.limits import DocumentMeasure, LimitError, Measure, measure_request
from api.settings import Settings
from bench.scenarios import HOSTILE_OPERATION, ORDER_FIELDS, HostileDocument


def token_count(document: str) -> int:
    """Lexical tokens, as graphql-core's parser counts them against ``max_tokens``."""
    lexer = Lexer(Source(document))
    count = 0
    while lexer.advance().kind is not TokenKind.EOF:
        count += 1
    return count


def service_schema() -> GraphQLSchema:
    """The GraphQL schema the service measures documents against."""
    from api.schema import schema

    return schema._schema


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


class Limits:
    """The request limits of ``settings``, and what the service makes of a document."""

    def __init__(self, settings: Settings, schema: GraphQLSchema | None = None) -> None:
        self.settings = settings
        self.schema = schema or service_schema()

    def measure(self, document: str) -> Measure:
        return DocumentMeasure(self.schema, parse(document), {}, self.settings).operation(None)

    def allow(self, document: str) -> bool:
        """Whether the service lets ``document`` through its limits (tokens first, as it does)."""
        if token_count(document) > self.settings.max_tokens:
            return False
        try:
            measure_request(self.schema, parse(document), {}, None, self.settings)
        except LimitError:
            return False
        return True

    def record(self, shape: str, document: str, summary: str, **parameters: int) -> HostileDocument:
        measured = self.measure(document)
        return HostileDocument(
            shape=shape,
            query=document,
            variables={},
            cost=measured.cost,
            tokens=token_count(document),
            depth=measured.depth,
            aliases=measured.aliases,
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


def worst_documents(settings: Settings) -> tuple[HostileDocument, ...]:
    """The worst document of each shape within the limits; shapes that fit none are left out."""
    limits = Limits(settings)
    found = (
        worst_pages(limits),
        worst_wide(limits),
        worst_fragments(limits),
        worst_repeats(limits),
    )
    return tuple(document for document in found if document is not None)
