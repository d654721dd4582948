"""The leaf fast path answers exactly what graphql-core answers: data, errors, paths and nulls."""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from api.schema import build_schema
from api.schema.execution import LeafFastPathExecutionContext
from api.settings import Settings


@strawberry.enum
class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.type
class Line:
    sku: str
    quantity: int
    note: str | None

    @strawberry.field
    async def checked(self) -> str:
        await asyncio.sleep(0)
        if self.sku == "S31":
            raise ValueError("check failed")
        return f"ok {self.sku}"


@strawberry.type
class Owner:
    login: str
    email: str | None


@strawberry.interface
class Named:
    name: str


@strawberry.type
class Item(Named):
    id: strawberry.ID
    count: int
    colour: Colour
    price: float | None
    at: datetime
    lines: list[Line]
    maybe_lines: list[Line | None] | None
    first_line: Line | None
    owner: Owner
    broken_count: int  # holds a value an Int cannot carry
    # Values of another Python type than the field's: coerced as graphql-core does.
    flag_count: int  # a bool
    label: str  # an int
    code: strawberry.ID  # an int
    raw_colour: Colour  # the enum's value, not a member
    missing: str  # non-null, but holds None

    @strawberry.field
    def doubled(self, factor: int = 2) -> int:
        return self.count * factor

    @strawberry.field
    async def later(self) -> str:
        await asyncio.sleep(0)
        return f"later-{self.id}"

    @strawberry.field
    def fails(self) -> str | None:
        raise ValueError("resolver failed")


def _items() -> list[Item]:
    at = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
    return [
        Item(
            id=strawberry.ID(str(n)),
            name=f"item {n}",
            count=n,
            colour=Colour.RED if n % 2 else Colour.BLUE,
            price=None if n == 2 else n * 1.5,
            at=at,
            lines=[Line(sku=f"S{n}{k}", quantity=k, note=None if k else "first") for k in range(2)],
            maybe_lines=None if n == 1 else [Line(sku="M", quantity=1, note=None), None],
            first_line=None if n == 2 else Line(sku=f"F{n}", quantity=1, note="x"),
            owner=Owner(login=None if n == 5 else f"u{n}", email=None),  # type: ignore[arg-type]
            broken_count=2**40 if n == 3 else n,
            flag_count=n % 2 == 0,  # type: ignore[arg-type]
            label=n * 11,  # type: ignore[arg-type]
            code=n * 7,  # type: ignore[arg-type]
            raw_colour="red" if n % 2 else Colour.BLUE,  # type: ignore[arg-type]
            missing=None if n == 4 else f"m{n}",  # type: ignore[arg-type]
        )
        for n in range(1, 6)
    ]


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item]:
        return _items()

    @strawberry.field
    def maybe_items(self) -> list[Item | None] | None:
        return list(_items())

    @strawberry.field
    def named(self) -> list[Named]:
        return list(_items())


class Counting(SchemaExtension):
    """A resolve middleware: it must see every field, fast path or not."""

    seen: ClassVar[list[str]] = []

    def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        Counting.seen.append(info.field_name)
        return _next(root, info, *args, **kwargs)


def _schemas(**options: Any) -> tuple[strawberry.Schema, strawberry.Schema]:
    fast = strawberry.Schema(
        query=Query, execution_context_class=LeafFastPathExecutionContext, **options
    )
    plain = strawberry.Schema(
        query=Query, execution_context_class=StrawberryGraphQLCoreExecutionContext, **options
    )
    return fast, plain


def _answer(schema: strawberry.Schema, query: str, variables: dict[str, Any] | None = None) -> Any:
    result = asyncio.run(schema.execute(query, variable_values=variables))
    errors = sorted(
        (
            (
                e.message,
                tuple(e.path or ()),
                tuple((loc.line, loc.column) for loc in e.locations or ()),
            )
            for e in result.errors or ()
        ),
    )
    return result.data, errors


