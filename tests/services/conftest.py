"""A running branchpay wired to a running sandbox simulator, both on loopback.

The simulator and the service share a secret the fixture generates; the
service's ``public_url`` is set to its own loopback address once it listens, so
the notify URL it hands the simulator reaches it. Helpers create orders, start
payments and send signed notifications the way the simulator does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomlkit
from bson import ObjectId
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from pymongo import MongoClient
from pymongo.synchronous.database import Database
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.config.live import ProviderRegistry
from api.domain.bills import beijing_day
from api.domain.pii import PiiVault
from api.domain.principal import Principal, Role
from api.plugins.manager import load_plugin_manager
from api.services.bills import BillReconciliation, BillSettings
from api.services.payments import PaymentService
from api.settings import Settings
from api.store import Store
from providers.kit.loopback import LoopbackServer
from providers.sandbox import signing
from providers.sandbox.simulator import SandboxGateway
from providers.sandbox.simulator import create_app as create_simulator
from tests.conftest import DEMO_BRANCHES_TOML, CommandLog, GraphQLClient, issue_key

ROOT = Path(__file__).resolve().parents[2]
CREATE_ORDER = """
mutation($input: CreateOrderInput!) {
  createOrder(input: $input) { order { id status total { amountFen } } userErrors { code } }
}
"""
START = """
mutation($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { id status outTradeNo provider method amount { amountFen currency } }
    action { kind url qrCode formHtml appPayload }
    userErrors { field message code }
  }
}
"""
REFUND = """
mutation($input: RefundPaymentInput!) {
  refundPayment(input: $input) {
    refund { id outRefundNo status amount { amountFen } }
    payment { id status refunds { outRefundNo status amount { amountFen } } }
    userErrors { field message code }
  }
}
"""
CANCEL_ORDER = """
mutation($input: CancelOrderInput!) {
  cancelOrder(input: $input) { order { status } userErrors { code } }
}
"""
ORDER = """
query($id: ID!) {
  order(id: $id) {
    status
    payments { id status outTradeNo providerTradeNo flagged amount { amountFen }
               refunds { outRefundNo status amount { amountFen } } }
  }
}
"""


def object_id(global_id: str) -> ObjectId:
    decoded = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
    return ObjectId(decoded.split(":", 1)[1])


def offering_id(key: str) -> str:
    return base64.urlsafe_b64encode(f"Offering:{key}".encode()).decode().rstrip("=")


@dataclass
class PayService:
    """branchpay plus its sandbox gateway, with helpers for the payment flow."""

    url: str
    client: GraphQLClient
    db: Database[dict[str, Any]]
    settings: Settings
    gateway_url: str
    gateway: SandboxGateway
    secret: bytes
    plugins_toml: Path
    mongo_uri: str
    db_name: str
    commands: list[str]
    pii_key: str  # base64, for other processes of the same service

    def client_for(self, role: str, *branches: str) -> GraphQLClient:
        return GraphQLClient(self.url, issue_key(self.db, role, branches))

    def key_name(self, client: GraphQLClient) -> str:
        """The name the audit log shows for the client's key."""
        assert client.key is not None
        record = self.db.api_keys.find_one({"_id": client.key.split("_")[1]})
        assert record is not None
        return str(record["name"])

    def create_order(self, branch: str = "zj", offering: str = "zj-plan-59") -> dict[str, Any]:
        payload = self.client.data(
            CREATE_ORDER,
            {
                "input": {
                    "branch": branch,
                    "items": [{"offeringId": offering_id(offering), "quantity": 1}],
                    "customer": {"name": "Li Lei", "phone": "13912345678"},
                    "idempotencyKey": f"order-{uuid.uuid4().hex}",
                }
            },
        )["createOrder"]
        assert payload["userErrors"] == [], payload
        order: dict[str, Any] = payload["order"]
        return order

    def start_payment(
        self, order_id: str, provider: str = "sandbox", method: str = "PAGE"
    ) -> dict[str, Any]:
        payload: dict[str, Any] = self.client.data(
            START,
            {"input": {"orderId": order_id, "provider": provider, "method": method}},
        )["startPayment"]
        return payload

    def refund(self, payment_id: str, amount_fen: int, key: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = self.client.data(
            REFUND,
            {
                "input": {
                    "paymentId": payment_id,
                    "amountFen": amount_fen,
                    "reason": "customer asked",
                    "idempotencyKey": key or f"refund-{uuid.uuid4().hex}",
                }
            },
        )["refundPayment"]
        return payload

    def order(self, order_id: str) -> dict[str, Any]:
        order: dict[str, Any] = self.client.data(ORDER, {"id": order_id})["order"]
        return order

    def settle(self, out_trade_no: str, outcome: str = "success") -> dict[str, Any]:
        """Settle at the simulator without delivering; returns its signed notification."""
        response = httpx.post(
            f"{self.gateway_url}/control/payments/{out_trade_no}/settle",
            json={"outcome": outcome, "deliver": False},
        )
        response.raise_for_status()
        notification: dict[str, Any] = response.json()["notification"]
        return notification

    def reconcile(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `branchpay reconcile` in a process of its own against this service's store."""
        env = {
            **os.environ,
            "BRANCHPAY_MONGODB_URI": self.mongo_uri,
            "BRANCHPAY_DATABASE": self.db_name,
            "BRANCHPAY_PLUGINS_TOML": str(self.plugins_toml),
            "BRANCHPAY_PUBLIC_URL": self.url,
            "COLUMNS": "220",
        }
        return subprocess.run(
            [sys.executable, "-m", "api", "reconcile", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def settle_latest(self, out_trade_no: str) -> dict[str, Any]:
        """The simulator's latest notification for the attempt, signed afresh."""
        response = httpx.get(f"{self.gateway_url}/control/notifications/{out_trade_no}/latest")
        response.raise_for_status()
        notification: dict[str, Any] = response.json()
        return notification

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A notification signed with the branch's secret, as the simulator makes them."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {k.lower(): v for k, v in signing.signed_headers(self.secret, body).items()}
        return {"headers": {"content-type": "application/json", **headers}, "body": body.decode()}

    def event(
        self,
        out_trade_no: str,
        kind: str,
        amount_fen: int,
        *,
        event_id: str | None = None,
        out_refund_no: str | None = None,
        currency: str = "CNY",
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": event_id or f"ntf_{uuid.uuid4().hex}",
            "type": kind,
            "out_trade_no": out_trade_no,
            "trade_no": "sbxtest" + out_trade_no[-8:],
            "amount_fen": amount_fen,
            "currency": currency,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        if out_refund_no:
            payload["out_refund_no"] = out_refund_no
        return self.sign(payload)

    def deliver(self, notification: dict[str, Any], branch: str = "zj") -> httpx.Response:
        return self.deliver_to(f"/notify/sandbox/{branch}", notification)

    def deliver_to(self, path: str, notification: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            self.url + path,
            content=notification["body"].encode(),
            headers=notification["headers"],
        )

    def cancel(self, order_id: str) -> dict[str, Any]:
        payload: dict[str, Any] = self.client.data(CANCEL_ORDER, {"input": {"orderId": order_id}})[
            "cancelOrder"
        ]
        return payload

    def order_doc(self, order_id: str) -> dict[str, Any]:
        doc = self.db.orders.find_one({"_id": object_id(order_id)})
        assert doc is not None
        return doc

    def set_enabled(self, branch: str, *, enabled: bool) -> None:
        """Edit plugins.toml and wait until the running service has reloaded it."""
        document = tomlkit.parse(self.plugins_toml.read_text())
        document["branches"][branch]["providers"]["sandbox"]["enabled"] = enabled  # type: ignore[index]
        self.plugins_toml.write_text(tomlkit.dumps(document))
        query = "query($code: String!) { branch(code: $code) { providers { name } } }"
        deadline = time.monotonic() + 15
        # The reload happens in the server's watcher; its only outward sign is the branch view.
        while time.monotonic() < deadline:
            providers = self.client.data(query, {"code": branch})["branch"]["providers"]
            if bool(providers) is enabled:
                return
            time.sleep(0.1)
        raise AssertionError("the service did not reload plugins.toml")

    def wait_for_branch(self, branch: str) -> None:
        """Wait until the running service has reloaded a plugins.toml that has the branch."""
        query = "query($code: String!) { branch(code: $code) { code } }"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.client.data(query, {"code": branch})["branch"] is not None:
                return
            time.sleep(0.1)
        raise AssertionError(f"the service did not load branch {branch}")

    async def deliver_many(
        self, notification: dict[str, Any], count: int, branch: str = "zj"
    ) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30.0) as http:
            return list(
                await asyncio.gather(
                    *(
                        http.post(
                            f"{self.url}/notify/sandbox/{branch}",
                            content=notification["body"].encode(),
                            headers=notification["headers"],
                        )
                        for _ in range(count)
                    )
                )
            )


ORDER_EVENTS = """
subscription($orderId: ID!) {
  orderEvents(orderId: $orderId) {
    status reason at order { id status payments { status } }
  }
}
"""


class OrderFeed:
    """One orderEvents subscription over graphql-transport-ws."""

    def __init__(self, ws: AsyncWebSocketSession) -> None:
        self.ws = ws

    async def next(self, timeout: float = 15.0) -> dict[str, Any] | None:
        """The next event, or None when the server completed the subscription."""
        message = await self.ws.receive_json(timeout=timeout)
        if message["type"] == "complete":
            return None
        assert message["type"] == "next", message
        assert not message["payload"].get("errors"), message
        event: dict[str, Any] = message["payload"]["data"]["orderEvents"]
        return event

    async def statuses_until(self, status: str, timeout: float = 15.0) -> list[str]:
        seen: list[str] = []
        while status not in seen:
            event = await self.next(timeout)
            assert event is not None, f"completed after {seen}, before {status}"
            seen.append(event["status"])
        return seen


@contextlib.asynccontextmanager
async def order_feed(client: GraphQLClient, order_id: str) -> AsyncIterator[OrderFeed]:
    """Subscribe to orderEvents with the client's API key in the connection_init payload."""
    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        aconnect_ws(
            f"{client.base_url}/graphql", http, subprotocols=["graphql-transport-ws"]
        ) as ws,
    ):
        await ws.send_json(
            {"type": "connection_init", "payload": {"Authorization": f"Bearer {client.key}"}}
        )
        ack = await ws.receive_json(timeout=10)
        assert ack["type"] == "connection_ack", ack
        await ws.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": ORDER_EVENTS, "variables": {"orderId": order_id}},
            }
        )
        yield OrderFeed(ws)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SecondProcess:
    url: str
    client: GraphQLClient


def serve_process(
    service: PayService, tmp_path: Path, name: str, **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Another `branchpay serve` process on the service's store and plugins.toml; once ready."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--port", str(port)],
        env={
            **os.environ,
            "BRANCHPAY_MONGODB_URI": service.mongo_uri,
            "BRANCHPAY_DATABASE": service.db_name,
            "BRANCHPAY_PLUGINS_TOML": str(service.plugins_toml),
            "BRANCHPAY_DATA_DIR": str(tmp_path / name),
            "BRANCHPAY_PII_KEY": service.pii_key,
            "BRANCHPAY_RECONCILE_INTERVAL_SECONDS": "3600",
            **env,
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    # Another process: its readiness is only observable from outside.
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{name} did not become ready")


@pytest.fixture
def second_process(tmp_path: Path) -> Iterator[Callable[[PayService], SecondProcess]]:
    """Another `branchpay serve` process on the same store and plugins.toml as a PayService."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(service: PayService) -> SecondProcess:
        process, url = serve_process(service, tmp_path, f"serve-{len(processes)}")
        processes.append(process)
        return SecondProcess(url, GraphQLClient(url, service.client.key))

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


class PayServices:
    """Starts the sandbox simulator and branchpay (real app, uvicorn) on one store and database.

    ``start_payments`` uses the suite's store; the outage tests use a store of their
    own, which they pause and kill. ``apps`` holds each app, for tests that read its state.
    """

    def __init__(self, tmp_path: Path, mongo_uri: str, db_name: str) -> None:
        self.tmp_path = tmp_path
        self.mongo_uri = mongo_uri
        self.db_name = db_name
        self.servers: list[LoopbackServer] = []
        self.apps: list[Any] = []
        self.sync_client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)

    def start(
        self,
        extra_toml: str = "",
        listeners: tuple[Any, ...] = (),
        seed_branches: tuple[str, ...] = ("zj", "bj", "yn"),
        **settings: Any,
    ) -> PayService:
        from api.dev.seed import seed
        from api.store import Store
        from api.web.app import create_app

        tmp_path, mongo_uri, db_name = self.tmp_path, self.mongo_uri, self.db_name
        secret = secrets.token_urlsafe(32).encode()
        simulator = create_simulator(secret, retry_delays=(0.2, 0.5))
        gateway = LoopbackServer(simulator).start()
        self.servers.append(gateway)
        (tmp_path / "sandbox.key").write_bytes(secret)
        config = tmp_path / "plugins.toml"
        config.write_text(DEMO_BRANCHES_TOML.format(gateway=gateway.url) + extra_toml)
        settings.setdefault("reconcile_interval_seconds", 3600)
        settings.setdefault("rate_limit_per_second", 1_000_000.0)
        settings.setdefault("rate_limit_burst", 1_000_000)
        pii_key = base64.b64encode(secrets.token_bytes(32)).decode()
        options = Settings(
            plugins_toml=config,
            database=db_name,
            data_dir=tmp_path / "data",
            pii_key=pii_key,
            **settings,
        )

        async def load_demo() -> None:
            store = Store.connect(mongo_uri, db_name)
            await store.ensure_indexes()
            await seed(
                store,
                branches=list(seed_branches),
                orders=0,
                ttl=timedelta(minutes=30),
                vault=PiiVault(options.pii_master_key()),
            )
            await store.close()

        # In a thread of its own: async tests call this from inside their event loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, load_demo()).result()
        log = CommandLog()
        app = create_app(
            options, mongodb_uri=mongo_uri, client_options={"event_listeners": [log, *listeners]}
        )
        self.apps.append(app)
        server = LoopbackServer(app).start()
        self.servers.append(server)
        # Known only once it listens; read per request by the app, so set before any request.
        options.public_url = server.url
        db = self.sync_client[db_name]
        return PayService(
            url=server.url,
            client=GraphQLClient(server.url, issue_key(db, "ops")),
            db=db,
            settings=options,
            gateway_url=gateway.url,
            gateway=simulator.state.gateway,
            secret=secret,
            plugins_toml=config,
            mongo_uri=mongo_uri,
            db_name=db_name,
            commands=log.commands,
            pii_key=pii_key,
        )

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.sync_client.drop_database(self.db_name)
        self.sync_client.close()


@pytest.fixture
def start_payments(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> Iterator[Callable[..., PayService]]:
    """Start the simulator and branchpay (real app, uvicorn, store); both stop after the test."""
    services = PayServices(tmp_path, mongo_uri, db_name)
    yield services.start
    services.stop()


# --- partner webhooks: a receiver, and endpoints registered over GraphQL ----------------------

CREATE_WEBHOOK_ENDPOINT = """
mutation($input: CreateWebhookEndpointInput!) {
  createWebhookEndpoint(input: $input) {
    endpoint { id url events branches enabled ownerKey }
    secret
    userErrors { field message code }
  }
}
"""


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """A partner's webhook receiver: records every request, answers from a script."""

    answers: list[int] = field(default_factory=list)  # the next answers; then 200
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.received.append(Received(dict(request.headers), body))
                status = self.answers.pop(0) if self.answers else 200
            return Response(f"answer {status}", status_code=status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def wait_for(
        self, check: Callable[[list[Received]], bool], timeout: float = 30.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.received)
            if check(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"the receiver got {[r.event.get('type') for r in got]}")

    def types(self) -> list[str]:
        with self.lock:
            return [r.event["type"] for r in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = LoopbackServer(receiver.app()).start()
    receiver.url = f"{server.url}/hook"
    yield receiver
    server.stop()


def webhook_service(start_payments: Callable[..., PayService], **settings: Any) -> PayService:
    settings.setdefault("webhooks_allow_loopback", True)
    settings.setdefault("webhook_poll_seconds", 0.2)
    return start_payments(**settings)


def create_endpoint(
    service: PayService, client: Any, url: str, events: list[str], branches: list[str]
) -> tuple[str, str]:
    payload = client.data(
        CREATE_WEBHOOK_ENDPOINT, {"input": {"url": url, "events": events, "branches": branches}}
    )["createWebhookEndpoint"]
    assert payload["userErrors"] == [], payload
    assert payload["secret"].startswith("whsec_")
    return payload["endpoint"]["id"], payload["secret"]


def verified(secret: str, received: Received) -> dict[str, Any]:
    """The event, verified as any partner would verify it with the spec's library."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


# --- bill reconciliation: principals and a reconciler of its own --------------------------------

OPS = Principal("ops-test", Role.OPS, frozenset())
ZJ_ADMIN = Principal("zj-admin", Role.BRANCH_ADMIN, frozenset({"zj"}))
BJ_ADMIN = Principal("bj-admin", Role.BRANCH_ADMIN, frozenset({"bj"}))
ZJ_PARTNER = Principal("zj-partner", Role.PARTNER, frozenset({"zj"}))


def today() -> date:
    return beijing_day(datetime.now(UTC))


@contextlib.asynccontextmanager
async def reconciler(
    service: PayService,
    *,
    clock: Callable[[], datetime] | None = None,
    plugins_toml: Path | None = None,
    **settings: Any,
) -> AsyncIterator[BillReconciliation]:
    """A BillReconciliation on store and HTTP clients of its own, like another process's."""
    plugins = load_plugin_manager()
    store = Store.connect(service.mongo_uri, service.db_name)
    try:
        async with httpx.AsyncClient(timeout=15.0) as http:
            registry = ProviderRegistry(plugins_toml or service.plugins_toml, plugins, http)
            registry.load()
            payments = PaymentService(
                store, registry, base_url=lambda: service.url, plugins=plugins
            )
            yield BillReconciliation(
                store,
                registry,
                payments,
                settings=BillSettings(**settings),
                clock=clock or (lambda: datetime.now(UTC)),
            )
    finally:
        await store.close()


async def all_discrepancies(recon: BillReconciliation, rec_id: str) -> list[dict[str, Any]]:
    docs, more = await recon.discrepancies(OPS, rec_id, first=100, after=None, kind=None, open=None)
    assert not more
    return docs


def kinds(docs: list[dict[str, Any]], *, open_only: bool = True) -> set[tuple[str, str]]:
    return {(d["kind"], d["outTradeNo"]) for d in docs if d["open"] or not open_only}
