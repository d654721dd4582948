"""Bill reconciliation for every built-in provider with bills, against its own simulator.

Parametrized over the built-in providers whose adapter ``supports_bills``: a
provider that gains bills is picked up here on its own, and then needs a
:class:`Platform` below (its absence fails the run, it is never skipped).
Each provider gets one simulator and one branchpay (real app, uvicorn, the
suite's store) for the module; payments are made through branchpay's payment
service (createOrder, startPayment, refundPayment) and settled at the
simulator as a payer would; the reconciliation runs through the real
:class:`~api.services.bills.BillReconciliation` over HTTP to the simulator.
Tests share the day's bill, so each one asserts about its own ids and counts
only what it added, and leaves the bill clean (adjustments and faults cleared).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
import tomlkit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.plugin import (
    ActionKind,
    NotificationRequest,
    PaymentAction,
    new_private_key,
    private_key_pem,
    public_key_pem,
)
from api.plugins.contract import Provider
from api.plugins.manager import installed_providers, load_plugin_manager
from providers.alipay.driver import AlipayGatewayDriver
from providers.alipay.simulator import create_app as alipay_simulator
from providers.kit.loopback import LoopbackServer
from providers.sandbox.driver import SandboxDriver
from providers.unionpay import message, pki
from providers.unionpay.driver import UnionpayDriver
from providers.unionpay.simulator import create_app as unionpay_simulator
from providers.wechatpay.driver import WechatpayDriver
from providers.wechatpay.simulator import Merchant as WechatMerchant
from providers.wechatpay.simulator import create_app as wechatpay_simulator
from tests.services.conftest import (
    OPS,
    ZJ_ADMIN,
    PayService,
    PayServices,
    all_discrepancies,
    reconciler,
    today,
)

EXPECTED_WITH_BILLS = {"alipay", "sandbox", "unionpay", "wechatpay"}
SUMS = ("paymentCount", "paymentFen", "refundCount", "refundFen", "feeFen")
OFFERINGS = {"zj": "zj-plan-59", "bj": "bj-plan-59"}
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, nothing arrives

# Each pays now and reconciles today's bill (a Beijing day).
pytestmark = pytest.mark.usefixtures("clear_of_beijing_midnight")


def has_bills(cls: type[Provider]) -> bool:
    """The adapter's own ``supports_bills``, asked of an instance made without settings."""
    return bool(cls.__new__(cls).supports_bills)


def built_in_with_bills() -> list[str]:
    return sorted(
        name
        for name, cls in installed_providers(load_plugin_manager()).items()
        if cls.__module__.startswith("providers.") and has_bills(cls)
    )


def test_every_built_in_provider_has_bills() -> None:
    """Sandbox, UnionPay, Alipay and WeChat Pay all serve daily bills; the tests below cover each."""
    assert set(built_in_with_bills()) == EXPECTED_WITH_BILLS
    assert set(built_in_with_bills()) <= set(PLATFORMS), "a provider with bills lacks a Platform"


# --- each platform: its simulator, its configuration, how a payer pays there --------------------


