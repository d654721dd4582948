"""Alipay bills through branchpay's reconciliation: a running branchpay, the simulator's bill.

branchpay (real app, uvicorn, store) has branch zj on the Alipay simulator with
its merchant's ``seller_id``. An attempt is paid the way the payer and Alipay
do it (the cashier, then the signed notification to /notify/alipay/zj) and
partly refunded through GraphQL; the reconciliation of today then downloads
and reads the simulator's bill (zip of GBK CSV) and finds every line matched.
The bill controls make it find what finance fears; another merchant's bill is
refused.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config.live import ProviderRegistry
from api.domain.bills import beijing_day
from api.domain.principal import Principal, Role
from api.plugin import private_key_pem, public_key_pem
from api.plugins.manager import load_plugin_manager
from api.services.bills import BillReconciliation
from api.services.payments import PaymentService
from api.store import Store
from providers.alipay.simulator import create_app
from providers.kit.loopback import LoopbackServer
from tests.conftest import RunningService
from tests.providers import notify_support
from tests.providers.alipay.support import SELLER_ID, app_key, platform_key

OPS = Principal("ops-test", Role.OPS, frozenset())
ZJ_APP_ID = "2021000000000101"
PLUGINS_TOML = """
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.alipay]
enabled = true
app_id = "2021000000000101"
private_key = {{ file = "alipay-app.pem" }}
alipay_public_key = {{ file = "alipay-public.pem" }}
seller_id = "2088000000000001"
gateway = "{gateway}"
"""
PAYMENTS = """
query($id: ID!) { order(id: $id) { status payments { id outTradeNo status } } }
"""
REFUND = """
mutation($input: RefundPaymentInput!) {
  refundPayment(input: $input) { refund { outRefundNo status } userErrors { code } }
}
"""

# Each pays now and reconciles today's bill (a Beijing day).
pytestmark = pytest.mark.usefixtures("clear_of_beijing_midnight")


def gateway(seller_id: str) -> Iterator[str]:
    app = create_app(
        apps={ZJ_APP_ID: app_key().public_key()},
        alipay_private_key=platform_key(),
        seller_id=seller_id,
        publish_current_day=True,
    )
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
def gateway_url() -> Iterator[str]:
    yield from gateway(SELLER_ID)


@pytest.fixture
def branchpay(
    tmp_path: Path, start_service: Callable[..., RunningService], gateway_url: str
) -> RunningService:
    (tmp_path / "alipay-app.pem").write_text(private_key_pem(app_key()))
    (tmp_path / "alipay-public.pem").write_text(public_key_pem(platform_key().public_key()))
    return start_service(PLUGINS_TOML, gateway=f"{gateway_url}/gateway.do")


@contextlib.asynccontextmanager
async def reconciler(
    service: RunningService, mongo_uri: str, db_name: str
) -> AsyncIterator[BillReconciliation]:
    """A BillReconciliation on store and HTTP clients of its own, like another process's."""
    plugins = load_plugin_manager()
    store = Store.connect(mongo_uri, db_name)
    try:
        async with httpx.AsyncClient(timeout=15.0) as http:
            registry = ProviderRegistry(service.plugins_toml, plugins, http)
            registry.load()
            payments = PaymentService(
                store, registry, base_url=lambda: service.url, plugins=plugins
            )
            yield BillReconciliation(store, registry, payments)
    finally:
        await store.close()


def paid(service: RunningService, gateway_url: str) -> dict[str, Any]:
    """A 59-yuan attempt the payer paid and branchpay was told of: its id and out_trade_no."""
    order_id, out_trade_no, _ = notify_support.started_attempt(service, "alipay")
    settled = httpx.post(
        f"{gateway_url}/_control/settle/{out_trade_no}", data={"outcome": "success", "deliver": "0"}
    )
    settled.raise_for_status()
    told = notify_support.post_notification(service, "alipay", settled.json()["notification"])
    assert (told.status_code, told.text) == (200, "success")
    order = service.client.data(PAYMENTS, {"id": order_id})["order"]
    assert order["status"] == "PAID"
    (payment,) = order["payments"]
    assert payment["outTradeNo"] == out_trade_no
    return payment


