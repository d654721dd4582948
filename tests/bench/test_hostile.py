"""The hostile scenario's parts: the worst-document generator, the attacker's answers, the probe.

The documents are checked against the service's own limits
(``api.schema.limits``): each passes them, one step more is refused, and
each is valid for the schema. The bench's exemption for its own key is
checked through real uvicorn and a real store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import GraphQLSyntaxError, build_schema, parse, validate
from pymongo import MongoClient

from api.schema import schema as service_schema
from api.schema.limits import LimitError, measure_request
from api.settings import Settings
from bench.hostile import (
    Limits,
    fragments_document,
    largest,
    pages_document,
    repeats_document,
    token_count,
    wide_document,
    worst_documents,
)
from bench.plain import BenchBudget, bench_app
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
    refusal_code,
)
from tests.conftest import DEMO_BRANCHES_TOML, issue_key

DEFAULTS = Settings()


def test_largest_finds_the_last_allowed_size() -> None:
    assert largest(lambda n: n <= 37, 100) == 37
    assert largest(lambda n: n <= 500, 100) == 100
    assert largest(lambda n: False, 100) == 0
    assert largest(lambda n: n <= 1, 1) == 1


def test_the_ordinary_request_is_within_the_default_limits() -> None:
    # (a) must pass what the attacker is held to, or the baseline measures refusals.
    measure = measure_request(
        service_schema._schema, parse(ORDERS_QUERY), {"first": 50}, None, DEFAULTS
    )
    assert measure.cost <= DEFAULTS.max_query_cost


def test_token_count_is_what_the_parser_limits() -> None:
    document = fragments_document(7)
    tokens = token_count(document)
    parse(document, max_tokens=tokens)
    with pytest.raises(GraphQLSyntaxError):
        parse(document, max_tokens=tokens - 1)


def _refused(document: str, settings: Settings) -> bool:
    """Whether the service refuses ``document``: over the tokens, or a limit it names."""
    if token_count(document) > settings.max_tokens:
        return True
    with pytest.raises(LimitError, match=r"\(max_\w+\)"):
        measure_request(service_schema._schema, parse(document), {}, None, settings)
    return True


@pytest.mark.parametrize(
    "settings",
    [
        DEFAULTS,
        Settings(
            max_query_cost=600, max_aliases=3, max_tokens=300, max_page_size=50, count_cost=20
        ),
        Settings(max_query_cost=40_000, rate_limit_burst=40_000, list_cost_factor=2, max_aliases=4),
    ],
    ids=["defaults", "tight", "generous"],
)
def test_worst_documents_pass_the_service_limits_and_one_step_more_does_not(
    settings: Settings,
) -> None:
    limits = Limits(settings)
    documents = {d.shape: d for d in worst_documents(settings)}
    assert set(documents) == {"pages", "wide", "fragments", "repeats"}
    for document in documents.values():
        assert document.tokens == token_count(document.query) <= settings.max_tokens
        measure = measure_request(limits.schema, parse(document.query), {}, None, settings)
        assert document.cost == measure.cost <= settings.max_query_cost
        assert document.query.startswith("query Hostile {")

    pages, first = documents["pages"].parameters["pages"], documents["pages"].parameters["first"]
    if first < settings.max_page_size:
        assert _refused(pages_document(pages, first + 1), settings)
    # One more page of that size would read more orders: the service refuses it.
    assert _refused(pages_document(pages + 1, first), settings)

    wide = documents["wide"].parameters
    assert wide["pages"] == settings.max_aliases + 1  # every alias the limit allows
    if wide["first"] < settings.max_page_size:
        assert _refused(wide_document(wide["pages"], wide["first"] + 1), settings)
    assert _refused(wide_document(wide["pages"] + 1, 1), settings)  # aliases
    for shape, builder in (("fragments", fragments_document), ("repeats", repeats_document)):
        assert _refused(builder(documents[shape].parameters["count"] + 1), settings), shape


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


@pytest.fixture(scope="module")
def defaults() -> tuple[HostileDocument, ...]:
    """The worst documents for the default settings."""
    return worst_documents(DEFAULTS)


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


def test_bench_budget_spends_nothing_of_its_named_keys() -> None:
    now = [0.0]
    settings = Settings(rate_limit_per_second=1.0, rate_limit_burst=10, max_query_cost=10)
    # Not attached to a store: the process's own bucket, as during a store outage.
    budget = BenchBudget(settings, ["make-bench"], clock=lambda: now[0])

    async def spends(key: str, times: int) -> list[tuple[int, int]]:
        return [((s := await budget.take(key, 6)).wait, s.remaining) for _ in range(times)]

    assert asyncio.run(spends("key:make-bench", 50)) == [(0, 10)] * 50
    # 4 points left, 6 wanted: 2 seconds at 1 point a second.
    assert asyncio.run(spends("key:attacker", 2)) == [(0, 4), (2, 4)]


def test_bench_app_lets_only_the_named_key_past_the_rate_limit_and_probes_pass(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    """Through real uvicorn and a real store: the bench's key is unlimited, the attacker's is not."""
    from providers.kit.loopback import LoopbackServer

    (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
    plugins = tmp_path / "plugins.toml"
    plugins.write_text(DEMO_BRANCHES_TOML.format(gateway="http://127.0.0.1:9"))
    settings = Settings(
        plugins_toml=plugins,
        database=db_name,
        data_dir=tmp_path / "data",
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        rate_limit_per_second=0.01,
        rate_limit_burst=20,
        max_query_cost=20,
    )
    app = bench_app(settings, ["make-bench"], mongodb_uri=mongo_uri)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    db = client[db_name]
    ordinary = issue_key(db, "partner", ["zj"], name="make-bench")
    attacker = issue_key(db, "partner", ["zj"], name="make-bench-hostile")
    server = LoopbackServer(app).start()
    try:

        def answers(key: str, count: int) -> list[str]:
            headers = {"authorization": f"Bearer {key}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
                body = {"query": "{ branches { code } }"}  # 1 on arrival + 6 points
                return [
                    refusal_code(response.status_code, response.content)
                    if b'"errors"' in (response := http.post("/graphql", json=body)).content
                    else "served"
                    for _ in range(count)
                ]

        assert answers(ordinary, 8) == ["served"] * 8
        # 20 points: two requests of 7, then the cost no longer fits, then not even arrival.
        refused = answers(attacker, 4)
        assert refused[:2] == ["served", "served"]
        assert all(answer.endswith(" RATE_LIMITED") for answer in refused[2:]), refused
        # The /healthz probe needs no key and is not limited.
        probe = health_probe(server.url)
        answers = [asyncio.run(probe(random.Random())) for _ in range(3)]
        assert answers == [Answer(True, "served")] * 3
    finally:
        server.stop()
        client.drop_database(db_name)
        client.close()
