"""Scenario (w)'s parts: the partner receiver, the parts of a request, and the whole wiring.

The wiring runs as ``make bench`` does: the bench's API process (uvicorn,
``bench.server``), the sandbox simulator and the receiver each in a process of
their own, on the suite's store. Nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from api.cli import prepare_demo
from api.dev.seed import seed
from api.domain.pii import PiiVault
from api.settings import Settings
from api.store import Store
from bench.loadgen import Outcome, measure
from bench.percentiles import NO_DATA, Percentile
from bench.receiver import count, received, running_receiver
from bench.report import Run
from bench.run import bench_key
from bench.scenarios import Scenario, Spec, Target
from bench.server import ApiConfig, running_api, running_gateway, write_plugins_toml
from bench.synthetic import BRANCHES
from bench.webhooks import LOAD_EVENT, PAID_EVENT, webhook_scenario

ROOT = Path(__file__).resolve().parents[2]


def _event(kind: str, order: str) -> bytes:
    return json.dumps(
        {
            "id": "evt_1",
            "type": kind,
            "timestamp": "2026-12-02T00:14:19.300000Z",
            "data": {"order": {"id": order}},
        }
    ).encode()


def test_the_receiver_answers_200_at_once_and_keeps_each_arrival(tmp_path: Path) -> None:
    with running_receiver(tmp_path / "receiver.log") as url, httpx.Client(base_url=url) as http:
        # One connection, kept alive, and one closed after its request: both are read.
        first = http.post("/hook", content=_event(PAID_EVENT, "T3JkZXI6MQ"))
        assert (first.status_code, first.content) == (200, b"")
        closed = http.post(
            "/hook", content=_event(LOAD_EVENT, "T3JkZXI6Mg"), headers={"connection": "close"}
        )
        assert closed.status_code == 200
        assert http.post("/hook", content=b"not json").status_code == 200
        waited = http.get(f"/wait/{PAID_EVENT}/T3JkZXI6MQ")
        assert waited.status_code == 200
        rows = received(url)
        assert [(kind, order) for _at, _wall, kind, order, _written in rows] == [
            (PAID_EVENT, "T3JkZXI6MQ"),
            (LOAD_EVENT, "T3JkZXI6Mg"),
            ("unreadable", ""),
        ]
        assert waited.json()["at"] == rows[0][0]
        assert rows[0][4] == datetime(2026, 12, 2, 0, 14, 19, 300000, tzinfo=UTC).timestamp()
        assert count(url, LOAD_EVENT) == (1, rows[1][0])
        assert count(url, "refund.failed") == (0, None)
        assert http.get("/elsewhere").status_code == 404


def test_a_part_of_each_request_becomes_an_outcome_of_its_own() -> None:
    outcome = Outcome(
        requests=3,
        censored=1,
        errors=1,
        failures={"RoundTripFailed": 1},
        answers={"served": 2, "RoundTripFailed": 1},
        seconds=5.0,
        p50=NO_DATA,
        p90=NO_DATA,
        p99=NO_DATA,
        max=NO_DATA,
        generator_cpu=0.1,
        window=(10.0, 15.0),
        parts={"webhook": (0.3, 0.1), "subscription": (0.02, 0.01)},
    )
    webhook = outcome.part("webhook")
    assert (webhook.requests, webhook.censored, webhook.errors) == (2, 0, 0)
    assert webhook.p50 == Percentile(0.1) and webhook.max == Percentile(0.3)
    assert (webhook.seconds, webhook.window, webhook.parts) == (5.0, (10.0, 15.0), {})
    assert math.isnan(outcome.part("missing").p50.seconds)


async def _writes_database(uri: str, database: str, vault: PiiVault) -> None:
    store = Store.connect(uri, database)
    try:
        await store.ensure_indexes()
        await seed(store, branches=BRANCHES, orders=0, ttl=timedelta(minutes=30), vault=vault)
    finally:
        await store.close()


def test_the_webhook_scenario_is_wired_as_make_bench_runs_it(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    settings = Settings(data_dir=tmp_path)
    prepare_demo(settings)
    asyncio.run(_writes_database(mongo_uri, db_name, PiiVault(settings.pii_master_key())))
    key = asyncio.run(bench_key(mongo_uri, [db_name]))
    logs = tmp_path / "logs"
    run = Run(started=datetime.now(UTC), store="the suite's", arguments={})
    try:
        with (
            running_gateway(tmp_path, logs / "sandbox.log") as gateway,
            running_receiver(logs / "receiver.log") as receiver_url,
        ):
            config = ApiConfig(
                write_plugins_toml(tmp_path, gateway, ROOT / "plugins.toml"),
                {
                    "BRANCHPAY_PII_KEY_FILE": str(settings.pii_key_file),
                    "BRANCHPAY_RATE_LIMIT_PER_SECOND": "1000000",
                    "BRANCHPAY_RATE_LIMIT_BURST": "1000000",
                },
            )
            with running_api(
                mongo_uri, db_name, workers=1, log_path=logs / "api.log", config=config
            ) as api:
                spec = Spec(
                    scenario=Scenario.CREATE,
                    target=Target.GRAPHQL,
                    concurrency=2,
                    duration=2.0,
                    warmup=0.5,
                    orders=1,
                    base=datetime.now(UTC),
                    base_url=api.url,
                    mongodb_uri=mongo_uri,
                    database=db_name,
                    headers=(("authorization", f"Bearer {key}"),),
                    gateway_url=gateway,
                )

                def measure_row(label: str, row: Spec) -> Any:
                    return run.add(label, measure(row, api.pid, api.idle_cpu_rate))

                ratios = webhook_scenario(
                    run, spec, api, receiver_url, 0.005, 1, measure_row, lambda _: None
                )
                arrived = received(receiver_url)
    finally:
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        client.drop_database(db_name)
        client.close()

    rows = dict(run.measurements)
    during, backlog = f"{LOAD_EVENT}, during (c) at 2 in flight", f"{LOAD_EVENT} backlog, after (c)"
    # The backlog has a row when some of it was delivered after the load.
    assert [label for label in rows if label != backlog] == [
        "graphql, webhook endpoint",
        during,
        "pay round trip, 1 in flight",
        "/notify to orderEvents PAID",
        f"/notify to {PAID_EVENT} received",
    ]
    load = rows["graphql, webhook endpoint"]
    assert load.spec.scenario is Scenario.CREATE and load.outcome.errors == 0
    deliveries = run.extra["webhooks"]["deliveries"]
    assert deliveries["ordersCreated"] >= load.outcome.requests > 0
    assert rows[during].spec.scenario is Scenario.WEBHOOK
    assert rows[during].outcome.requests == deliveries["duringLoad"]["requests"]
    delivered = rows[during].outcome.requests + (
        rows[backlog].outcome.requests if backlog in rows else 0
    )
    assert delivered + deliveries["drain"]["left"] >= deliveries["drain"]["backlog"]
    pay = rows["pay round trip, 1 in flight"]
    assert pay.spec.scenario is Scenario.WEBHOOK
    assert pay.outcome.errors == 0 and pay.outcome.requests > 0
    for part in ("/notify to orderEvents PAID", f"/notify to {PAID_EVENT} received"):
        assert rows[part].outcome.requests == pay.outcome.requests
        assert rows[part].cpu_shared
    # Every round trip's order.paid reached the receiver; the order.created of (c) did too.
    paid = {order for _at, _wall, kind, order, _written in arrived if kind == PAID_EVENT}
    assert len(paid) >= pay.outcome.requests
    assert any(kind == LOAD_EVENT for _at, _wall, kind, _order, _written in arrived)
    assert [ratio.name for ratio in ratios] == [
        f"(w) {LOAD_EVENT} deliveries/s / createOrder req/s (same window)",
        "(w) createOrder CPU/request with the endpoint / without",
        "(w) p50 from /notify: webhook / orderEvents",
        "(w) p99 from /notify: webhook / orderEvents",
    ]
