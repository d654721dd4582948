"""`branchpay webhooks list|deliveries|replay` against the real store, as an operator sees them.

Most tests run the command in this process (the parser, then the command) on
documents shaped as api/store/webhooks.py describes them; the last one replays
an event from a ``python -m api`` process while a real branchpay runs, and its
receiver gets the event again under the same id.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.synchronous.database import Database

from api.cli import parser
from api.cli.webhooks import DEFAULT_LIMIT, MAX_LIMIT, WebhookCliCode
from api.dev.devdb import free_port
from api.domain.problems import UserErrorCode
from api.schema.errors import ErrorCode
from tests.services.conftest import (
    PayService,
    Receiver,
    create_endpoint,
    receiver,  # noqa: F401 (a fixture)
    start_payments,  # noqa: F401 (a fixture)
    webhook_service,
)
from tests.services.test_webhooks import (
    paid_order,
)

ROOT = Path(__file__).resolve().parents[2]
SEALED = "sealed-signing-secret-must-never-show"
TOKEN = "query-token-must-never-show"
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@dataclass
class Ran:
    code: int
    out: str
    err: str


Run = Callable[..., Ran]


@pytest.fixture
def db(mongo_uri: str, db_name: str) -> Iterator[Database[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield client[db_name]
    client.drop_database(db_name)
    client.close()


@pytest.fixture
def branchpay(
    mongo_uri: str,
    db_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """Run ``branchpay ARGS`` in this process; what it printed, and its exit code."""
    monkeypatch.setenv("BRANCHPAY_MONGODB_URI", mongo_uri)
    monkeypatch.setenv("BRANCHPAY_DATABASE", db_name)
    monkeypatch.setenv("BRANCHPAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps table cells to the terminal's width

    def run(*args: str) -> Ran:
        capsys.readouterr()
        parsed: argparse.Namespace = parser().parse_args(["webhooks", *args])
        code = parsed.run(parsed)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def endpoint(
    endpoint_id: str,
    branches: list[str],
    *,
    enabled: bool = True,
    reason: str | None = None,
    failing_since: datetime | None = None,
    deleted: bool = False,
    created: datetime = NOW,
) -> dict[str, Any]:
    return {
        "_id": endpoint_id,
        "url": f"https://hooks.example.com/{endpoint_id}?token={TOKEN}",
        "events": ["order.paid", "payment.succeeded"],
        "branches": branches,
        "description": "",
        "enabled": enabled,
        "disabledReason": reason,
        "ownerKey": f"shop-{branches[0]}",
        "ownerRole": "partner",
        "secrets": [{"secret": SEALED, "createdAt": created, "expiresAt": None}],
        "failingSince": failing_since,
        "createdAt": created,
        "updatedAt": created,
        "deleted": deleted,
    }


def delivery(
    event_id: str,
    endpoint_id: str,
    status: str,
    attempts: list[dict[str, Any]],
    *,
    next_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "_id": f"{event_id}:{endpoint_id}",
        "seq": ObjectId(),
        "eventId": event_id,
        "endpointId": endpoint_id,
        "type": "order.paid",
        "branch": "zj",
        "body": json.dumps({"id": event_id}),
        "status": status,
        "tries": len(attempts),
        "round": len(attempts),
        "nextAttemptAt": next_at,
        "leaseToken": None,
        "attempts": attempts,
        "createdAt": NOW,
        "updatedAt": NOW,
    }


def attempt(status: int | None, error: str | None = None, latency: float = 12.0) -> dict[str, Any]:
    return {"at": NOW, "status": status, "latencyMs": latency, "response": "", "error": error}


def event(event_id: str, branch: str = "zj") -> dict[str, Any]:
    return {"_id": event_id, "type": "order.paid", "at": NOW, "branch": branch, "orderId": "o1"}


def rows(out: str) -> list[list[str]]:
    """The table's rows, as their cells' first lines (an events cell spans several)."""
    cells = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in out.splitlines()
        if line.startswith("│")
    ]
    return [row for row in cells if row[0]]


def test_list_shows_a_branchs_endpoints_without_their_secrets_or_url_query(
    branchpay: Run, db: Database[dict[str, Any]]
) -> None:
    db.webhook_endpoints.insert_many(
        [
            endpoint("we_zj_on", ["zj"]),
            endpoint(
                "we_zj_off",
                ["zj", "bj"],
                enabled=False,
                reason="every delivery failed since 2026-11-27T08:00:00Z",
                failing_since=NOW - timedelta(days=3),
                created=NOW + timedelta(seconds=1),
            ),
            endpoint("we_bj", ["bj"], created=NOW + timedelta(seconds=2)),
            endpoint("we_zj_gone", ["zj"], deleted=True),
        ]
    )

    zj = branchpay("list", "--branch", "zj")

    assert zj.code == 0, zj.err
    assert "webhook endpoints of branch zj: 2" in zj.out
    on, off = rows(zj.out)
    assert on == [
        "we_zj_on",
        "https://hooks.example.com/we_zj_on",
        "order.paid",
        "zj",
        "enabled",
        "",
        "shop-zj",
    ]
    assert off[0] == "we_zj_off" and off[3] == "zj, bj"
    assert off[4] == "disabled: every delivery failed since 2026-11-27T08:00:00Z"
    assert off[5] == "2026-11-27 08:00:00Z"
    assert "payment.succeeded" in zj.out
    assert "we_bj" not in zj.out and "we_zj_gone" not in zj.out

    everything = branchpay("list")
    assert everything.code == 0, everything.err
    assert "webhook endpoints of all branches: 3" in everything.out
    assert [row[0] for row in rows(everything.out)] == ["we_zj_on", "we_zj_off", "we_bj"]
    for shown in (zj, everything):
        assert SEALED not in shown.out + shown.err
        assert TOKEN not in shown.out + shown.err and "?" not in shown.out


def test_deliveries_newest_first_with_their_last_try_and_only_failed_ones(
    branchpay: Run, db: Database[dict[str, Any]]
) -> None:
    db.webhook_endpoints.insert_many([endpoint("we_a", ["zj"]), endpoint("we_b", ["zj"])])
    db.webhook_deliveries.insert_many(
        [
            delivery("evt_old", "we_a", "SUCCEEDED", [attempt(200, latency=31.4)]),
            delivery("evt_mid", "we_a", "FAILED", [attempt(503), attempt(410, latency=8.0)]),
            delivery(
                "evt_new",
                "we_a",
                "PENDING",
                [attempt(None, "timeout", 15000.0)],
                next_at=NOW + timedelta(minutes=5),
            ),
            delivery("evt_other", "we_b", "FAILED", [attempt(404)]),
        ]
    )

    shown = branchpay("deliveries", "we_a")

    assert shown.code == 0, shown.err
    assert "deliveries of we_a (https://hooks.example.com/we_a), newest first: 3" in shown.out
    assert rows(shown.out) == [
        [
            "evt_new:we_a",
            "evt_new",
            "order.paid",
            "PENDING",
            "1",
            "2026-11-30 08:05:00Z",
            "no answer, timeout, 15000 ms",
        ],
        ["evt_mid:we_a", "evt_mid", "order.paid", "FAILED", "2", "", "HTTP 410, 8 ms"],
        ["evt_old:we_a", "evt_old", "order.paid", "SUCCEEDED", "1", "", "HTTP 200, 31 ms"],
    ]
    assert "evt_other" not in shown.out and TOKEN not in shown.out

    failed = branchpay("deliveries", "we_a", "--failed")
    assert failed.code == 0, failed.err
    assert "FAILED deliveries of we_a" in failed.out
    assert [row[0] for row in rows(failed.out)] == ["evt_mid:we_a"]

    newest = branchpay("deliveries", "we_a", "--limit", "2")
    assert [row[0] for row in rows(newest.out)] == ["evt_new:we_a", "evt_mid:we_a"]
    assert "newest first: 2 (more exist: raise --limit, up to 500)" in newest.out


def test_replay_makes_every_live_delivery_of_the_event_due_and_audits_it(
    branchpay: Run, db: Database[dict[str, Any]]
) -> None:
    db.webhook_endpoints.insert_many(
        [
            endpoint("we_a", ["zj"]),
            endpoint("we_paused", ["zj"], enabled=False, reason="paused by shop-zj"),
            endpoint("we_gone", ["zj"], deleted=True),
        ]
    )
    db.webhook_events.insert_many([event("evt_1"), event("evt_2")])
    later = NOW + timedelta(hours=2)
    db.webhook_deliveries.insert_many(
        [
            delivery("evt_1", "we_a", "SUCCEEDED", [attempt(200)]),
            delivery("evt_1", "we_paused", "FAILED", [attempt(410)]),
            delivery("evt_1", "we_gone", "FAILED", [attempt(500)], next_at=None),
            delivery("evt_2", "we_a", "PENDING", [attempt(503)], next_at=later),
        ]
    )
    before = datetime.now(UTC)

    replayed = branchpay("replay", "evt_1")

    assert replayed.code == 0, replayed.err
    assert "replayed webhook event evt_1 (order.paid, branch zj): 2 deliveries due again" in (
        replayed.out
    )
    assert "wait until enabled again: we_paused" in replayed.out
    after = datetime.now(UTC)
    for delivery_id in ("evt_1:we_a", "evt_1:we_paused"):
        doc = db.webhook_deliveries.find_one({"_id": delivery_id})
        assert doc is not None
        assert doc["status"] == "PENDING" and doc["round"] == 0 and doc["leaseToken"] is None
        assert before <= doc["nextAttemptAt"] <= after
        assert doc["tries"] == 1 and len(doc["attempts"]) == 1  # the history stays
    gone = db.webhook_deliveries.find_one({"_id": "evt_1:we_gone"})
    assert gone is not None and gone["status"] == "FAILED" and gone["nextAttemptAt"] is None
    other = db.webhook_deliveries.find_one({"_id": "evt_2:we_a"})
    assert other is not None and other["nextAttemptAt"] == later

    entries = list(db.audit_log.find())
    assert len(entries) == 1
    entry = entries[0]
    assert entry["action"] == "WEBHOOK_EVENT_REPLAYED" and entry["target"] == "evt_1"
    assert entry["actor"] == getpass.getuser() and entry["branch"] == "zj"
    assert entry["detail"] == {"type": "order.paid", "endpoints": ["we_a", "we_paused"]}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["deliveries", "we_nope"], "WEBHOOK_ENDPOINT_NOT_FOUND", "no webhook endpoint 'we_nope'"),
        (["deliveries", "we_gone"], "WEBHOOK_ENDPOINT_NOT_FOUND", "no webhook endpoint 'we_gone'"),
        (["replay", "evt_nope"], "WEBHOOK_EVENT_NOT_FOUND", "no webhook event 'evt_nope'"),
        (
            ["replay", "evt_gone"],
            "WEBHOOK_EVENT_NOT_FOUND",
            "webhook event evt_gone has no delivery to an endpoint that still exists",
        ),
        (["deliveries", "we_a", "--limit", "0"], "BAD_USER_INPUT", "between 1 and 500, not 0"),
        (["deliveries", "we_a", "--limit", "501"], "BAD_USER_INPUT", "between 1 and 500, not 501"),
        (["deliveries", "we_a", "--limit", "-3"], "BAD_USER_INPUT", "between 1 and 500, not -3"),
        (["list", "--branch", "z j\n"], "UNKNOWN_BRANCH", "no branch 'z j\\n'"),
    ],
)
def test_refused_input_exits_2_with_a_code_and_writes_nothing(
    branchpay: Run, db: Database[dict[str, Any]], args: list[str], code: str, message: str
) -> None:
    db.webhook_endpoints.insert_many(
        [endpoint("we_a", ["zj"]), endpoint("we_gone", ["zj"], deleted=True)]
    )
    db.webhook_events.insert_one(event("evt_gone"))
    db.webhook_deliveries.insert_one(delivery("evt_gone", "we_gone", "FAILED", [attempt(500)]))
    stored = list(db.webhook_deliveries.find())

    refused = branchpay(*args)

    assert refused.code == 2
    assert refused.err.startswith(f"error [{code}]: ") and message in refused.err
    assert refused.out == ""
    assert list(db.webhook_deliveries.find()) == stored
    assert db.audit_log.count_documents({}) == 0


def test_a_limit_that_is_no_number_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["webhooks", "deliveries", "we_a", "--limit", "many"])
    assert exited.value.code == 2
    assert "--limit: invalid int value: 'many'" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["list"], ["deliveries", "we_a"], ["replay", "evt_1"]])
def test_a_store_that_does_not_answer_is_reported_in_seconds(
    branchpay: Run, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("BRANCHPAY_MONGODB_URI", f"mongodb://user:pw@127.0.0.1:{free_port()}/")
    monkeypatch.setenv("BRANCHPAY_STORE_SERVER_SELECTION_TIMEOUT_SECONDS", "0.5")
    started = time.monotonic()

    refused = branchpay(*args)

    assert time.monotonic() - started < 5
    assert refused.code == 2
    assert refused.err.startswith("error [STORE_UNAVAILABLE]: the store did not answer in time")
    assert "pw" not in refused.err and refused.out == ""


def test_the_codes_are_spelled_as_the_api_spells_them() -> None:
    api_codes = {c.value for c in UserErrorCode} | {c.value for c in ErrorCode}
    assert {c.value for c in WebhookCliCode} <= api_codes


def test_the_help_states_the_limits_the_command_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["webhooks", "deliveries", "--help"])
    assert f"1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})" in capsys.readouterr().out


def test_a_running_branchpay_sends_a_replayed_event_again_under_the_same_id(
    start_payments: Callable[..., PayService],  # noqa: F811
    receiver: Receiver,  # noqa: F811
) -> None:
    service = webhook_service(start_payments)
    partner = service.client_for("partner", "zj")
    endpoint_id, _ = create_endpoint(service, partner, receiver.url, ["order.paid"], ["zj"])
    paid_order(service)
    event_id = receiver.wait_for(lambda got: len(got) == 1)[0].headers["webhook-id"]
    delivery_id = f"{event_id}:{endpoint_id}"
    wait_until(lambda: tries_of(service, delivery_id) == 1)

    def branchpay(*args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "BRANCHPAY_MONGODB_URI": service.mongo_uri,
            "BRANCHPAY_DATABASE": service.db_name,
            "COLUMNS": "400",
        }
        return subprocess.run(
            [sys.executable, "-m", "api", "webhooks", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    replayed = branchpay("replay", event_id)

    assert replayed.returncode == 0, replayed.stderr
    assert f"{event_id} (order.paid, branch zj): 1 delivery due again" in replayed.stdout
    again = receiver.wait_for(lambda got: len(got) == 2)[1]
    assert again.headers["webhook-id"] == event_id and again.event["type"] == "order.paid"
    wait_until(lambda: tries_of(service, delivery_id) == 2)
    listed = branchpay("deliveries", endpoint_id)
    assert listed.returncode == 0, listed.stderr
    assert [row[:5] for row in rows(listed.stdout)] == [
        [delivery_id, event_id, "order.paid", "SUCCEEDED", "2"]
    ]
    assert rows(listed.stdout)[0][6].startswith("HTTP 200, ")


def tries_of(service: PayService, delivery_id: str) -> int:
    doc = service.db.webhook_deliveries.find_one({"_id": delivery_id}) or {}
    return int(doc.get("tries", 0))


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