class Platform:
    """What the tests need of one provider's simulator; one subclass per built-in provider.

    Branch zj pays through it and is reconciled; branch bj is another merchant of the
    same platform (its payments must stay off zj's bill, its bill is the impostor's).
    """

    name: ClassVar[str]
    method: ClassVar[str] = "QR_CODE"
    url: str = ""
    control: str = ""  # zj's simulator's control prefix (bill_routes, faults)
    keep_host: ClassVar[bool] = False  # the proxy forwards the Host its client asked for

    def start(self, secrets_dir: Path) -> str:
        """Start the simulator (if it is not branchpay's own); the plugins.toml tables to add."""
        return ""

    def attach(self, service: PayService, http: httpx.AsyncClient) -> None:
        """Called once branchpay runs beside the simulator."""

    def stop(self) -> None:
        for server in getattr(self, "servers", []):
            server.stop()

    def serve(self, app: Any) -> str:
        server = LoopbackServer(app).start()
        self.servers: list[LoopbackServer] = [*getattr(self, "servers", []), server]
        return server.url

    async def present(self, payment: dict[str, Any], action: PaymentAction) -> None:
        """Follow startPayment's action as the payer would."""

    async def settle(self, payment: dict[str, Any]) -> NotificationRequest:
        """Settle at the simulator as paid; the notification it would send, not delivered."""
        raise NotImplementedError

    async def refund_unheard(
        self, service: PayService, payment: dict[str, Any], amount_fen: int
    ) -> str:
        """A refund the platform's bill shows paid while we hold it PENDING; its outRefundNo."""
        raise NotImplementedError

    def impostor_toml(self, proxy_url: str) -> dict[str, str]:
        """zj's settings changed so that its adapter is handed bj's bill (through the proxy)."""
        raise NotImplementedError

    def impostor(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        """A request on its way through the proxy (headers may be changed in place)."""
        return body

    def impostor_answer(self, path: str, body: bytes) -> bytes:
        """An answer on its way back through the proxy."""
        return body


def refund_failing(
    service: PayService, platform: Platform, payment: dict[str, Any], amount_fen: int
) -> str:
    """A refund whose every call fails (held PENDING), added to the bill as paid out."""
    try:
        service.refund(payment["id"], amount_fen)
    finally:
        httpx.delete(f"{platform.control}/faults").raise_for_status()
    line = stored(service, payment["outTradeNo"])["refunds"][-1]
    assert line["status"] == "PENDING", line
    out_refund_no: str = line["outRefundNo"]
    bill_line = {"kind": "REFUND", "outRefundNo": out_refund_no, "amountFen": amount_fen}
    adjust(platform, action="add", outTradeNo=payment["outTradeNo"], **bill_line)
    return out_refund_no


async def refund_notified_nowhere(
    service: PayService, platform: Platform, payment: dict[str, Any], amount_fen: int
) -> str:
    """A refund the platform makes and tells only by notification, sent where nothing listens."""
    service.settings.public_url = DEAD_URL  # the notify URL branchpay hands over with it
    try:
        refund = service.refund(payment["id"], amount_fen)
    finally:
        service.settings.public_url = service.url
    assert refund["userErrors"] == [], refund
    out_refund_no: str = refund["refund"]["outRefundNo"]
    assert refund["refund"]["status"] == "PENDING", refund
    await wait_for_deliveries(platform, {payment["outTradeNo"], out_refund_no})
    return out_refund_no


class SandboxPlatform(Platform):
    """branchpay's own sandbox gateway, started by the services fixture (PayServices)."""

    name = "sandbox"
    method = "PAGE"

    def attach(self, service: PayService, http: httpx.AsyncClient) -> None:
        self.url = service.gateway_url
        self.control = f"{self.url}/control"
        self.driver = SandboxDriver(self.url, http)

    async def settle(self, payment: dict[str, Any]) -> NotificationRequest:
        notification = await self.driver.settle(payment["outTradeNo"], "success")
        assert notification is not None
        return notification

    async def refund_unheard(
        self, service: PayService, payment: dict[str, Any], amount_fen: int
    ) -> str:
        faults = {"status": 503, "count": 10}
        httpx.post(f"{self.control}/faults", json=faults).raise_for_status()
        return refund_failing(service, self, payment, amount_fen)

    def impostor_toml(self, proxy_url: str) -> dict[str, str]:
        return {"gateway": proxy_url}

    def impostor_answer(self, path: str, body: bytes) -> bytes:
        # The bill's first line names its merchant: make it bj's.
        if not path.startswith("/api/bills/"):
            return body
        first, rest = body.split(b"\n", 1)
        head = first.decode().split("; ")
        head[1] = "merchant_id=bj"
        return "; ".join(head).encode() + b"\n" + rest


class UnionpayPlatform(Platform):
    """One UnionPay simulator; zj and bj are two merchants (merIds) with one signing key."""

    name = "unionpay"
    method = "PAGE"
    MER_IDS: ClassVar[dict[str, str]] = {"zj": "777290058110048", "bj": "777290058110077"}

    def start(self, secrets_dir: Path) -> str:
        self.chain = pki.issue_chain()
        files = {
            "unionpay_sign_cert.pem": pki.cert_pem(self.chain.merchant_cert),
            "unionpay_sign_key.pem": pki.key_pem(self.chain.merchant_key),
            "unionpay_middle.pem": pki.cert_pem(self.chain.middle_cert),
            "unionpay_root.pem": pki.cert_pem(self.chain.root_cert),
        }
        for name, text in files.items():
            (secrets_dir / name).write_text(text)
        self.url = self.serve(
            unionpay_simulator(
                sign_key=self.chain.platform_key,
                sign_cert=self.chain.platform_cert,
                merchants={mer_id: self.chain.merchant_cert for mer_id in self.MER_IDS.values()},
                delivery_backoff=0.05,
                publish_current_day=True,
            )
        )
        self.control = f"{self.url}/control"
        return "".join(
            f"""
[branches.{branch}.providers.unionpay]
enabled = true
mer_id = "{mer_id}"
sign_cert = {{ file = "unionpay_sign_cert.pem" }}
sign_cert_private_key = {{ file = "unionpay_sign_key.pem" }}
middle_cert = {{ file = "unionpay_middle.pem" }}
root_cert = {{ file = "unionpay_root.pem" }}
gateway = "{self.url}"
file_transfer = "{self.url}"
"""
            for branch, mer_id in self.MER_IDS.items()
        )

    def attach(self, service: PayService, http: httpx.AsyncClient) -> None:
        self.driver = UnionpayDriver(self.url, http)

    async def present(self, payment: dict[str, Any], action: PaymentAction) -> None:
        await self.driver.present(payment["outTradeNo"], action)

    async def settle(self, payment: dict[str, Any]) -> NotificationRequest:
        notification = await self.driver.settle(payment["outTradeNo"], "success")
        assert notification is not None
        return notification

    async def refund_unheard(
        self, service: PayService, payment: dict[str, Any], amount_fen: int
    ) -> str:
        # UnionPay answers a refund as accepted and tells its result by notification only.
        return await refund_notified_nowhere(service, self, payment, amount_fen)

    def impostor_toml(self, proxy_url: str) -> dict[str, str]:
        return {"file_transfer": proxy_url}

    def impostor(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        # The file transfer, signed afresh as bj's merchant (one key signs for both).
        if path != "/":
            return body
        fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
        fields["merId"] = self.MER_IDS["bj"]
        fields["signature"] = message.sign(fields, self.chain.merchant_key)
        return urlencode(fields).encode()


class AlipayPlatform(Platform):
    """Alipay: a simulator is one merchant (seller_id), so zj and bj each get one."""

    name = "alipay"
    APPS: ClassVar[dict[str, tuple[str, str]]] = {
        "zj": ("2021000000000101", "2088000000000001"),
        "bj": ("2021000000000102", "2088000000000002"),
    }

    def start(self, secrets_dir: Path) -> str:
        app_key, platform_key = new_private_key(), new_private_key()
        (secrets_dir / "alipay-app.pem").write_text(private_key_pem(app_key))
        (secrets_dir / "alipay-public.pem").write_text(public_key_pem(platform_key.public_key()))
        apps = {app_id: app_key.public_key() for app_id, _ in self.APPS.values()}
        self.urls = {
            branch: self.serve(
                alipay_simulator(
                    apps=apps,
                    alipay_private_key=platform_key,
                    seller_id=seller_id,
                    publish_current_day=True,
                )
            )
            for branch, (_, seller_id) in self.APPS.items()
        }
        self.url = self.urls["zj"]
        self.control = f"{self.url}/_control"
        return "".join(
            f"""
[branches.{branch}.providers.alipay]
enabled = true
app_id = "{app_id}"
private_key = {{ file = "alipay-app.pem" }}
alipay_public_key = {{ file = "alipay-public.pem" }}
seller_id = "{seller_id}"
gateway = "{self.urls[branch]}/gateway.do"
"""
            for branch, (app_id, seller_id) in self.APPS.items()
        )

    def attach(self, service: PayService, http: httpx.AsyncClient) -> None:
        self.drivers = {b: AlipayGatewayDriver(url, http) for b, url in self.urls.items()}

    async def present(self, payment: dict[str, Any], action: PaymentAction) -> None:
        await self.drivers[payment["branch"]].present(payment["outTradeNo"], action)

    async def settle(self, payment: dict[str, Any]) -> NotificationRequest:
        driver = self.drivers[payment["branch"]]
        notification = await driver.settle(payment["outTradeNo"], "success")
        assert notification is not None
        return notification

    async def refund_unheard(
        self, service: PayService, payment: dict[str, Any], amount_fen: int
    ) -> str:
        # Alipay's refund call answers at once: every try fails, the line is added to the bill.
        fault = {"kind": "http_500", "times": "10", "method": "alipay.trade.refund"}
        httpx.post(f"{self.control}/faults", data=fault).raise_for_status()
        return refund_failing(service, self, payment, amount_fen)

    def impostor_toml(self, proxy_url: str) -> dict[str, str]:
        # zj's app, at the gateway of bj's merchant: the bill there is bj's seller's.
        return {"gateway": f"{self.urls['bj']}/gateway.do"}


class WechatpayPlatform(Platform):
    """One WeChat Pay simulator; zj and bj are two mchids sharing one API key and serial."""

    name = "wechatpay"
    keep_host = True  # the simulator names its download URL after the host it was asked at
    MCHIDS: ClassVar[dict[str, str]] = {"zj": "1900000101", "bj": "1900000102"}
    SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
    KEY_ID = "PUB_KEY_ID_0119000001012025120200000000"
    APIV3 = b"a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"

    def start(self, secrets_dir: Path) -> str:
        merchant_key, self.platform_key = new_private_key(), new_private_key()
        (secrets_dir / "wechatpay-merchant.pem").write_text(private_key_pem(merchant_key))
        public = public_key_pem(self.platform_key.public_key())
        (secrets_dir / "wechatpay-platform.pem").write_text(public)
        (secrets_dir / "wechatpay-apiv3.key").write_bytes(self.APIV3)
        merchants = [
            WechatMerchant(
                mchid=mchid,
                appid=f"wx{mchid}",
                public_key=merchant_key.public_key(),
                cert_serial_no=self.SERIAL,
                apiv3_key=self.APIV3,
            )
            for mchid in self.MCHIDS.values()
        ]
        self.url = self.serve(
            wechatpay_simulator(
                merchants=merchants,
                platform_private_key=self.platform_key,
                platform_public_key_id=self.KEY_ID,
                publish_current_day=True,
            )
        )
        self.control = f"{self.url}/control"
        return "".join(
            f"""
[branches.{branch}.providers.wechatpay]
enabled = true
mchid = "{mchid}"
appid = "wx{mchid}"
private_key = {{ file = "wechatpay-merchant.pem" }}
cert_serial_no = "{self.SERIAL}"
apiv3_key = {{ file = "wechatpay-apiv3.key" }}
platform_public_key = {{ file = "wechatpay-platform.pem" }}
platform_public_key_id = "{self.KEY_ID}"
gateway = "{self.url}"
"""
            for branch, mchid in self.MCHIDS.items()
        )

    def attach(self, service: PayService, http: httpx.AsyncClient) -> None:
        self.driver = WechatpayDriver(
            self.url,
            platform_private_key=self.platform_key,
            platform_public_key_id=self.KEY_ID,
            apiv3_key=self.APIV3,
        )

    async def settle(self, payment: dict[str, Any]) -> NotificationRequest:
        notification = await self.driver.settle(payment["outTradeNo"], "success")
        assert notification is not None
        return notification

    async def refund_unheard(
        self, service: PayService, payment: dict[str, Any], amount_fen: int
    ) -> str:
        # WeChat Pay answers PROCESSING and tells the refund's end by callback only.
        return await refund_notified_nowhere(service, self, payment, amount_fen)

    def impostor_toml(self, proxy_url: str) -> dict[str, str]:
        return {"gateway": proxy_url}

    def impostor(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        # mchid is not under the v3 signature: the same signed request, as bj's merchant.
        zj, bj = self.MCHIDS["zj"], self.MCHIDS["bj"]
        headers["authorization"] = headers["authorization"].replace(
            f'mchid="{zj}"', f'mchid="{bj}"'
        )
        return body


PLATFORMS: dict[str, type[Platform]] = {
    cls.name: cls for cls in (SandboxPlatform, UnionpayPlatform, AlipayPlatform, WechatpayPlatform)
}


# --- the bench: one simulator and one branchpay per provider for the module ----------------------


@dataclass
class Bench:
    platform: Platform
    service: PayService
    http: httpx.AsyncClient

    @property
    def provider(self) -> str:
        return self.platform.name

    @property
    def rec_id(self) -> str:
        return f"zj:{self.provider}:{today().isoformat()}"

    async def started(self, branch: str = "zj") -> dict[str, Any]:
        """An order and its attempt opened at the platform through branchpay, not yet paid."""
        order = self.service.create_order(branch, OFFERINGS[branch])
        payload = self.service.start_payment(order["id"], self.provider, self.platform.method)
        assert payload["userErrors"] == [], payload
        payment: dict[str, Any] = payload["payment"]
        payment["orderId"] = order["id"]
        payment["branch"] = branch
        action = payload["action"]
        await self.platform.present(
            payment,
            PaymentAction(
                kind=ActionKind(action["kind"]),
                url=action["url"],
                qr_code=action["qrCode"],
                form_html=action["formHtml"],
                app_payload=action["appPayload"],
            ),
        )
        return payment

    async def paid(self, branch: str = "zj") -> dict[str, Any]:
        """An attempt paid at the platform, its notification delivered to branchpay."""
        payment = await self.started(branch)
        notification = await self.platform.settle(payment)
        answer = await self.http.request(
            notification.method,
            f"{self.service.url}/notify/{self.provider}/{branch}",
            params=notification.query,
            headers=notification.headers,
            content=notification.body,
        )
        assert answer.status_code == 200, answer.text
        assert stored(self.service, payment["outTradeNo"])["status"] == "SUCCEEDED"
        return payment

    def refunded(self, payment: dict[str, Any], amount_fen: int) -> str:
        """A refund through refundPayment, once branchpay holds it SUCCEEDED; its outRefundNo."""
        refund = self.service.refund(payment["id"], amount_fen)
        assert refund["userErrors"] == [], refund
        out_refund_no: str = refund["refund"]["outRefundNo"]
        deadline = time.monotonic() + 15
        # Some platforms answer a refund as accepted and tell its result by notification.
        while refund_line(self.service, payment, out_refund_no)["status"] != "SUCCEEDED":
            assert time.monotonic() < deadline, refund_line(self.service, payment, out_refund_no)
            time.sleep(0.05)
        return out_refund_no


def stored(service: PayService, out_trade_no: str) -> dict[str, Any]:
    doc = service.db.payments.find_one({"outTradeNo": out_trade_no})
    assert doc is not None
    return doc


def refund_line(service: PayService, payment: dict[str, Any], out_refund_no: str) -> dict[str, Any]:
    lines = stored(service, payment["outTradeNo"])["refunds"]
    (line,) = [line for line in lines if line["outRefundNo"] == out_refund_no]
    return dict(line)


def adjust(platform: Platform, **fields: Any) -> None:
    response = httpx.post(f"{platform.control}/bills/adjustments", json=fields)
    assert response.status_code == 201, response.text


async def wait_for_deliveries(platform: Platform, refs: set[str]) -> None:
    """Until the simulator has given up sending the notification of one of ``refs`` (nowhere)."""
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            log = (await http.get(f"{platform.control}/deliveries")).json()
            if any(d["ref"] in refs and d["url"].startswith(DEAD_URL) for d in log):
                assert not any(d["ref"] in refs and d["accepted"] for d in log), log
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the simulator did not try to send the notification of {refs}")


@pytest.fixture(scope="module", params=built_in_with_bills())
def bench_setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mongo_uri: str
) -> Iterator[tuple[Platform, PayService]]:
    name: str = request.param
    if name not in PLATFORMS:
        pytest.fail(
            f"the built-in provider {name} has bills but no Platform in {__name__}: add one "
            "(its simulator, configuration, how a payer pays and how a refund goes unheard)"
        )
    platform = PLATFORMS[name]()
    tmp = tmp_path_factory.mktemp(f"bills-{name}")
    services = PayServices(tmp, mongo_uri, f"bp_test_{uuid.uuid4().hex[:12]}")
    try:
        extra = platform.start(tmp)
        service = services.start(extra_toml=extra)
        yield platform, service
    finally:
        services.stop()
        platform.stop()


@pytest.fixture
async def bench(bench_setup: tuple[Platform, PayService]) -> AsyncIterator[Bench]:
    platform, service = bench_setup
    async with httpx.AsyncClient(timeout=30.0) as http:
        platform.attach(service, http)
        response = httpx.put(f"{platform.control}/bills", json={"publishCurrentDay": True})
        response.raise_for_status()
        yield Bench(platform, service, http)
        # Leave the day's bill as the platform's ledger has it, for the next test.
        httpx.delete(f"{platform.control}/bills/adjustments").raise_for_status()
        httpx.delete(f"{platform.control}/faults").raise_for_status()


def proxy(platform: Platform) -> Starlette:
    """Between the adapter and the simulator, with the platform's impostor rewrites."""
    hop = {"content-length", "transfer-encoding", "connection", "content-encoding"}

    async def forward(request: Request) -> Response:
        path = request.url.path
        headers = {k: v for k, v in request.headers.items() if k not in hop and k != "host"}
        if platform.keep_host:
            headers["host"] = request.headers["host"]
        body = platform.impostor(path, headers, await request.body())
        async with httpx.AsyncClient() as http:
            answer = await http.request(
                request.method,
                platform.url + path,
                params=request.query_params,
                headers=headers,
                content=body,
            )
        content = answer.content
        if answer.status_code == 200:
            content = platform.impostor_answer(path, content)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in hop}
        return Response(content, answer.status_code, headers=kept)

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


# --- the tests -----------------------------------------------------------------------------------


def added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The discrepancies a test added to the day's report (earlier tests' stay, resolved)."""
    counts = {kind: n - before.get(kind, 0) for kind, n in after.items()}
    return {kind: n for kind, n in counts.items() if n}


async def run(bench: Bench, **options: Any) -> dict[str, Any]:
    async with reconciler(bench.service, **options) as recon:
        report = await recon.run(OPS, branch="zj", provider=bench.provider, day=today())
    return report


async def test_a_clean_day_matches_everything_and_the_sums_equal_the_bills_totals(
    bench: Bench,
) -> None:
    baseline = await run(bench)
    before = baseline["totals"]
    first, second = await bench.paid(), await bench.paid()
    bench.refunded(first, 300)
    await bench.paid("bj")  # another branch's merchant: not on zj's bill
    amount = first["amount"]["amountFen"] + second["amount"]["amountFen"]

    report = await run(bench)
    assert report["_id"] == bench.rec_id
    assert report["status"] == "COMPLETE" and report["error"] is None, report
    totals = report["totals"]
    assert totals["billTotalsAgree"] is True
    assert totals["bill"] == {key: totals[key] for key in SUMS}
    assert totals["matchedCount"] == totals["billLines"]
    assert report["discrepancyCounts"] == baseline["discrepancyCounts"]
    assert report["openDiscrepancies"] == 0
    added = {key: totals[key] - before[key] for key in ("paymentCount", "paymentFen")}
    assert added == {"paymentCount": 2, "paymentFen": amount}
    assert totals["refundCount"] - before["refundCount"] == 1
    assert totals["refundFen"] - before["refundFen"] == 300
    assert totals["matchedFen"] - before["matchedFen"] == amount + 300
    assert totals["feeFen"] > before["feeFen"]


async def test_each_discrepancy_kind_is_reported_with_the_right_kind_and_ids(
    bench: Bench,
) -> None:
    baseline = (await run(bench))["discrepancyCounts"]
    fine, dropped, changed, doubled = [await bench.paid() for _ in range(4)]
    bill_only = f"BILLONLY{uuid.uuid4().hex[:12].upper()}"
    adjust(bench.platform, action="drop", outTradeNo=dropped["outTradeNo"])
    adjust(bench.platform, action="amount", outTradeNo=changed["outTradeNo"], amountFen=1)
    adjust(bench.platform, action="duplicate", outTradeNo=doubled["outTradeNo"])
    adjust(bench.platform, action="add", kind="PAYMENT", outTradeNo=bill_only, amountFen=4200)

    report = await run(bench)
    assert report["status"] == "COMPLETE", report
    async with reconciler(bench.service) as recon:
        found = [d for d in await all_discrepancies(recon, bench.rec_id) if d["open"]]
    by_kind = {d["kind"]: d for d in found}
    assert sorted((d["kind"], d["outTradeNo"], d["outRefundNo"]) for d in found) == [
        ("AMOUNT_MISMATCH", changed["outTradeNo"], None),
        ("DUPLICATE_ON_BILL", doubled["outTradeNo"], None),
        ("MISSING_LOCALLY", bill_only, None),
        ("MISSING_ON_PLATFORM", dropped["outTradeNo"], None),
    ]
    for kind, doc in by_kind.items():
        assert doc["_id"] == f"{bench.rec_id}:{kind}:{doc['outTradeNo']}:"
        assert (doc["branch"], doc["provider"]) == ("zj", bench.provider)
    mismatch = by_kind["AMOUNT_MISMATCH"]
    assert (mismatch["billAmountFen"], mismatch["ourAmountFen"]) == (
        1,
        changed["amount"]["amountFen"],
    )
    assert (
        mismatch["providerTradeNo"]
        == stored(bench.service, changed["outTradeNo"])["providerTradeNo"]
    )
    assert by_kind["MISSING_ON_PLATFORM"]["billAmountFen"] is None
    assert by_kind["MISSING_ON_PLATFORM"]["ourAmountFen"] == dropped["amount"]["amountFen"]
    assert (
        by_kind["MISSING_LOCALLY"]["billAmountFen"],
        by_kind["MISSING_LOCALLY"]["ourAmountFen"],
    ) == (4200, None)
    assert added(baseline, report["discrepancyCounts"]) == {
        "AMOUNT_MISMATCH": 1,
        "DUPLICATE_ON_BILL": 1,
        "MISSING_LOCALLY": 1,
        "MISSING_ON_PLATFORM": 1,
    }
    assert report["openDiscrepancies"] == 4
    assert fine["outTradeNo"] not in {d["outTradeNo"] for d in found}
    assert report["totals"]["billTotalsAgree"] is True  # the bill agrees with its own summary


async def test_a_refund_on_the_bill_that_we_hold_as_pending_is_reported_and_applied(
    bench: Bench,
) -> None:
    payment = await bench.paid()
    out_refund_no = await bench.platform.refund_unheard(bench.service, payment, 200)
    assert refund_line(bench.service, payment, out_refund_no)["status"] == "PENDING"

    report = await run(bench)
    assert report["status"] == "COMPLETE", report
    async with reconciler(bench.service) as recon:
        docs = await all_discrepancies(recon, bench.rec_id)
    (found,) = [d for d in docs if d["outTradeNo"] == payment["outTradeNo"]]
    assert found["_id"] == (
        f"{bench.rec_id}:STATUS_MISMATCH:{payment['outTradeNo']}:{out_refund_no}"
    )
    assert (found["kind"], found["outRefundNo"]) == ("STATUS_MISMATCH", out_refund_no)
    assert (found["billStatus"], found["ourStatus"]) == ("SUCCEEDED", "PENDING")
    assert not found["open"] and found["resolution"]["how"] == "APPLIED"
    assert report["openDiscrepancies"] == 0
    assert refund_line(bench.service, payment, out_refund_no)["status"] == "SUCCEEDED"
    assert bench.service.order(payment["orderId"])["status"] == "PARTIALLY_REFUNDED"


async def test_a_missed_notification_is_applied_once_when_repeated_and_when_two_runs_race(
    bench: Bench,
) -> None:
    baseline = (await run(bench))["discrepancyCounts"]
    missed = await bench.started()
    await bench.platform.settle(missed)  # paid at the platform; we never heard
    assert stored(bench.service, missed["outTradeNo"])["status"] == "PENDING"

    async with reconciler(bench.service) as one, reconciler(bench.service) as other:
        first, second = await asyncio.gather(
            one.run(OPS, branch="zj", provider=bench.provider, day=today()),
            other.run(ZJ_ADMIN, branch="zj", provider=bench.provider, day=today()),
        )
        assert first == second  # the second waited for the first and returned its result
        assert first["status"] == "COMPLETE" and first["openDiscrepancies"] == 0, first
        assert added(baseline, first["discrepancyCounts"]) == {"STATUS_MISMATCH": 1}
        payment = stored(bench.service, missed["outTradeNo"])
        assert payment["status"] == "SUCCEEDED" and payment["paidAt"] is not None
        assert bench.service.order(missed["orderId"])["status"] == "PAID"
        (found,) = [
            d
            for d in await all_discrepancies(one, first["_id"])
            if d["outTradeNo"] == missed["outTradeNo"]
        ]
        assert (found["kind"], found["ourStatus"], found["billStatus"]) == (
            "STATUS_MISMATCH",
            "PENDING",
            "SUCCEEDED",
        )
        assert not found["open"] and found["resolution"]["how"] == "APPLIED"
        assert found["resolution"]["by"] == "reconciliation"

        # Again, then twice at once again: nothing more applied, the same discrepancy.
        again = await one.run(OPS, branch="zj", provider=bench.provider, day=today())
        third, fourth = await asyncio.gather(
            one.run(OPS, branch="zj", provider=bench.provider, day=today()),
            other.run(OPS, branch="zj", provider=bench.provider, day=today()),
        )
        for report in (again, third, fourth):
            assert report["discrepancyCounts"] == first["discrepancyCounts"]
            assert report["openDiscrepancies"] == 0
        (still,) = [
            d
            for d in await all_discrepancies(one, first["_id"])
            if d["outTradeNo"] == missed["outTradeNo"]
        ]
        assert still["resolution"] == found["resolution"]
        assert still["detectedAt"] == found["detectedAt"]
    events = bench.service.db.payment_events.count_documents({"paymentId": payment["_id"]})
    assert events == 1
    assert len(stored(bench.service, missed["outTradeNo"])["eventIds"]) == 1


async def test_a_bill_of_another_branchs_merchant_is_refused(bench: Bench) -> None:
    await bench.paid("bj")
    await bench.paid()
    await run(bench)
    discrepancies = bench.service.db.discrepancies.count_documents({})
    server = LoopbackServer(proxy(bench.platform)).start()
    try:
        config = tomlkit.parse(bench.service.plugins_toml.read_text())
        table = config["branches"]["zj"]["providers"][bench.provider]
        for key, value in bench.platform.impostor_toml(server.url).items():
            table[key] = value
        rejecting = bench.service.plugins_toml.with_name(f"impostor-{bench.provider}.toml")
        rejecting.write_text(tomlkit.dumps(config))
        report = await run(bench, plugins_toml=rejecting)
    finally:
        server.stop()
    assert report["status"] == "FAILED", report
    assert report["error"].startswith("BILL_REJECTED: "), report["error"]
    assert bench.service.db.discrepancies.count_documents({}) == discrepancies
