"""Requests that are not one readable GraphQL operation get a JSON error with a code, over real HTTP.

Never plain text, never INTERNAL, never a logged traceback: each case of issue
11's finding 5, and the rule that a request without a valid key is refused
(401) before anything of it is read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import RunningService

QUERY = "{ branches { code } }"
DEEP = 5000


def deep_variables() -> bytes:
    nested = "[" * DEEP + "]" * DEEP
    return f'{{"query": "query($f: OrderFilter) {{ orders(filter: $f) {{ totalCount }} }}", "variables": {{"f": {nested}}}}}'.encode()


JSON = {"content-type": "application/json"}

# (what is sent, body, headers, expected status)
POSTS: list[tuple[str, bytes, dict[str, str], int]] = [
    ("a JSON string", json.dumps(QUERY).encode(), JSON, 400),
    ("null", b"null", JSON, 400),
    ("a number", b"42", JSON, 400),
    ("true", b"true", JSON, 400),
    ("invalid UTF-8", b'{"query": "{ branches { code } }\xff\xfe"}', JSON, 400),
    ("invalid JSON", b"{not json", JSON, 400),
    ("an empty body", b"", JSON, 400),
    ("variables nested 5,000 deep", deep_variables(), JSON, 400),
    ("a batch", json.dumps([{"query": QUERY}, {"query": QUERY}]).encode(), JSON, 400),
    ("an empty batch", b"[]", JSON, 400),
    ("a number as query", json.dumps({"query": 42}).encode(), JSON, 400),
    ("a list as query", json.dumps({"query": [QUERY]}).encode(), JSON, 400),
    ("variables as a string", json.dumps({"query": QUERY, "variables": "{}"}).encode(), JSON, 400),
    ("variables as a list", json.dumps({"query": QUERY, "variables": [1]}).encode(), JSON, 400),
    (
        "a number as operationName",
        json.dumps({"query": QUERY, "operationName": 7}).encode(),
        JSON,
        400,
    ),
    ("extensions as a list", json.dumps({"query": QUERY, "extensions": []}).encode(), JSON, 400),
    (
        "a persisted query without query",
        json.dumps(
            {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab" * 32}}}
        ).encode(),
        JSON,
        400,
    ),
    ("no query", b"{}", JSON, 400),
    ("only variables", json.dumps({"variables": {}}).encode(), JSON, 400),
    ("a null query", json.dumps({"query": None}).encode(), JSON, 400),
    (
        "an unknown operationName",
        json.dumps({"query": "query A { branches { code } }", "operationName": "B"}).encode(),
        JSON,
        400,
    ),
    (
        "a subscription",
        json.dumps({"query": 'subscription { orderEvents(orderId: "x") { status } }'}).encode(),
        JSON,
        400,
    ),
    ("text/plain", json.dumps({"query": QUERY}).encode(), {"content-type": "text/plain"}, 415),
    (
        "a form",
        b"query=%7B+branches+%7B+code+%7D+%7D",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
    ),
    ("no content type", json.dumps({"query": QUERY}).encode(), {}, 415),
    ("application/graphql", QUERY.encode(), {"content-type": "application/graphql"}, 415),
    (
        "multipart",
        b'--x\r\nContent-Disposition: form-data; name="operations"\r\n\r\n{}\r\n--x--\r\n',
        {"content-type": "multipart/form-data; boundary=x"},
        415,
    ),
]

GETS: list[tuple[str, dict[str, str] | list[tuple[str, str]], int]] = [
    (
        "a mutation",
        {"query": 'mutation { cancelOrder(input: {orderId: "x"}) { userErrors { code } } }'},
        405,
    ),
    ("variables that are not JSON", {"query": QUERY, "variables": "{nope"}, 400),
    ("variables that are a list", {"query": QUERY, "variables": "[1]"}, 400),
    ("extensions that are not JSON", {"query": QUERY, "extensions": "{"}, 400),
    ("query twice", [("query", QUERY), ("query", "{ __typename }")], 400),
    ("no query", {"variables": "{}"}, 400),
    ("an empty query", {"query": ""}, 400),
    ("a subscription", {"query": 'subscription { orderEvents(orderId: "x") { status } }'}, 400),
    (
        "variables nested 5,000 deep",
        {"query": QUERY, "variables": '{"a":' + "[" * DEEP + "]" * DEEP + "}"},
        400,
    ),
]


def assert_refused(response: httpx.Response, status: int, what: str) -> dict[str, Any]:
    assert response.status_code == status, (what, response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", (what, response.headers)
    body: dict[str, Any] = response.json()
    assert body["data"] is None, (what, body)
    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}, (what, body)
    assert error["message"] and "Traceback" not in response.text, (what, body)
    return body


def test_malformed_posts_get_a_json_error_with_a_code(
    start_service: Any, watch_errors: Callable[[], list[logging.LogRecord]]
) -> None:
    service: RunningService = start_service()
    logged_errors = watch_errors()
    http = service.client.http
    messages = {}
    for what, content, headers, status in POSTS:
        response = http.post("/graphql", content=content, headers=headers)
        messages[what] = assert_refused(response, status, what)["errors"][0]["message"]
    assert "batching is not supported" in messages["a batch"]
    assert "persisted queries are not supported" in messages["a persisted query without query"]
    assert "nested too deeply" in messages["variables nested 5,000 deep"]
    assert "not UTF-8" in messages["invalid UTF-8"]
    assert "WebSocket" in messages["a subscription"]
    assert "application/json" in messages["text/plain"]
    assert logged_errors == []
    assert service.client.data(QUERY)["branches"]


def test_malformed_gets_and_other_methods_get_a_json_error_with_a_code(
    start_service: Any, watch_errors: Callable[[], list[logging.LogRecord]]
) -> None:
    service: RunningService = start_service()
    logged_errors = watch_errors()
    http = service.client.http
    accept_json = {"accept": "application/json"}
    for what, params, status in GETS:
        response = http.get("/graphql", params=params, headers=accept_json)
        assert_refused(response, status, what)
    over_get = http.get(
        "/graphql",
        params={"query": 'mutation { cancelOrder(input: {orderId: "x"}) { userErrors { code } } }'},
    )
    assert over_get.headers["allow"] == "POST"
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        response = http.request(method, "/graphql", json={"query": QUERY})
        assert_refused(response, 405, method)
        assert response.headers["allow"] == "GET, POST"
    assert http.get("/graphql", params={"query": QUERY}).json()["data"]["branches"]
    assert logged_errors == []


def test_without_a_valid_key_a_malformed_request_is_refused_before_it_is_read(
    start_service: Any, watch_errors: Callable[[], list[logging.LogRecord]]
) -> None:
    # Dozens of failed logins from one address: the limit on them has tests of its own.
    service: RunningService = start_service(
        failed_auth_per_second=1_000_000.0, failed_auth_burst=1_000_000
    )
    logged_errors = watch_errors()
    for headers in ({}, {"authorization": "Bearer bp_000000000000_" + "x" * 43}):
        with httpx.Client(base_url=service.url, headers=headers, timeout=30.0) as stranger:
            for what, content, content_type, _ in POSTS:
                response = stranger.post("/graphql", content=content, headers=content_type)
                assert response.status_code == 401, (what, response.text[:200])
                assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
            for what, params, _ in GETS:
                if isinstance(params, dict) and not params.get("query"):
                    continue  # a GET without query may be a browser opening GraphiQL: below
                response = stranger.get("/graphql", params=params)
                assert response.status_code == 401, (what, response.text[:200])
            assert stranger.put("/graphql", json={"query": QUERY}).status_code == 401
            # The gate lets a GET without a query through (GraphiQL's page); the
            # view refuses it before reading any other parameter.
            nested = '{"a":' + "[" * DEEP + "]" * DEEP + "}"
            response = stranger.get(
                "/graphql", params={"variables": nested}, headers={"accept": "application/json"}
            )
            body = assert_refused(response, 400, "a GET without query")
            assert "no GraphQL query" in body["errors"][0]["message"]
            # An empty query is a query: it needs a key like any other.
            empty = stranger.get("/graphql", params={"query": "", "extensions": nested})
            assert empty.status_code == 401
    assert logged_errors == []
