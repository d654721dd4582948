"""Issue 15's bench scenarios at a tiny size, wired as ``make bench`` runs them.

The ops-wide page (a-ops) and its explain, (b) without the key cache, idle
subscriptions and their fan-out (s), and (a) on more than one process: each on
the bench's API process (uvicorn, ``bench.server``) on the suite's store.
Nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from api.cli import prepare_demo
from api.dev.seed import seed
from api.domain.pii import PiiVault
from api.domain.principal import Role
from api.settings import Settings
from api.store import Store
from bench.loadgen import measure
from bench.procstat import tree
from bench.report import Run
from bench.run import bench_key
from bench.scale import (
    OPS_KEY_NAME,
    explain_ops_page,
    key_cache_off,
    subscription_scenario,
    subscriptions_config,
)
from bench.scenarios import ORDERS_QUERY, Scenario, Spec, Target, http_request
from bench.server import ApiConfig, ApiProcess, running_api, write_plugins_toml
from bench.subscriptions import BASELINE_SUBSCRIPTIONS, fan_out
from bench.synthetic import BRANCHES
from tests.conftest import RunningService
from tests.schema.test_query_round_trips import QUIET, commands_for

ROOT = Path(__file__).resolve().parents[2]


async def _database(uri: str, database: str, vault: PiiVault, orders: int) -> None:
    store = Store.connect(uri, database)
    try:
        await store.ensure_indexes()
        await seed(store, branches=BRANCHES, orders=orders, ttl=timedelta(minutes=30), vault=vault)
    finally:
        await store.close()


@pytest.fixture
def bench_api(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> Iterator[tuple[ApiConfig, dict[str, str]]]:
    """The bench's API configuration on a seeded database, and keys by role."""
    settings = Settings(data_dir=tmp_path)
    prepare_demo(settings)
    asyncio.run(_database(mongo_uri, db_name, PiiVault(settings.pii_master_key()), 120))
    keys = {
        "partner": asyncio.run(bench_key(mongo_uri, [db_name])),
        "ops": asyncio.run(bench_key(mongo_uri, [db_name], OPS_KEY_NAME, Role.OPS)),
    }
    config = ApiConfig(
        write_plugins_toml(tmp_path, "http://127.0.0.1:9", ROOT / "plugins.toml"),
        {
            "BRANCHPAY_PII_KEY_FILE": str(settings.pii_key_file),
            "BRANCHPAY_RATE_LIMIT_PER_SECOND": "1000000",
            "BRANCHPAY_RATE_LIMIT_BURST": "1000000",
        },
    )
    try:
        yield config, keys
    finally:
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        client.drop_database(db_name)
        client.close()


def _spec(api: ApiProcess, uri: str, database: str, key: str, **changes: Any) -> Spec:
    fields: dict[str, Any] = {
        "scenario": Scenario.ORDERS,
        "target": Target.GRAPHQL,
        "concurrency": 2,
        "duration": 1.0,
        "warmup": 0.3,
        "orders": 120,
        "base": datetime.now(UTC),
        "base_url": api.url,
        "mongodb_uri": uri,
        "database": database,
        "headers": (("authorization", f"Bearer {key}"),),
        **changes,
    }
    return Spec(**fields)


def test_the_ops_page_is_the_newest_fifty_of_every_branch_with_its_plan(
    tmp_path: Path, mongo_uri: str, db_name: str, bench_api: tuple[ApiConfig, dict[str, str]]
) -> None:
    config, keys = bench_api
    with running_api(
        mongo_uri, db_name, workers=1, log_path=tmp_path / "api.log", config=config
    ) as api:
        spec = _spec(api, mongo_uri, db_name, keys["ops"], scenario=Scenario.ORDERS_ALL)
        request = http_request(spec, random.Random(1))
        assert request.json == {"query": ORDERS_QUERY, "variables": {"filter": None, "first": 50}}
        answer = httpx.post(f"{api.url}/graphql", json=request.json, headers=dict(spec.headers))
        edges = answer.json()["data"]["orders"]["edges"]
        created = [edge["node"]["createdAt"] for edge in edges]
        assert len(edges) == 50 and created == sorted(created, reverse=True)
        # All branches: the seeded orders of several branches share the newest fifty.
        assert len({edge["node"]["branch"]["code"] for edge in edges}) > 1
        measured = measure(spec, api.pid, api.idle_cpu_rate)
        assert measured.outcome.requests > 0 and measured.outcome.errors == 0
    explained = explain_ops_page(mongo_uri, db_name)
    assert "error" not in explained, explained
    # Newest first across branches on an index; MongoDB stops at the page and one more,
    # SecantusDB's Python server counts every key it walked (docs/performance.md).
    assert "IXSCAN" in explained["stages"] and not explained["inMemorySort"]
    assert explained["returned"] >= 51 and explained["keysExamined"] >= 51


