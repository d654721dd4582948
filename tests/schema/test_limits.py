"""The request limits measured in one pass: fragment bombs, aliases, directives, cost, variables.

Pure: the schema and graphql-core's parser, no server. The suite's timeout is
what catches a measure that turns exponential again.
"""

from __future__ import annotations

from typing import Any

import pytest
from graphql import get_introspection_query, parse

from api.schema import build_schema
from api.schema.limits import DocumentMeasure, LimitError, measure_request
from api.settings import Settings

SETTINGS = Settings()
SCHEMA = build_schema(SETTINGS)._schema
# `{ branches { code } }`: the field, and its list's children times the list factor.
BRANCHES_COST = 1 + SETTINGS.list_cost_factor


def fragment_bomb(levels: int) -> str:
    parts = ["query { ...F0 }"]
    parts += [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    parts.append(f"fragment F{levels} on Query {{ branches {{ code }} }}")
    return "\n".join(parts)


def measure(query: str, variables: dict[str, Any] | None = None, **settings: Any) -> Any:
    options = Settings(**settings) if settings else SETTINGS
    return measure_request(SCHEMA, parse(query), variables, None, options)


def refusal(query: str, variables: dict[str, Any] | None = None, **settings: Any) -> str:
    with pytest.raises(LimitError) as raised:
        measure(query, variables, **settings)
    return str(raised.value)


@pytest.mark.parametrize("levels", [20, 30, 60])
def test_a_fragment_bomb_is_refused_by_the_cost_it_would_expand_to(levels: int) -> None:
    # Every level doubles the cost of `branches { code }`.
    expected = 2**levels * BRANCHES_COST
    assert f"costs {expected} points" in refusal(fragment_bomb(levels))


def test_aliases_hidden_in_fragments_count_at_every_spread() -> None:
    query = (
        "query { ...A ...A ...A ...A } "
        "fragment A on Query { a: branches { code } b: branches { code } c: branches { code } "
        "d: branches { code } }"
    )
    assert "aliases is 16; at most 15 (max_aliases)" in refusal(query)


def test_directive_bomb_is_refused() -> None:
    directives = " ".join(["@include(if: true)"] * 60)
    assert "directives is 60" in refusal(f"{{ branches {directives} {{ code }} }}")


def test_depth_counts_through_nested_fragments() -> None:
    query = (
        "query { ...A } fragment A on Query { orders { ...B } } "
        "fragment B on OrderConnection { edges { node { branch { ...C } } } } "
        "fragment C on Branch { providers { methods } }"
    )
    assert measure(query).depth == 6
    assert "depth is 6; at most 5 (max_query_depth)" in refusal(query, max_query_depth=5)


def test_the_standard_introspection_query_passes_and_deeper_introspection_does_not() -> None:
    # What GraphiQL (graphql-js's getIntrospectionQuery) sends to load the schema.
    standard = get_introspection_query(input_value_deprecation=True)
    assert measure(standard).depth <= SETTINGS.max_query_depth
    # `ofType` adds no depth, but the fields and types an introspection walks still do.
    walk = "{ __schema { types { " + "fields { type { " * 6 + "name" + " } }" * 6 + " } } }"
    assert "depth is 15; at most 12 (max_query_depth)" in refusal(walk)


def test_a_fragment_cycle_is_refused_not_followed() -> None:
    query = "query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }"
    assert "spreads itself" in refusal(query)


def test_a_connection_multiplies_its_page_by_first() -> None:
    page = "{ orders(first: 100) { totalCount edges { node { id items { title } } } } }"
    # orders 1 + totalCount + edges (1 + 100 x (node 1 + id 1 + items (1 + factor x 1)))
    items = 1 + SETTINGS.list_cost_factor
    assert measure(page).cost == 1 + SETTINGS.count_cost + 1 + 100 * (1 + 1 + items)


def test_first_from_a_variable_and_the_default_page_size() -> None:
    query = "query($n: Int) { orders(first: $n) { edges { node { id } } } }"
    assert measure(query, {"n": 7}).cost == 1 + 1 + 7 * 2
    assert measure(query, {}).cost == 1 + 1 + SETTINGS.default_page_size * 2
    # Beyond the page limit the resolver refuses; the cost counts what it would serve.
    assert measure(query, {"n": 10**9}).cost == 1 + 1 + SETTINGS.max_page_size * 2


def test_sixteen_pages_of_a_hundred_orders_are_over_the_maximum_cost() -> None:
    page = "orders(first: 100) { edges { node { id items { title } payments { id } } } }"
    query = "{ " + " ".join(f"a{i}: {page}" for i in range(15)) + " }"
    assert "per request (max_query_cost)" in refusal(query)


def test_measuring_a_sixty_level_bomb_walks_each_fragment_once() -> None:
    walked: list[str] = []
    measured = DocumentMeasure(SCHEMA, parse(fragment_bomb(60)), None, SETTINGS)
    original = measured._selection_set

    def counting(node: Any, parent: Any, page: int) -> Any:
        walked.append(getattr(parent, "name", "?"))
        return original(node, parent, page)

    measured._selection_set = counting  # type: ignore[method-assign]
    measured.operation(None)
    # The operation, 61 fragments and the one `branches` selection: linear, not 2**60.
    assert len(walked) == 1 + 61 + 1


def test_a_wide_selection_is_refused_before_graphql_core_compares_its_fields() -> None:
    repeats = "{ " + "branches { code } " * 201 + "}"
    assert "holds 201 fields" in refusal(repeats)
    spread = "query { ...A ...A ...A } fragment A on Query { " + "branches { code } " * 70 + "}"
    assert "holds 210 fields" in refusal(spread)
    assert measure("{ " + "branches { code } " * 200 + "}").widest == 200


def test_a_huge_list_in_the_variables_is_refused_before_anything_else() -> None:
    query = "query($f: OrderFilter) { orders(filter: $f) { totalCount } }"
    message = refusal(query, {"f": {"status": ["PAID"] * 60_000}})
    assert "$f.status is a list of 60000 items; at most 100" in message


def test_variables_nested_thousands_deep_are_refused_without_recursion() -> None:
    nested: Any = "x"
    for _ in range(5_000):
        nested = [nested]
    message = refusal("query($v: String) { branches { code } }", {"v": nested})
    assert "nested deeper than 8 levels" in message


def test_too_many_values_in_the_variables() -> None:
    values = {f"v{i}": [1] * 50 for i in range(60)}
    assert "more than 2000 values" in refusal("{ branches { code } }", values)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a\x00b", "NUL byte"), ("a\ud800b", "lone surrogate")],
    ids=["nul", "surrogate"],
)
def test_strings_that_cannot_be_stored_are_refused_naming_where(text: str, problem: str) -> None:
    query = (
        "mutation($input: CancelOrderInput!) { cancelOrder(input: $input) { userErrors { code } } }"
    )
    message = refusal(query, {"input": {"orderId": "x", "reason": text}})
    assert "$input.reason" in message and problem in message
    literal = 'mutation { cancelOrder(input: {orderId: "x", reason: "a\\u0000b"}) { userErrors { code } } }'
    assert "argument `input` of `cancelOrder`.reason" in refusal(literal)


