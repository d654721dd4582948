"""/metrics on the API port of the real app over HTTP: the token rules, bounded labels, metrics off.

The scrape through a real ``branchpay serve`` (workers, counters moving by
exact amounts, the metrics port) is tests/cli/test_serve_metrics.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from api.telemetry.metrics import OPERATION_NAMES_CAP
from tests.schema.test_mutation import order_input
from tests.services.conftest import order_feed
from tests.web.test_websocket import CREATE

TOKEN = "scrape-" + "t" * 30


def test_without_a_token_configured_the_api_port_says_how_to_enable_metrics(
    start_service: Callable[..., Any],
) -> None:
    service = start_service()
    answer = httpx.get(f"{service.url}/metrics", headers={"authorization": "Bearer anything"})
    assert answer.status_code == 404
    error = answer.json()["errors"][0]
    assert error["extensions"]["code"] == "NOT_FOUND"
    assert "BRANCHPAY_METRICS_TOKEN" in error["message"]
    assert "BRANCHPAY_METRICS_PORT" in error["message"]


def test_a_missing_or_wrong_token_is_refused_with_a_coded_401(
    start_service: Callable[..., Any],
) -> None:
    service = start_service(metrics_token=TOKEN)
    for headers in ({}, {"authorization": "Bearer " + TOKEN[:-1]}, {"authorization": TOKEN}):
        answer = httpx.get(f"{service.url}/metrics", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert "branchpay_" not in answer.text
    good = httpx.get(f"{service.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200
    assert "branchpay_graphql_requests_total" in good.text


def operation_labels(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "branchpay_graphql_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    name = sample.labels["operation"]
                    found[name] = found.get(name, 0.0) + sample.value
    return found


def test_a_flood_of_operation_names_stays_bounded(start_service: Callable[..., Any]) -> None:
    service = start_service(metrics_token=TOKEN)
    flood = OPERATION_NAMES_CAP + 50
    for n in range(flood):
        service.client.data(f"query Flood{n} {{ branches {{ code }} }}")
    service.client.data("{ branches { code } }")
    # Not a GraphQL name: never a label, whatever the caller sends.
    answer = service.client.post(
        "query q { branches { code } }",
    )
    assert "errors" not in answer
    odd = httpx.post(
        f"{service.url}/graphql",
        json={"query": "query q { branches { code } }", "operationName": "/orders/13912345678"},
        headers={"authorization": f"Bearer {service.client.key}"},
    )
    assert odd.status_code == 400
    scraped = httpx.get(f"{service.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    labels = operation_labels(scraped.text)
    assert len(labels) <= OPERATION_NAMES_CAP + 2  # the names kept, "anonymous", "other"
    assert labels["anonymous"] >= 1
    assert labels["other"] >= flood - OPERATION_NAMES_CAP
    assert not [name for name in labels if "/" in name or "1391234" in name]


def test_with_metrics_off_nothing_is_recorded_or_served(start_service: Callable[..., Any]) -> None:
    service = start_service(metrics=False, metrics_token=TOKEN)

    def count() -> float:
        return (
            REGISTRY.get_sample_value(
                "branchpay_graphql_requests_total",
                {"type": "query", "operation": "OffBranches", "outcome": "ok"},
            )
            or 0.0
        )

    before = count()
    for _ in range(3):
        service.client.data("query OffBranches { branches { code } }")
    assert count() == before
    answer = httpx.get(f"{service.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    error = answer.json()["errors"][0]
    assert error["extensions"]["code"] == "NOT_FOUND"
    assert "BRANCHPAY_METRICS" in error["message"]


def scrape(service: Any) -> str:
    answer = httpx.get(f"{service.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    return answer.text


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return 0.0


def test_rate_limited_requests_are_counted_by_the_key_name(
    start_service: Callable[..., Any],
) -> None:
    # `{ branches { code } }` costs 6 points, plus 1 on arrival: three fit in 21.
    service = start_service(
        metrics_token=TOKEN, rate_limit_per_second=0.5, rate_limit_burst=21, max_query_cost=21
    )
    noisy = service.client_for("partner", "zj")
    name = service.db["api_keys"].find_one({"role": "partner"})["name"]
    before = sample(
        scrape(service), "branchpay_rate_limited_requests_total", budget="per-key", key=name
    )
    answers = [
        noisy.http.post("/graphql", json={"query": "{ branches { code } }"}) for _ in range(5)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    after = sample(
        scrape(service), "branchpay_rate_limited_requests_total", budget="per-key", key=name
    )
    assert after - before == 2


def test_an_open_subscription_is_counted_until_it_ends(
    start_service: Callable[..., Any],
) -> None:
    service = start_service(metrics_token=TOKEN)
    created = service.client.data(CREATE, {"input": order_input(idempotencyKey="metrics-live")})
    order_id = created["createOrder"]["order"]["id"]
    assert sample(scrape(service), "branchpay_subscriptions_open") == 0

    async def follow() -> None:
        async with order_feed(service.client, order_id) as feed:
            assert await feed.statuses_until("PENDING_PAYMENT") == ["PENDING_PAYMENT"]
            assert sample(scrape(service), "branchpay_subscriptions_open") == 1

    asyncio.run(follow())
    deadline = time.monotonic() + 5
    while sample(scrape(service), "branchpay_subscriptions_open") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sample(scrape(service), "branchpay_subscriptions_open") == 0


def test_a_refused_reload_is_counted_and_the_config_age_is_sampled(
    start_service: Callable[..., Any],
) -> None:
    service = start_service(metrics_token=TOKEN)
    before = scrape(service)
    service.plugins_toml.write_text("[branches.zj]\nname = 1\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if httpx.get(f"{service.url}/readyz").json()["checks"]["config"]["error"]:
            break
        time.sleep(0.2)
    after = scrape(service)
    name = "branchpay_config_reloads_total"
    assert sample(after, name, result="refused") - sample(before, name, result="refused") == 1
    assert sample(after, name, result="applied") == sample(before, name, result="applied")
    assert sample(after, "branchpay_config_age_seconds") >= 0
