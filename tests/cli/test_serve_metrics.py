"""`branchpay serve --workers 2` with a metrics token and a metrics port: scrapes count exactly.

One real serve for the module (two uvicorn workers, the demo's sandbox simulator,
the suite's store): orders are created, paid, refunded, cancelled and failed
through the simulator, one create call meets an injected 401 (a platform error:
the attempt FAILED) and one an injected 503 (the call may have reached the
platform: the attempt stays PENDING), a notification is delivered twice, a forged
one is refused, and a refund and an order are asked for twice with one idempotency
key. The counters
scraped before and after move by exactly what happened; each worker's own file
holds part of the counts and the scrape is their sum.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from api.dev.devdb import free_port
from tests.cli.test_serve_workers import ROOT
from tests.conftest import GraphQLClient, issue_key
from tests.dev.test_demo import simulator_url
from tests.schema.test_mutation import offering_id
from tests.services.conftest import order_feed
from tests.serving import serve_environment, stop

TOKEN = "metrics-token-" + "x" * 24
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

CREATE = """
mutation CreateOrder($input: CreateOrderInput!) {
  createOrder(input: $input) { order { id } userErrors { code } }
}
"""
START = """
mutation StartPayment($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { id outTradeNo status } action { qrCode } userErrors { code message }
  }
}
"""
ORDER = """
query Order($id: ID!) {
  order(id: $id) { status payments { status refunds { status } } }
}
"""
REFUND = """
mutation Refund($input: RefundPaymentInput!) {
  refundPayment(input: $input) { refund { status } userErrors { code message } }
}
"""
CANCEL = """
mutation Cancel($input: CancelOrderInput!) {
  cancelOrder(input: $input) { order { status } userErrors { code } }
}
"""


@dataclass
class Served:
    url: str
    metrics_url: str
    workdir: Path
    client: GraphQLClient
    simulator: str
    process: subprocess.Popen[bytes]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(served: Served) -> Samples:
    answer = httpx.get(f"{served.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def worker_pids(url: str) -> set[int]:
    """Both workers, seen answering on fresh connections."""
    pids: set[int] = set()
    deadline = time.monotonic() + 180  # a loaded machine starts workers slowly

    def health(_: int) -> int | None:
        try:
            pid: int = httpx.get(f"{url}/healthz", timeout=2).json()["pid"]
        except httpx.TransportError:
            return None
        return pid

    with ThreadPoolExecutor(8) as pool:
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.update(pid for pid in pool.map(health, range(16)) if pid is not None)
            time.sleep(0.1)
    return pids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("metrics-serve")
    shutil.copy(ROOT / "plugins.toml", workdir / "plugins.toml")
    port, metrics_port = free_port(), free_port()
    db_name = f"metrics_{uuid.uuid4().hex[:8]}"
    env = serve_environment(
        workdir,
        store=mongo_uri,
        database=db_name,
        BRANCHPAY_METRICS_TOKEN=TOKEN,
        BRANCHPAY_METRICS_PORT=str(metrics_port),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = workdir / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--demo", "--port", str(port), "--workers", "2"],
        cwd=workdir,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert len(worker_pids(url)) == 2, log.read_text()
        sync: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        with sync:
            key = issue_key(sync[db_name], "ops")
        yield Served(
            url,
            f"http://127.0.0.1:{metrics_port}/metrics",
            workdir,
            GraphQLClient(url, key),
            simulator_url(workdir, "sandbox"),
            process,
        )
    finally:
        stop(process)
        with MongoClient(mongo_uri) as cleanup:
            cleanup.drop_database(db_name)


def create_order(served: Served, key: str | None = None) -> str:
    created = served.client.data(
        CREATE,
        {
            "input": {
                "branch": "zj",
                "items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 1}],
                "customer": {"name": "Li Lei", "phone": "13912345678"},
                "idempotencyKey": key or uuid.uuid4().hex,
            }
        },
    )["createOrder"]
    assert created["userErrors"] == [], created
    order_id: str = created["order"]["id"]
    return order_id


def start(served: Served, order_id: str) -> dict[str, Any]:
    started: dict[str, Any] = served.client.data(
        START, {"input": {"orderId": order_id, "provider": "sandbox", "method": "QR_CODE"}}
    )["startPayment"]
    return started


def settle(qr_code: str, outcome: str) -> None:
    """The payer's choice on the simulator's pay page (the code's URL)."""
    answer = httpx.post(qr_code, data={"outcome": outcome}, timeout=30)
    assert answer.status_code == 200, answer.text


def until(served: Served, order_id: str, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        order: dict[str, Any] = served.client.data(ORDER, {"id": order_id})["order"]
        if check(order) or time.monotonic() > deadline:
            return order
        time.sleep(0.1)


def inject(served: Served, status: int) -> None:
    answer = httpx.post(f"{served.simulator}/control/faults", json={"status": status, "count": 1})
    assert answer.status_code == 200, answer.text


def test_counters_move_by_exactly_what_happened_summed_over_both_workers(
    served: Served,
) -> None:
    before = scrape(served)

    paid = create_order(served, key="same-key")
    assert create_order(served, key="same-key") == paid  # the repeat is no second order
    failed, refused, unknown, cancelled = (create_order(served) for _ in range(4))

    started = start(served, paid)
    assert started["userErrors"] == [], started
    settle(started["action"]["qrCode"], "success")
    order = until(served, paid, lambda o: o["status"] == "PAID")
    assert order["status"] == "PAID", order
    # The platform delivers the same notification again: applied once, counted as a duplicate.
    out_trade_no = started["payment"]["outTradeNo"]
    redelivered = httpx.post(f"{served.simulator}/control/notifications/{out_trade_no}/redeliver")
    assert redelivered.status_code == 200, redelivered.text

    refund_input = {
        "paymentId": started["payment"]["id"],
        "amountFen": 1000,
        "reason": "metrics test",
        "idempotencyKey": "refund-once",
    }
    for _ in range(2):  # the same idempotency key twice: one refund
        refunded = served.client.data(REFUND, {"input": refund_input})["refundPayment"]
        assert refunded["userErrors"] == [], refunded
    order = until(served, paid, lambda o: o["status"] == "PARTIALLY_REFUNDED")
    assert order["status"] == "PARTIALLY_REFUNDED", order

    started = start(served, failed)
    settle(started["action"]["qrCode"], "fail")
    order = until(served, failed, lambda o: o["payments"][0]["status"] == "FAILED")
    assert order["payments"][0]["status"] == "FAILED", order

    inject(served, 401)  # the platform refuses the call: the attempt is FAILED at once
    assert start(served, refused)["userErrors"][0]["code"] == "PROVIDER_UNAVAILABLE"
    inject(served, 503)  # no usable answer: the attempt may exist there, it stays PENDING
    assert start(served, unknown)["userErrors"][0]["code"] == "PROVIDER_UNAVAILABLE"
    statuses = [
        until(served, order_id, lambda o: True)["payments"][0]["status"]
        for order_id in (refused, unknown)
    ]
    assert statuses == ["FAILED", "PENDING"]

    moved = served.client.data(CANCEL, {"input": {"orderId": cancelled}})["cancelOrder"]
    assert moved["order"]["status"] == "CANCELLED", moved

    forged = httpx.post(
        f"{served.url}/notify/sandbox/zj",
        content=b'{"outTradeNo": "x", "status": "SUCCEEDED"}',
        headers={"content-type": "application/json", "x-sandbox-signature": "forged"},
    )
    assert forged.status_code >= 400, forged.text

    after = scrape(served)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    zj = {"branch": "zj"}
    attempt = {"branch": "zj", "provider": "sandbox", "method": "QR_CODE"}
    assert {
        event: delta("branchpay_orders_total", **zj, event=event)
        for event in ("created", "paid", "partially_refunded", "cancelled", "expired")
    } == {"created": 5, "paid": 1, "partially_refunded": 1, "cancelled": 1, "expired": 0}
    assert {
        event: delta("branchpay_payment_attempts_total", **attempt, event=event)
        for event in ("started", "succeeded", "failed", "closed")
    } == {"started": 4, "succeeded": 1, "failed": 2, "closed": 0}
    assert {
        event: delta("branchpay_refunds_total", **attempt, event=event)
        for event in ("started", "succeeded", "failed")
    } == {"started": 1, "succeeded": 1, "failed": 0}
    notifications = {
        result: delta("branchpay_notifications_total", provider="sandbox", result=result)
        for result in ("applied", "duplicate", "rejected_signature", "rejected_other")
    }
    # Applied: the payment, the payer's failure, the refund; the redelivery is the duplicate.
    assert notifications == {
        "applied": 3,
        "duplicate": 1,
        "rejected_signature": 1,
        "rejected_other": 0,
    }
    assert delta("branchpay_notification_verification_failures_total", provider="sandbox") == 1
    calls = {
        (operation, outcome): delta(
            "branchpay_gateway_calls_total",
            provider="sandbox",
            operation=operation,
            outcome=outcome,
        )
        for operation in ("create", "refund")
        for outcome in ("ok", "platform_error", "may_have_reached", "timeout")
    }
    assert {key: n for key, n in calls.items() if n} == {
        ("create", "ok"): 2,
        ("create", "platform_error"): 1,
        ("create", "may_have_reached"): 1,
        ("refund", "ok"): 1,
    }
    assert (
        delta(
            "branchpay_gateway_call_duration_seconds_count", provider="sandbox", operation="create"
        )
        == 4
    )
    graphql = {
        (operation, outcome): delta(
            "branchpay_graphql_requests_total",
            type="mutation",
            operation=operation,
            outcome=outcome,
        )
        for operation in ("CreateOrder", "StartPayment", "Refund", "Cancel")
        for outcome in ("ok", "user_error")
    }
    assert {key: n for key, n in graphql.items() if n} == {
        ("CreateOrder", "ok"): 6,
        ("StartPayment", "ok"): 2,
        ("StartPayment", "user_error"): 2,
        ("Refund", "ok"): 2,
        ("Cancel", "ok"): 1,
    }
    assert delta("branchpay_store_command_duration_seconds_count", command="insert", outcome="ok")


BRANCHES = "query Branches { branches { code } }"


def per_worker(directory: Path, name: str, **labels: str) -> dict[str, float]:
    """One counter's value in each process's own file of the multiprocess directory."""
    found: dict[str, float] = {}
    for path in sorted(directory.glob("counter_*.db")):
        samples: Samples = {}
        for family in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        found[path.name] = value(samples, name, **labels)
    return found


def test_a_scrape_sums_what_both_workers_counted(served: Served) -> None:
    name = "branchpay_graphql_requests_total"
    labels = {"type": "query", "operation": "Branches", "outcome": "ok"}
    directory = served.workdir / ".data" / "metrics"
    before = scrape(served)
    headers = {"authorization": f"Bearer {served.client.key}"}

    def ask(_: int) -> int:
        # A fresh connection each: the kernel hands each to whichever worker accepts.
        answer = httpx.post(f"{served.url}/graphql", json={"query": BRANCHES}, headers=headers)
        assert answer.status_code == 200, answer.text
        return 1

    sent = 0
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            sent += sum(pool.map(ask, range(16)))
            if len([n for n in per_worker(directory, name, **labels).values() if n]) == 2:
                break
    counts = per_worker(directory, name, **labels)
    assert len([n for n in counts.values() if n]) == 2, counts
    after = scrape(served)
    assert value(after, name, **labels) - value(before, name, **labels) == sent
    assert value(after, name, **labels) == sum(counts.values())


def test_the_api_port_asks_for_the_token_and_the_metrics_port_does_not(served: Served) -> None:
    missing = httpx.get(f"{served.url}/metrics")
    wrong = httpx.get(f"{served.url}/metrics", headers={"authorization": "Bearer not-it"})
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert "branchpay_" not in refused.text
    # The separate listener, on loopback, reads every worker's files too.
    on_port = parse(httpx.get(served.metrics_url).text)
    on_api = scrape(served)
    name = "branchpay_orders_total"
    created = {"branch": "zj", "event": "created"}
    assert value(on_port, name, **created) == value(on_api, name, **created) > 0


def test_a_killed_worker_no_longer_counts_in_the_live_gauges(served: Served) -> None:
    """Its subscription died with it: once the supervisor replaced it, it is not open."""
    order_id = create_order(served)
    directory = served.workdir / ".data" / "metrics"
    name = "branchpay_subscriptions_open"

    def open_in_files() -> dict[int, float]:
        found: dict[int, float] = {}
        for path in directory.glob("gauge_livesum_*.db"):
            for family in MultiProcessCollector.merge([str(path)], accumulate=False):
                for sample in family.samples:
                    if sample.name == name and sample.value:
                        found[int(path.stem.rsplit("_", 1)[1])] = sample.value
        return found

    async def subscribe_then_kill() -> int:
        async with order_feed(served.client, order_id) as feed:
            assert await feed.statuses_until("PENDING_PAYMENT") == ["PENDING_PAYMENT"]
            assert value(scrape(served), name) == 1
            ((pid, _),) = open_in_files().items()
            os.kill(pid, signal.SIGKILL)
            return pid

    killed = asyncio.run(subscribe_then_kill())
    deadline = time.monotonic() + 60
    while value(scrape(served), name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert value(scrape(served), name) == 0
    assert killed not in open_in_files()
