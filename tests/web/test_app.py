"""The HTTP surface beside the resolvers: health, GraphiQL, body limit, malformed requests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx

from tests.conftest import RunningService


def test_health_and_readiness(start_service: Any) -> None:
    service: RunningService = start_service()
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok", "pid": os.getpid()}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["store"] == "ok"
    assert body["checks"]["config"]["ok"] is True


def test_graphiql_opens_on_get(start_service: Any) -> None:
    service: RunningService = start_service()
    page = httpx.get(f"{service.url}/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()


def test_bodies_over_one_mebibyte_are_refused(start_service: Any) -> None:
    service: RunningService = start_service()
    padding = " " * (1024 * 1024)
    declared = httpx.post(
        f"{service.url}/graphql",
        content=f'{{"query": "{{ branches {{ code }} }}{padding}"}}',
        headers={"content-type": "application/json"},
    )
    assert declared.status_code == 413
    assert declared.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "{ branches { code } }'
        for _ in range(20):
            yield b" " * 65536
        yield b'"}'

    streamed = httpx.post(
        f"{service.url}/graphql", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    small = service.client.post("{ branches { code } }")
    assert small["data"]["branches"]


def test_malformed_graphql_is_bad_user_input(start_service: Any) -> None:
    service: RunningService = start_service()
    for query in (
        "{ branches { code ",
        "{ nosuchfield }",
        "mutation { createOrder { order { id } } }",
    ):
        body = service.client.post(query)
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"], body
        assert "Traceback" not in str(body)
    wrong_type = service.client.post(
        "query($first: Int) { orders(first: $first) { edges { cursor } } }", {"first": "ten"}
    )
    assert [e["extensions"]["code"] for e in wrong_type["errors"]] == ["BAD_USER_INPUT"]
    not_json = service.client.http.post(
        "/graphql", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400


def test_internal_errors_are_masked_with_an_error_id(start_service: Any) -> None:
    service: RunningService = start_service()
    service.db.orders.insert_one(
        {"branch": "zj", "status": "PAID", "idempotencyKey": "broken-0001"}
    )
    body = service.client.post("{ orders(first: 5) { edges { node { id total { amountFen } } } } }")
    error = body["errors"][0]
    assert error["extensions"]["code"] == "INTERNAL"
    assert error["extensions"]["errorId"] in error["message"]
    assert "KeyError" not in str(body) and "totalFen" not in str(body)
