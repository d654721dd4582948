"""`branchpay db check` against the real store: the required indexes, and what differs from them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import ASCENDING, DESCENDING, MongoClient

from api.store import Store
from api.store.database import INDEXES

ROOT = Path(__file__).resolve().parents[2]
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def db(mongo_uri: str, db_name: str) -> Iterator[Any]:
    """A fresh database with the service's indexes, as ``serve`` leaves it."""

    async def create() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        await store.close()

    asyncio.run(create())
    with MongoClient(mongo_uri) as client:
        yield client[db_name]
        client.drop_database(db_name)


@pytest.fixture
def branchpay(mongo_uri: str, db_name: str) -> Run:
    env = {
        **os.environ,
        "BRANCHPAY_MONGODB_URI": mongo_uri,
        "BRANCHPAY_DATABASE": db_name,
        "COLUMNS": "200",  # the table's width where no terminal tells rich one
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api", "db", "check", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )

    return run


def _report(branchpay: Run) -> tuple[int, dict[str, Any]]:
    result = branchpay("--format", "json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_fresh_store_has_exactly_the_required_indexes(db: Any, branchpay: Run) -> None:
    table = branchpay()
    assert table.returncode == 0, table.stdout + table.stderr
    assert "as required" in table.stdout

    code, report = _report(branchpay)
    assert code == 0
    assert report["equal"] is True and report["differences"] == []
    assert set(INDEXES) <= set(report["collections"])


def test_a_dropped_index_is_named_missing(db: Any, branchpay: Run) -> None:
    db.payments.drop_index("branch_out_trade_no")

    table = branchpay()
    assert table.returncode == 1
    assert "branch_out_trade_no" in table.stdout and "missing" in table.stdout

    code, report = _report(branchpay)
    assert code == 1
    assert report["differences"] == [
        {
            "collection": "payments",
            "index": "branch_out_trade_no",
            "problem": "missing",
            "required": {"key": [["branch", 1], ["outTradeNo", 1]], "unique": True},
            "present": None,
        }
    ]


def test_an_index_not_required_is_reported_extra(db: Any, branchpay: Run) -> None:
    # What a store indexed by an older release keeps: the trade number unique on its own.
    db.payments.create_index([("outTradeNo", ASCENDING)], unique=True, name="out_trade_no")

    code, report = _report(branchpay)
    assert code == 1
    [difference] = report["differences"]
    assert difference["collection"] == "payments" and difference["index"] == "out_trade_no"
    assert difference["problem"] == "extra" and difference["required"] is None
    assert difference["present"] == {"key": [["outTradeNo", 1]], "unique": True}


def test_a_wrong_key_order_and_wrong_options_are_reported(db: Any, branchpay: Run) -> None:
    db.orders.drop_index("branch_status_created")
    db.orders.create_index(
        [("status", ASCENDING), ("branch", ASCENDING), ("createdAt", DESCENDING), ("_id", -1)],
        name="branch_status_created",
    )
    db.refunds.drop_index("branch_idempotency_key")
    db.refunds.create_index(
        [("branch", ASCENDING), ("idempotencyKey", ASCENDING)], name="branch_idempotency_key"
    )

    db.payment_events.drop_index("unapplied")
    db.payment_events.create_index(
        [("applied", ASCENDING), ("receivedAt", ASCENDING)], name="unapplied"
    )

    db.rate_limits.drop_index("expire")
    db.rate_limits.create_index([("expireAt", ASCENDING)], name="expire")  # no TTL: kept forever

    table = branchpay()
    assert table.returncode == 1
    assert "wrong key order" in table.stdout and "wrong options" in table.stdout

    code, report = _report(branchpay)
    assert code == 1
    found = {(d["collection"], d["index"]): d for d in report["differences"]}
    assert set(found) == {
        ("orders", "branch_status_created"),
        ("refunds", "branch_idempotency_key"),
        ("payment_events", "unapplied"),
        ("rate_limits", "expire"),
    }
    order = found["orders", "branch_status_created"]
    assert order["problem"] == "wrong key order"
    assert [field for field, _ in order["required"]["key"]] == [
        "branch",
        "status",
        "createdAt",
        "_id",
    ]
    assert [field for field, _ in order["present"]["key"]] == [
        "status",
        "branch",
        "createdAt",
        "_id",
    ]
    refund = found["refunds", "branch_idempotency_key"]
    assert refund["problem"] == "wrong options"
    assert refund["required"]["unique"] is True and "unique" not in refund["present"]
    partial = found["payment_events", "unapplied"]
    assert partial["problem"] == "wrong options"
    assert partial["required"]["partialFilterExpression"] == {"applied": False}
    assert "partialFilterExpression" not in partial["present"]
    ttl = found["rate_limits", "expire"]
    assert ttl["problem"] == "wrong options"
    assert ttl["required"]["expireAfterSeconds"] == 0 and "expireAfterSeconds" not in ttl["present"]


def test_an_unreachable_store_exits_2() -> None:
    env = {
        **os.environ,
        "BRANCHPAY_MONGODB_URI": "mongodb://127.0.0.1:9/",
        "BRANCHPAY_DATABASE": "branchpay",
        "BRANCHPAY_STORE_SERVER_SELECTION_TIMEOUT_SECONDS": "0.5",
    }
    result = subprocess.run(
        [sys.executable, "-m", "api", "db", "check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "could not be read" in result.stderr and result.stdout == ""
