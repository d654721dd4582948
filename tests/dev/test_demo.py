"""`make run` pays for real: Alipay, WeChat Pay and UnionPay through their demo simulators.

`branchpay serve --demo` runs as its own process in a scratch directory with a
copy of the shipped plugins.toml, its own store port, simulators on free ports
(``BRANCHPAY_SIMULATOR_PORT=0``; the demo configuration follows them through
``.data/secrets/<provider>.gateway``) and no seeded orders. For
each real provider the test creates an order with GraphQL, starts a QR-code
payment, pays it at the demo simulator the way a payer's phone would (open the
scanned page, press Pay), awaits the PAID event the simulator's notification
causes (orderEvents over WebSocket), and refunds part of it with a
branch_admin key of that branch, awaiting PARTIALLY_REFUNDED the same way.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from api.dev.devdb import free_port
from tests.cli.test_serve import ROOT, environment, interrupt, wait_ready
from tests.conftest import GraphQLClient
from tests.schema.test_mutation import offering_id
from tests.services.conftest import (
    CREATE_WEBHOOK_ENDPOINT,
    Receiver,
    order_feed,
    receiver,  # noqa: F401 (a fixture)
)

# provider -> the demo branch that offers it first in the shipped plugins.toml
DEMO_BRANCHES = {"alipay": "zj", "wechatpay": "bj", "unionpay": "yn"}
PLAN_FEN = 5900
REFUND_FEN = 1000

CREATE = """
mutation($input: CreateOrderInput!) {
  createOrder(input: $input) { order { id total { amountFen } } userErrors { code message } }
}
"""
START = """
mutation($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { id outTradeNo }
    action { kind qrCode }
    userErrors { code message }
  }
}
"""
ORDER = """
query($id: ID!) {
  order(id: $id) {
    status
    payments { id status refunds { status amount { amountFen } } }
  }
}
"""
REFUND = """
mutation($input: RefundPaymentInput!) {
  refundPayment(input: $input) {
    refund { status amount { amountFen } }
    userErrors { code message }
  }
}
"""
_FORM_ACTION = re.compile(r"<form\b[^>]*\baction=\"([^\"]*)\"", re.IGNORECASE)


def create_key(workdir: Path, env: dict[str, str], *options: str) -> str:
    """`branchpay keys create` beside the running demo: it uses that store."""
    created = subprocess.run(
        [sys.executable, "-m", "api", "keys", "create", *options],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


def pay_as_payer(qr_code: str) -> None:
    """Open the scanned code's page and press Pay on its form."""
    with httpx.Client(timeout=30.0) as phone:
        page = phone.get(qr_code)
        assert page.status_code == 200, page.text
        found = _FORM_ACTION.search(page.text)
        target = page.url.join(html.unescape(found.group(1))) if found else page.url
        paid = phone.post(target, data={"outcome": "success"})
        assert paid.status_code == 200, paid.text


def simulator_url(workdir: Path, provider: str) -> str:
    """Where the demo serves the provider's simulator, from the gateway file it wrote."""
    gateway = (workdir / ".data" / "secrets" / f"{provider}.gateway").read_text().strip()
    return str(httpx.URL(gateway).copy_with(path="/")).rstrip("/")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    return tmp_path


async def test_make_run_pays_and_refunds_through_each_real_provider_simulator(
    workdir: Path,
    receiver: Receiver,  # noqa: F811 (the fixture)
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
        # make run lets webhooks go to a receiver on loopback, as a partner's dev machine has.
        registered = partner.data(
            CREATE_WEBHOOK_ENDPOINT,
            {
                "input": {
                    "url": receiver.url,
                    "events": ["order.paid"],
                    "branches": list(DEMO_BRANCHES.values()),
                }
            },
        )["createWebhookEndpoint"]
        assert registered["userErrors"] == [], registered
        for provider, branch in DEMO_BRANCHES.items():
            created = partner.data(
                CREATE,
                {
                    "input": {
                        "branch": branch,
                        "items": [{"offeringId": offering_id(f"{branch}-plan-59"), "quantity": 1}],
                        "customer": {"name": "Li Lei", "phone": "13912345678"},
                        "idempotencyKey": f"demo-{uuid.uuid4().hex}",
                    }
                },
            )["createOrder"]
            assert created["userErrors"] == [], (provider, created)
            order_id = created["order"]["id"]
            assert created["order"]["total"]["amountFen"] == PLAN_FEN
            started = partner.data(
                START,
                {"input": {"orderId": order_id, "provider": provider, "method": "QR_CODE"}},
            )["startPayment"]
            assert started["userErrors"] == [], (provider, started)
            assert started["action"]["kind"] == "QR_CODE"
            qr_code = started["action"]["qrCode"]
            assert qr_code.startswith(simulator_url(workdir, provider) + "/"), qr_code

            async with order_feed(partner, order_id) as feed:
                assert await feed.statuses_until("PENDING_PAYMENT") == ["PENDING_PAYMENT"]
                pay_as_payer(qr_code)
                assert await feed.statuses_until("PAID") == ["PAID"], provider
            admin = GraphQLClient(
                url,
                create_key(
                    workdir,
                    env,
                    *("--role", "branch_admin", "--branch", branch, "--name", f"{branch}-admin"),
                ),
            )
            refunded = admin.data(
                REFUND,
                {
                    "input": {
                        "paymentId": started["payment"]["id"],
                        "amountFen": REFUND_FEN,
                        "reason": "demo partial refund",
                        "idempotencyKey": f"refund-{uuid.uuid4().hex}",
                    }
                },
            )["refundPayment"]
            assert refunded["userErrors"] == [], (provider, refunded)
            assert refunded["refund"]["amount"]["amountFen"] == REFUND_FEN
            assert refunded["refund"]["status"] != "FAILED", (provider, refunded)
            async with order_feed(partner, order_id) as feed:
                # The current status first, then the one the refund notification brings.
                await feed.statuses_until("PARTIALLY_REFUNDED")
            final = partner.data(ORDER, {"id": order_id})["order"]
            refunds = [r["status"] for p in final["payments"] for r in p["refunds"]]
            assert refunds == ["SUCCEEDED"], (provider, final)
            assert final["status"] == "PARTIALLY_REFUNDED", (provider, final)
            (payment,) = final["payments"]
            assert payment["status"] == "PARTIALLY_REFUNDED", (provider, final)
        paid = receiver.wait_for(lambda got: len(got) >= len(DEMO_BRANCHES))
        assert sorted(r.event["branch"] for r in paid) == sorted(DEMO_BRANCHES.values())
    finally:
        output = interrupt(process)
    for provider in DEMO_BRANCHES:
        assert f"{provider} gateway simulator on {simulator_url(workdir, provider)}" in output