def test_without_the_key_cache_every_request_reads_its_key(start_service: Any) -> None:
    """The bench's "before" of (b): ``BRANCHPAY_KEY_CACHE=false`` reads the key every time."""
    service: RunningService = start_service(orders=150, key_cache=False, **QUIET)
    for _ in range(2):
        # The key's find beside the page's, the payments' and the count, every time.
        assert sorted(commands_for(service, 5)) == [
            "aggregate",
            "find",
            "find",
            "find",
            "findAndModify",
        ]


def test_order_by_id_runs_on_an_api_without_the_key_cache(
    tmp_path: Path, mongo_uri: str, db_name: str, bench_api: tuple[ApiConfig, dict[str, str]]
) -> None:
    config, keys = bench_api
    assert key_cache_off(config).environment["BRANCHPAY_KEY_CACHE"] == "false"
    assert "BRANCHPAY_KEY_CACHE" not in config.environment
    with running_api(
        mongo_uri, db_name, workers=1, log_path=tmp_path / "api.log", config=key_cache_off(config)
    ) as api:
        # Synthetic ids the seeded database lacks: answered null, the key read all the same.
        for target in (Target.GRAPHQL, Target.PLAIN):
            spec = _spec(api, mongo_uri, db_name, keys["partner"], scenario=Scenario.ORDER)
            measured = measure(replace(spec, target=target), api.pid, api.idle_cpu_rate)
            assert measured.outcome.requests > 0 and measured.outcome.errors == 0


def test_idle_subscriptions_each_get_their_orders_write_once(
    tmp_path: Path, mongo_uri: str, db_name: str, bench_api: tuple[ApiConfig, dict[str, str]]
) -> None:
    config, keys = bench_api
    count = BASELINE_SUBSCRIPTIONS + 5
    with running_api(
        mongo_uri,
        db_name,
        workers=1,
        log_path=tmp_path / "api.log",
        config=subscriptions_config(config, count),
    ) as api:
        spec = _spec(api, mongo_uri, db_name, keys["partner"])
        run = Run(started=datetime.now(UTC), store="the suite's", arguments={})
        ratios = subscription_scenario(run, spec, api, count, 50.0, lambda _: None)
        # Past the per-key limit's default the bench raises it; the orders were used up
        # (CANCELLED), so another pass creates new ones over GraphQL.
        again = fan_out(spec, api.pid, 3, 50.0)
    passes = run.extra["subscriptions"]["passes"]
    assert set(passes) == {str(BASELINE_SUBSCRIPTIONS), str(count)}
    for subscriptions, figures in passes.items():
        assert figures["opened"] == int(subscriptions)
        assert (figures["received"], figures["missing"]) == (int(subscriptions), 0)
        assert figures["rssAfter"] > 0 and figures["rssBefore"] > 0
    assert (again.opened, len(again.latencies), again.missing) == (3, 3, 0)
    assert [ratio.name for ratio in ratios] == [
        f"(s) RSS per idle subscription ({count} open)",
        f"(s) API RSS with {count} subscriptions / without",
        f"(s) fan-out p99, write to receipt ({count} open)",
        f"(s) fan-out p99 with {count} open / with {BASELINE_SUBSCRIPTIONS}",
    ]
    with MongoClient(mongo_uri) as client:
        cancelled = client[db_name]["orders"].count_documents(
            {"statusHistory.reason": "make bench fan-out"}
        )
    assert cancelled == BASELINE_SUBSCRIPTIONS + count + 3


def test_two_workers_are_two_processes_serving_the_page(
    tmp_path: Path, mongo_uri: str, db_name: str, bench_api: tuple[ApiConfig, dict[str, str]]
) -> None:
    config, keys = bench_api
    with running_api(
        mongo_uri, db_name, workers=2, log_path=tmp_path / "api.log", config=config
    ) as api:
        # uvicorn's supervisor and its two workers (each with whatever it spawns).
        assert len(tree(api.pid)) >= 3
        measured = measure(
            _spec(api, mongo_uri, db_name, keys["partner"]), api.pid, api.idle_cpu_rate
        )
    assert measured.outcome.requests > 0 and measured.outcome.errors == 0
    assert measured.server_cpu > 0