def refund(service: RunningService, payment_id: str, amount_fen: int) -> str:
    done = service.client.data(
        REFUND,
        {
            "input": {
                "paymentId": payment_id,
                "amountFen": amount_fen,
                "idempotencyKey": f"refund-{uuid.uuid4().hex}",
            }
        },
    )["refundPayment"]
    assert done["userErrors"] == [] and done["refund"]["status"] == "SUCCEEDED", done
    out_refund_no: str = done["refund"]["outRefundNo"]
    return out_refund_no


def today() -> date:
    return beijing_day(datetime.now(UTC))


async def test_a_clean_alipay_day_matches_every_line_and_the_bills_totals(
    branchpay: RunningService, gateway_url: str, mongo_uri: str, db_name: str
) -> None:
    paid(branchpay, gateway_url)
    second = paid(branchpay, gateway_url)
    refund(branchpay, second["id"], 1000)

    async with reconciler(branchpay, mongo_uri, db_name) as recon:
        report = await recon.run(OPS, branch="zj", provider="alipay", day=today())
    assert (report["status"], report["error"]) == ("COMPLETE", None)
    totals = report["totals"]
    assert (totals["billLines"], totals["matchedCount"]) == (3, 3)
    assert (totals["paymentCount"], totals["paymentFen"]) == (2, 11800)
    assert (totals["refundCount"], totals["refundFen"]) == (1, 1000)
    # 0.6% of 59 yuan twice (35 fen each), 6 fen of it returned with the refund.
    assert totals["feeFen"] == 64
    assert totals["bill"] == {
        "paymentCount": 2,
        "paymentFen": 11800,
        "refundCount": 1,
        "refundFen": 1000,
        "feeFen": 64,
    }
    assert totals["billTotalsAgree"] is True
    assert report["openDiscrepancies"] == 0


async def test_what_the_bill_says_otherwise_is_reported(
    branchpay: RunningService, gateway_url: str, mongo_uri: str, db_name: str
) -> None:
    changed = paid(branchpay, gateway_url)
    dropped = paid(branchpay, gateway_url)
    bill_only = "zz" + uuid.uuid4().hex[:20]
    adjustments = f"{gateway_url}/_control/bills/adjustments"
    for fields in (
        {"action": "amount", "outTradeNo": changed["outTradeNo"], "amountFen": 5800},
        {"action": "drop", "outTradeNo": dropped["outTradeNo"]},
        {"action": "add", "kind": "PAYMENT", "outTradeNo": bill_only, "amountFen": 100},
    ):
        assert httpx.post(adjustments, json=fields).status_code == 201

    async with reconciler(branchpay, mongo_uri, db_name) as recon:
        report = await recon.run(OPS, branch="zj", provider="alipay", day=today())
        found, _ = await recon.discrepancies(
            OPS, report["_id"], first=100, after=None, kind=None, open=True
        )
    assert report["status"] == "COMPLETE"
    assert {(d["kind"], d["outTradeNo"]) for d in found} == {
        ("AMOUNT_MISMATCH", changed["outTradeNo"]),
        ("MISSING_ON_PLATFORM", dropped["outTradeNo"]),
        ("MISSING_LOCALLY", bill_only),
    }


@pytest.fixture
def other_merchant(
    tmp_path: Path, start_service: Callable[..., RunningService]
) -> Iterator[RunningService]:
    """branchpay whose zj names seller 2088000000000001, on a gateway of merchant ...0999."""
    (tmp_path / "alipay-app.pem").write_text(private_key_pem(app_key()))
    (tmp_path / "alipay-public.pem").write_text(public_key_pem(platform_key().public_key()))
    for url in gateway("2088000000000999"):
        yield start_service(PLUGINS_TOML, gateway=f"{url}/gateway.do")


async def test_a_bill_of_another_merchant_is_refused(
    other_merchant: RunningService, mongo_uri: str, db_name: str
) -> None:
    async with reconciler(other_merchant, mongo_uri, db_name) as recon:
        report = await recon.run(OPS, branch="zj", provider="alipay", day=today())
    assert report["status"] == "FAILED"
    assert report["error"].startswith("BILL_REJECTED")
    assert "20880000000009990156" in report["error"]
