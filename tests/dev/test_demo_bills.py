"""`make run` reconciles today's demo payments cleanly, branch by branch.

One `branchpay serve --demo` process (as in tests/dev/test_demo.py: a scratch
directory, a copy of the shipped plugins.toml, simulators on free ports, no
seeded orders). Two demo branches of each real provider pay one order each
through that provider's simulator, as a payer's phone does. Then today's bill
(Beijing day) of every one of those (branch, provider) pairs is reconciled
beside the running demo with `branchpay reconcile bills --date <today>
--branch X --provider Y --format json`, as a user would: each exits 0 and its
report is COMPLETE, its one bill line matched to the branch's payment, with no
discrepancy. Before each
demo branch had a merchant of its own, a branch's bill also held the other
branches' trades, reported as MISSING_LOCALLY.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from api.dev.devdb import free_port
from api.domain.bills import beijing_day
from tests.cli.test_serve import ROOT, environment, interrupt, wait_ready
from tests.conftest import GraphQLClient
from tests.dev.test_demo import CREATE, PLAN_FEN, START, create_key, pay_as_payer
from tests.schema.test_mutation import offering_id
from tests.services.conftest import order_feed

# Two demo branches of each real provider in the shipped plugins.toml.
PAIRS = [
    ("zj", "alipay"),
    ("bj", "alipay"),
    ("bj", "wechatpay"),
    ("sc", "wechatpay"),
    ("yn", "unionpay"),
    ("he", "unionpay"),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    return tmp_path


def reconcile_bills(
    workdir: Path, env: dict[str, str], day: date, branch: str, provider: str
) -> tuple[int, dict[str, Any]]:
    """`branchpay reconcile bills --format json` beside the running demo: exit code, its report."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "api", "reconcile", "bills", "--date", day.isoformat()),
            *("--branch", branch, "--provider", provider, "--format", "json"),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.stdout, (branch, provider, done.returncode, done.stderr)
    document = json.loads(done.stdout)
    assert document["billDate"] == day.isoformat()
    assert document["exitCode"] == done.returncode
    (report,) = document["reconciliations"]
    return done.returncode, report


async def pay_one_order(partner: GraphQLClient, branch: str, provider: str) -> tuple[str, date]:
    """An order of ``branch`` paid through ``provider``'s simulator: its id, the Beijing day."""
    created = partner.data(
        CREATE,
        {
            "input": {
                "branch": branch,
                "items": [{"offeringId": offering_id(f"{branch}-plan-59"), "quantity": 1}],
                "customer": {"name": "Han Meimei", "phone": "13812345678"},
                "idempotencyKey": f"demo-bills-{uuid.uuid4().hex}",
            }
        },
    )["createOrder"]
    assert created["userErrors"] == [], (branch, provider, created)
    order_id = created["order"]["id"]
    started = partner.data(
        START, {"input": {"orderId": order_id, "provider": provider, "method": "QR_CODE"}}
    )["startPayment"]
    assert started["userErrors"] == [], (branch, provider, started)
    async with order_feed(partner, order_id) as feed:
        assert await feed.statuses_until("PENDING_PAYMENT") == ["PENDING_PAYMENT"]
        pay_as_payer(started["action"]["qrCode"])
        assert await feed.statuses_until("PAID") == ["PAID"], (branch, provider)
    return order_id, beijing_day(datetime.now(UTC))


async def test_demo_reconciles_todays_payments_of_each_branch_and_provider_cleanly(
    workdir: Path,
) -> None:
    api_port, db_port = free_port(), free_port()
    url = f"http://127.0.0.1:{api_port}"
    env = environment(workdir, db_port) | {"BRANCHPAY_SEED_DEMO_ORDERS": "0"}
    env.pop("BRANCHPAY_PUBLIC_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--demo", "--port", str(api_port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(process, url)
        partner = GraphQLClient(
            url, create_key(workdir, env, "--role", "ops", "--name", "demo-ops")
        )
        paid: dict[tuple[str, str], tuple[str, date]] = {}
        for branch, provider in PAIRS:
            paid[(branch, provider)] = await pay_one_order(partner, branch, provider)

        reports = {
            (branch, provider): reconcile_bills(workdir, env, day, branch, provider)
            for (branch, provider), (_, day) in paid.items()
        }
    finally:
        interrupt(process)

    for (branch, provider), (exit_code, report) in reports.items():
        _, day = paid[(branch, provider)]
        # 0: reconciled, no open discrepancy (1 would say some remain).
        assert exit_code == 0, (branch, provider, report)
        assert report["id"] == f"{branch}:{provider}:{day.isoformat()}"
        assert report["status"] == "COMPLETE", (branch, provider, report)
        assert report["discrepancyCounts"] == {}, (branch, provider, report)
        assert report["openDiscrepancies"] == 0, (branch, provider, report)
        assert report["openDiscrepancyList"] == [], (branch, provider, report)
        totals = report["totals"]
        # The bill holds this branch's one payment and no other branch's.
        assert totals["billLines"] == 1, (branch, provider, report)
        assert totals["matchedCount"] == 1, (branch, provider, report)
        assert totals["matchedFen"] == PLAN_FEN, (branch, provider, report)
        assert (totals["paymentCount"], totals["paymentFen"]) == (1, PLAN_FEN)
        assert totals["billTotalsAgree"] in (True, None), (branch, provider, report)