QUERIES = {
    "leaves, aliases and __typename": """
        { items { __typename id name count colour price at alias: name again: count
                  lines { sku quantity note __typename } } }
    """,
    "key order follows the query, resolvers interleaved": """
        { items { later count doubled(factor: 3) name doubled id lines { note sku } colour } }
    """,
    "fragments and directives": """
        query Q($skip: Boolean!, $with: Boolean!) {
          items { ...Parts id @skip(if: $skip) colour @include(if: $with) ... on Item { count } }
        }
        fragment Parts on Item { name count price }
    """,
    "a coercion that fails gives graphql-core's error": "{ items { id brokenCount } }",
    "values of other types are coerced as graphql-core coerces them": """
        { maybeItems { flagCount label code rawColour colour } }
    """,
    "a null in a non-null field propagates to the nullable parent": "{ maybeItems { id missing name } }",
    "a null in a non-null field nulls the whole non-null chain": "{ items { id missing } }",
    "a failing resolver beside plain leaves": "{ items { id fails name } }",
    "abstract types": "{ named { __typename name ... on Item { count colour } } }",
    "objects and lists of objects": """
        { items { id firstLine { sku note } maybeLines { sku } lines { sku quantity } } }
    """,
    "an async error inside a list item nulls the nearest nullable parent": """
        { maybeItems { id lines { sku checked } } }
    """,
    "an async error inside a list item nulls the whole non-null chain": "{ items { id lines { checked } } }",
    "a null inside a non-null object propagates through it": "{ maybeItems { id owner { login email } } }",
    "the same object field twice, merged": "{ items { owner { login } owner { email } firstLine { sku } } }",
}


@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
def test_fast_path_answers_like_graphql_core(query: str) -> None:
    fast, plain = _schemas()
    for variables in ({"skip": True, "with": False}, {"skip": False, "with": True}):
        expected = _answer(plain, query, variables)
        got = _answer(fast, query, variables)
        assert got == expected
        # JSON key order is what a client sees first.
        assert _keys(got[0]) == _keys(expected[0])


def _keys(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _keys(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_keys(v) for v in value]
    return None


def test_the_differences_are_real() -> None:
    """The cases above do produce errors and nulls, so the comparison is not vacuous."""
    _fast, plain = _schemas()
    data, errors = _answer(
        plain, QUERIES["a null in a non-null field propagates to the nullable parent"]
    )
    assert data["maybeItems"][3] is None and data["maybeItems"][0]["missing"] == "m1"
    assert [e[1] for e in errors] == [("maybeItems", 3, "missing")]
    data, errors = _answer(
        plain, QUERIES["a null in a non-null field nulls the whole non-null chain"]
    )
    assert data is None and len(errors) == 1
    data, errors = _answer(plain, QUERIES["a coercion that fails gives graphql-core's error"])
    assert data is None and "Int cannot represent" in errors[0][0]
    data, errors = _answer(
        plain, QUERIES["an async error inside a list item nulls the nearest nullable parent"]
    )
    assert (
        data["maybeItems"][2] is None and data["maybeItems"][1]["lines"][1]["checked"] == "ok S21"
    )
    assert [e[1] for e in errors] == [("maybeItems", 2, "lines", 1, "checked")]
    data, errors = _answer(plain, QUERIES["a null inside a non-null object propagates through it"])
    assert data["maybeItems"][4] is None and data["maybeItems"][0]["owner"]["login"] == "u1"


def test_a_resolve_middleware_still_sees_every_field() -> None:
    fast, plain = _schemas(extensions=[Counting])
    query = "{ items { id name lines { sku } } }"
    Counting.seen = []
    expected = _answer(plain, query)
    seen_plain = sorted(Counting.seen)
    Counting.seen = []
    assert _answer(fast, query) == expected
    assert sorted(Counting.seen) == seen_plain
    assert seen_plain.count("sku") == 10


def test_the_api_schema_runs_on_the_fast_path_unless_switched_off() -> None:
    fast = build_schema(Settings(graphql_fast_path=True))
    assert fast.execution_context_class is LeafFastPathExecutionContext
    stock = build_schema(Settings(graphql_fast_path=False))
    assert stock.execution_context_class is StrawberryGraphQLCoreExecutionContext


class _CountingContext(LeafFastPathExecutionContext):
    calls: ClassVar[list[str]] = []

    def execute_field(
        self, parent_type: Any, source: Any, field_details_list: Any, *rest: Any
    ) -> Any:
        _CountingContext.calls.append(field_details_list[0].node.name.value)
        return super().execute_field(parent_type, source, field_details_list, *rest)


def test_plain_leaves_do_not_reach_graphql_cores_field_execution() -> None:
    schema = strawberry.Schema(query=Query, execution_context_class=_CountingContext)
    _CountingContext.calls = []
    data, errors = _answer(
        schema, "{ items { id name count lines { sku } firstLine { sku } later } }"
    )
    assert not errors and len(data["items"]) == 5
    # Only the root field and the resolvers go the long way; firstLine is None
    # in one item, which is fast too (nullable).
    assert sorted(_CountingContext.calls) == ["items"] + ["later"] * 5
