"""The hostile scenario's parts: the worst-document generator, its cost stand-in, the answers.

The generator is tested against ``estimated_cost``, the bench's reading of the
documented cost model, so it holds on any branch; once ``api.schema.limits``
exists, ``service_cost_of`` must hand out the service's own function instead.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import random
import secrets
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import GraphQLSyntaxError, build_schema, parse, validate
from pymongo import MongoClient

from api.bench import UnlimitedFor, lift_rate_limit
from api.schema import schema as service_schema
from api.security.ratelimit import RateLimiter
from api.settings import Settings
from bench.hostile import (
    ESTIMATED_COST,
    SERVICE_COST,
    Counts,
    Limits,
    counts,
    estimated_cost,
    fragments_document,
    largest,
    pages_document,
    repeats_document,
    service_cost_of,
    token_count,
    wide_document,
    worst_documents,
)
from bench.scenarios import (
    ORDERS_QUERY,
    Answer,
    HostileDocument,
    HttpRequest,
    Scenario,
    Spec,
    Target,
    answer,
    health_probe,
    http_request,
)
from tests.conftest import DEMO_BRANCHES_TOML, issue_key

DEFAULTS = Settings()


def cost(document: str, variables: dict[str, Any] | None = None) -> int:
    return estimated_cost(document, variables or {}, settings=DEFAULTS)


def test_largest_finds_the_last_allowed_size() -> None:
    assert largest(lambda n: n <= 37, 100) == 37
    assert largest(lambda n: n <= 500, 100) == 100
    assert largest(lambda n: False, 100) == 0
    assert largest(lambda n: n <= 1, 1) == 1


def test_estimated_cost_follows_the_documented_model() -> None:
    # Each field 1; a list's children times list_cost_factor (10).
    assert cost("{ branches { code } }") == 1 + 10 * 1
    # A connection's edges children times `first`; its other fields once.
    assert cost("{ orders(first: 3) { totalCount edges { cursor node { id } } } }") == 3 + 3 * 3
    # No `first`: the default page size (20); `first` from the variables.
    assert cost("{ orders { edges { cursor } } }") == 2 + DEFAULTS.default_page_size
    query = "query Q($n: Int) { orders(first: $n) { edges { cursor } } }"
    assert cost(query, {"n": 5}) == 2 + 5
    # A fragment is costed once and added at every spread, also under a connection.
    assert cost("{ ...F ...F } fragment F on Query { branches { code } }") == 2 * 11
    fragment = "fragment C on OrderConnection { edges { cursor } }"
    assert cost(f"{{ orders(first: 2) {{ ...C }} }} {fragment}") == 1 + 1 + 2
    assert cost('{ node(id: "x") { ... on Order { id status } } }') == 3
    assert cost("{ __typename }") == 1


def test_ordinary_request_costs_more_than_the_default_maximum_by_the_documented_model() -> None:
    # (a): per order 157 points (items 81, payments 61), 158 an edge, times 50.
    assert cost(ORDERS_QUERY, {"first": 50}) == 7905
    assert DEFAULTS.max_query_cost < 7905  # the lead's defaults would refuse (a) as modelled


def test_counts_see_fragments_at_every_spread_in_one_pass() -> None:
    document = (
        "{ a: branches { code } ...F ...F }"
        " fragment F on Query { b: branches { code @include(if: true) } }"
    )
    assert counts(document) == Counts(depth=2, aliases=3, directives=2)
    bomb = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(60))
    # 2**60 expansions: counted at once, because each fragment is counted once.
    assert counts(f"{{ ...F0 }} {bomb} fragment F60 on Query {{ x: __typename }}").aliases == 2**60


def test_token_count_is_what_the_parser_limits() -> None:
    document = fragments_document(7)
    tokens = token_count(document)
    parse(document, max_tokens=tokens)
    with pytest.raises(GraphQLSyntaxError):
        parse(document, max_tokens=tokens - 1)


def _check_within(document: str, settings: Settings) -> None:
    assert token_count(document) <= settings.max_tokens
    assert estimated_cost(document, {}, settings=settings) <= settings.max_query_cost
    seen = counts(document)
    assert seen.depth <= settings.max_query_depth
    assert seen.aliases <= settings.max_aliases
    assert seen.directives <= settings.max_directives


@pytest.mark.parametrize(
    "settings",
    [
        DEFAULTS,
        Settings(max_query_cost=600, max_aliases=3, max_tokens=300, max_page_size=50),
        Settings(max_query_cost=20_000, list_cost_factor=2, max_aliases=4),
    ],
    ids=["defaults", "tight", "generous"],
)
def test_worst_documents_are_within_every_limit_and_one_step_short_of_one(
    settings: Settings,
) -> None:
    limits = Limits(settings, partial(estimated_cost, settings=settings))
    documents = {d.shape: d for d in worst_documents(settings, limits.cost_of)}
    assert set(documents) == {"pages", "wide", "fragments", "repeats"}
    for document in documents.values():
        _check_within(document.query, settings)
        assert document.cost == limits.cost_of(document.query, {})
        assert document.tokens == token_count(document.query)
        assert document.query.startswith("query Hostile {")

    pages, first = documents["pages"].parameters["pages"], documents["pages"].parameters["first"]
    assert first == settings.max_page_size or not limits.allow(pages_document(pages, first + 1))
    # One more page of that size would read more orders: it is over a limit.
    assert not limits.allow(pages_document(pages + 1, first))

    wide = documents["wide"].parameters
    assert wide["pages"] == settings.max_aliases + 1  # every alias the limit allows
    assert wide["first"] == settings.max_page_size or not limits.allow(
        wide_document(wide["pages"], wide["first"] + 1)
    )
    for shape, builder in (("fragments", fragments_document), ("repeats", repeats_document)):
        count = documents[shape].parameters["count"]
        assert not limits.allow(builder(count + 1)), shape


def test_worst_documents_are_valid_for_the_schema(
    defaults: tuple[HostileDocument, ...],
) -> None:
    schema = build_schema(service_schema.as_str())
    documents = {d.shape: d for d in defaults}
    for shape in ("pages", "wide", "fragments"):
        assert validate(schema, parse(documents[shape].query)) == [], shape
    # The worst repeats make graphql-core's overlap check give up (RecursionError) after
    # seconds, which is the point; its shape is checked on a small instance.
    assert validate(schema, parse(repeats_document(10))) == []


def test_service_cost_of_is_the_estimate_only_while_the_service_has_none() -> None:
    function, name = service_cost_of(DEFAULTS)
    if importlib.util.find_spec("api.schema.limits") is None:
        assert name == ESTIMATED_COST
    else:
        assert name == SERVICE_COST
    assert function("{ branches { code } }", {}) > 0


@pytest.fixture(scope="module")
def defaults() -> tuple[HostileDocument, ...]:
    """The worst documents for the default settings, by the documented model."""
    return worst_documents(DEFAULTS, partial(cost))


HOSTILE = Spec(
    scenario=Scenario.HOSTILE,
    target=Target.GRAPHQL,
    concurrency=1,
    duration=1.0,
    warmup=0.0,
    orders=10,
    base=datetime(2026, 1, 1, tzinfo=UTC),
)


def test_every_hostile_request_is_a_new_document_with_the_same_tokens(
    defaults: tuple[HostileDocument, ...],
) -> None:
    spec, rng = replace(HOSTILE, documents=defaults), random.Random(3)
    requests = [http_request(spec, rng) for _ in range(20)]
    queries = [r.json["query"] for r in requests if r.json]
    assert len(set(queries)) == 20  # no parser or validation cache hit
    by_shape = {d.shape: d for d in spec.documents}
    for request, query in zip(requests, queries, strict=True):
        assert token_count(query) == by_shape[request.label].tokens


def test_answers_of_the_attacker_are_labelled_by_shape_and_code() -> None:
    spec, request = HOSTILE, HttpRequest("POST", "/graphql", label="wide")
    refused = json.dumps({"errors": [{"extensions": {"code": "RATE_LIMITED"}}]}).encode()
    assert answer(spec, request, 200, b'{"data": {}}') == Answer(True, "wide: served")
    assert answer(spec, request, 429, refused) == Answer(False, "wide: 429 RATE_LIMITED")
    assert answer(spec, request, 400, b'{"errors": [{"message": "x"}]}') == Answer(
        False, "wide: 400 no code"
    )
    assert answer(spec, request, 500, b"Internal Server Error") == Answer(
        False, "wide: 500 non-JSON"
    )
    probe = replace(HOSTILE, scenario=Scenario.HEALTH, target=Target.PLAIN)
    assert answer(probe, HttpRequest("GET", "/healthz"), 200, b"{}") == Answer(True, "served")


def test_unlimited_keys_pass_while_every_other_caller_keeps_the_limit() -> None:
    now = [0.0]
    limiter = UnlimitedFor(RateLimiter(1.0, 2, clock=lambda: now[0]), ["make-bench"])
    assert [limiter.take("key:make-bench") for _ in range(50)] == [0] * 50
    assert [limiter.take("key:attacker") for _ in range(3)] == [0, 0, 1]
    assert limiter.take("address:127.0.0.1") == 0


def test_bench_app_lets_only_the_named_key_past_the_rate_limit_and_probes_pass(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    """Through real uvicorn and a real store: the bench's key is unlimited, the attacker's is not."""
    from api.app import create_app
    from providers.kit.loopback import LoopbackServer

    (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
    plugins = tmp_path / "plugins.toml"
    plugins.write_text(DEMO_BRANCHES_TOML.format(gateway="http://127.0.0.1:9"))
    settings = Settings(
        plugins_toml=plugins,
        database=db_name,
        data_dir=tmp_path / "data",
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        bench_mode=True,
        rate_limit_per_second=0.01,
        rate_limit_burst=3,
    )
    app = create_app(settings, mongodb_uri=mongo_uri)
    lift_rate_limit(app, ["make-bench"])
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    db = client[db_name]
    ordinary = issue_key(db, "partner", ["zj"], name="make-bench")
    attacker = issue_key(db, "partner", ["zj"], name="make-bench-hostile")
    server = LoopbackServer(app).start()
    try:

        def statuses(key: str, count: int) -> list[int]:
            headers = {"authorization": f"Bearer {key}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
                body = {"query": "{ branches { code } }"}
                return [http.post("/graphql", json=body).status_code for _ in range(count)]

        assert statuses(ordinary, 8) == [200] * 8
        assert statuses(attacker, 5) == [200, 200, 200, 429, 429]
        # The /healthz probe needs no key and is not limited.
        probe = health_probe(server.url)
        answers = [asyncio.run(probe(random.Random())) for _ in range(3)]
        assert answers == [Answer(True, "served")] * 3
    finally:
        server.stop()
        client.drop_database(db_name)
        client.close()


def test_lift_rate_limit_refuses_an_app_without_one_gate() -> None:
    from starlette.applications import Starlette

    with pytest.raises(RuntimeError, match="one ApiKeyGate"):
        lift_rate_limit(Starlette(), ["make-bench"])
