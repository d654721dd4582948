"""The store-derived gauges: sampled from the real store, and bounded when the store is down."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from api.dev.devdb import free_port
from api.services.gauges import StoreGauges
from api.store import Store
from api.telemetry import metrics

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
async def store(mongo_uri: str, db_name: str) -> AsyncIterator[Store]:
    store = Store.connect(mongo_uri, db_name)
    yield store
    await store.client.drop_database(db_name)
    await store.close()


async def test_the_backlog_age_and_the_open_discrepancies_come_from_the_store(
    store: Store,
) -> None:
    metrics.configure(True)
    deliveries = store.collection("webhook_deliveries")
    await deliveries.insert_many(
        [
            {"status": "PENDING", "nextAttemptAt": NOW - timedelta(seconds=90)},
            {"status": "PENDING", "nextAttemptAt": NOW - timedelta(seconds=30)},
            {"status": "PENDING", "nextAttemptAt": NOW + timedelta(seconds=60)},  # not due
            {"status": "FAILED", "nextAttemptAt": None},
        ]
    )
    await store.collection("discrepancies").insert_many(
        [
            {"_id": "a", "branch": "zj", "kind": "AMOUNT_MISMATCH", "open": True},
            {"_id": "b", "branch": "zj", "kind": "AMOUNT_MISMATCH", "open": True},
            {"_id": "c", "branch": "bj", "kind": "MISSING_LOCALLY", "open": False},
        ]
    )
    gauges = StoreGauges(store, lambda: NOW - timedelta(minutes=5), timeout=5.0, clock=lambda: NOW)
    await gauges.sample()
    assert gauge("branchpay_webhook_backlog_age_seconds") == 90
    name = "branchpay_reconciliation_discrepancies_open"
    assert gauge(name, kind="AMOUNT_MISMATCH") == 2
    assert gauge(name, kind="MISSING_LOCALLY") == 0
    assert gauge("branchpay_config_age_seconds") == 300
    await deliveries.delete_many({})
    await gauges.sample()
    assert gauge("branchpay_webhook_backlog_age_seconds") == 0


async def test_a_store_that_does_not_answer_costs_a_sample_its_timeout_not_more() -> None:
    metrics.configure(True)
    down = Store.connect(
        f"mongodb://127.0.0.1:{free_port()}", "nothing", serverSelectionTimeoutMS=30_000
    )
    failures = "branchpay_metrics_sample_failures_total"
    before = gauge(failures, gauge="webhook_backlog_age") or 0.0
    gauges = StoreGauges(down, lambda: NOW, timeout=0.3, clock=lambda: NOW)
    started = time.monotonic()
    await gauges.sample()
    assert time.monotonic() - started < 2.0
    assert gauge(failures, gauge="webhook_backlog_age") == before + 1
    assert (gauge(failures, gauge="reconciliation_discrepancies_open") or 0) >= 1
    await down.close()