def test_a_long_string_is_refused() -> None:
    query = "query($p: String) { branches { code } }"
    assert "max_string_length" in refusal(query, {"p": "x" * (SETTINGS.max_string_length + 1)})
    assert measure(query, {"p": "x" * SETTINGS.max_string_length}).cost == BRANCHES_COST


def test_the_maximum_cost_must_fit_the_budget() -> None:
    with pytest.raises(ValueError, match="could never run"):
        Settings(max_query_cost=100, rate_limit_burst=99)


# Served: the same limits through the running app over HTTP.


@pytest.mark.parametrize("levels", [20, 30, 60])
def test_a_fragment_bomb_over_http_is_refused_naming_the_limit(
    start_service: Any, levels: int
) -> None:
    service = start_service()
    body = service.client.post(fragment_bomb(levels))
    assert body.get("data") is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert (
        "max_query_cost" in error["message"] and str(2**levels * BRANCHES_COST) in error["message"]
    )
    # The process was not busy for it: the next request is served at once.
    assert service.client.data("{ branches { code } }")["branches"]


BOMBS = {
    "fragments-20": (fragment_bomb(20), "max_query_cost"),
    "fragments-30": (fragment_bomb(30), "max_query_cost"),
    "fragments-60": (fragment_bomb(60), "max_query_cost"),
    "aliases": (
        "query { ...A ...A ...A ...A ...A ...A ...A ...A } fragment A on Query { a: branches { code } b: branches { code } }",
        "max_aliases",
    ),
    "directives": (
        "query { ...D ...D ...D ...D ...D ...D ...D ...D } fragment D on Query { branches @include(if: true) @skip(if: false) @include(if: true) @skip(if: false) { code @include(if: true) @skip(if: false) @include(if: true) } }",
        "max_directives",
    ),
    "chain": (
        "query { ...A } "
        + " ".join(
            f"fragment {a} on Branch {{ ...{b} }}"
            for a, b in zip("BCDEFGHIJKLMN", "CDEFGHIJKLMNO", strict=True)
        )
        + " fragment A on Query { branches { ...B } } fragment O on Branch { providers { methods } }",
        None,
    ),
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_bombs_over_http_are_refused_with_the_limit_they_break(
    start_service: Any, kind: str
) -> None:
    service = start_service()
    query, limit = BOMBS[kind]
    body = service.client.post(query)
    if limit is None:
        # A long chain of fragments is no bomb: measured once each, served.
        assert body.get("errors") is None and body["data"]["branches"]
        return
    assert body.get("data") is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT" and limit in error["message"]


def test_a_huge_list_in_the_variables_over_http_is_refused(start_service: Any) -> None:
    service = start_service()
    query = "query($f: OrderFilter) { orders(filter: $f) { totalCount } }"
    [error] = service.client.post(query, {"f": {"status": ["PAID"] * 60_000}})["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "max_variable_list_items" in error["message"]


def test_every_response_carries_its_cost_and_the_budget_left(start_service: Any) -> None:
    service = start_service(rate_limit_per_second=1.0, rate_limit_burst=30_000)
    client = service.client_for("partner", "zj")
    first = client.post("{ branches { code } }")
    assert first["extensions"]["cost"] == {
        "requested": BRANCHES_COST,
        "maximum": SETTINGS.max_query_cost,
        "remaining": 30_000 - BRANCHES_COST - 1,
        "refillPerSecond": 1.0,
    }
    refused = client.post(fragment_bomb(20))
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_the_budget_spends_cost_so_an_expensive_legal_query_cannot_be_repeated_at_once(
    start_service: Any,
) -> None:
    service = start_service(rate_limit_per_second=10.0, rate_limit_burst=40_000, orders=0)
    client = service.client_for("partner", "zj")
    page = "orders(first: 100) { edges { node { id items { title } payments { id status } } } }"
    heavy = "{ a: " + page + " b: " + page + " }"
    cost = measure(heavy).cost
    assert cost <= SETTINGS.max_query_cost
    answers = [
        client.http.post("/graphql", json={"query": heavy}) for _ in range(40_000 // (cost + 1) + 3)
    ]
    served = [a for a in answers if a.status_code == 200]
    limited = [a for a in answers if a.status_code == 429]
    assert len(served) == 40_000 // (cost + 1)
    assert limited and all(
        a.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED" for a in limited
    )
    retry = int(limited[0].headers["retry-after"])
    assert retry == limited[0].json()["errors"][0]["extensions"]["retryAfter"]
    # Waiting for the missing points at 10 a second is what Retry-After says.
    assert retry >= (cost - (40_000 - len(served) * (cost + 1))) // 10
    # A cheap request of the same key still fits what is left.
    assert client.http.post("/graphql", json={"query": "{ branches { code } }"}).status_code == 200
