"""Store outages, made for real: the test's own SecantusDB, paused (SIGSTOP) or killed (SIGKILL).

Each test starts a store process of its own on a free port (never the
session's shared one), runs the real app on it under uvicorn next to the
sandbox simulator, and then stops or kills that process while requests,
notifications and subscriptions are under way. What must hold: answers within
5 s, as JSON errors coded STORE_UNAVAILABLE with an errorId and nothing of the
driver's message; ``/readyz`` right and ``/healthz`` answering throughout; no
acknowledged write lost or doubled; subscriptions resuming without a gap or a
repeat once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import monitoring

from api.dev import devdb
from providers.kit.loopback import LoopbackServer
from tests.conftest import issue_key
from tests.services.conftest import (
    CREATE_ORDER,
    ORDER_EVENTS,
    PayService,
    PayServices,
    object_id,
    offering_id,
)

ERROR_ID = re.compile(r"[0-9a-f]{32}")
ORDERS = "{ orders(first: 5) { edges { node { id status } } } }"
FAIL = {"code": "FAIL", "message": "notification rejected"}


@dataclass
class OwnStore:
    """A SecantusDB process of the test's own, to pause, resume, kill and restart."""

    path: Path
    server: devdb.EmbeddedStore
    paused: bool = False

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def port(self) -> int:
        return self.server.port

    def pause(self) -> None:
        """SIGSTOP, and wait until every thread has stopped (a few ms on a busy machine).

        kill() returns before the threads stop, and one that is still running
        answers a command sent meanwhile.
        """
        pid = self.server.process.pid
        os.kill(pid, signal.SIGSTOP)
        self.paused = True
        deadline = time.monotonic() + 5
        while not all(state in "Tt" for state in _thread_states(pid)):
            assert time.monotonic() < deadline, "the store did not stop"
            time.sleep(0.001)

    def resume(self) -> None:
        os.kill(self.server.process.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        self.server.process.kill()
        self.server.process.wait(10)

    def restart(self) -> None:
        """The same data directory on the same port, as an operator would bring it back."""
        self.server = devdb.start(self.path, self.server.port)

    def fail(self, how: str) -> None:
        """``pause``: the process hangs (SIGSTOP); ``kill``: it is gone (SIGKILL)."""
        if how == "pause":
            self.pause()
        else:
            self.kill()

    def recover(self, how: str) -> None:
        if how == "pause":
            self.resume()
        else:
            self.restart()

    def ensure_running(self) -> None:
        if self.paused:
            self.resume()
        if self.server.process.poll() is not None:
            self.restart()


def _thread_states(pid: int) -> list[str]:
    """The scheduler state of each thread of ``pid`` (Linux /proc; ``T`` is stopped)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return states


@pytest.fixture
def own_store(tmp_path: Path) -> Iterator[OwnStore]:
    path = tmp_path / "store" / "db"
    store = OwnStore(path, devdb.start(path))
    yield store
    if store.paused:
        store.resume()
    store.server.stop()


class Tripwire(monitoring.CommandListener):
    """Pauses the store just before the app sends ``command`` on ``collection``, once armed.

    So a request is past the API-key gate (which reads the store too) when
    the store stops: the failure surfaces inside GraphQL execution.
    """

    def __init__(self, store: OwnStore, command: str, collection: str) -> None:
        self.store = store
        self.command = command
        self.collection = collection
        self.armed = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if (
            self.armed
            and event.command_name == self.command
            and event.command.get(self.command) == self.collection
        ):
            self.armed = False
            self.store.pause()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class Deadlines(monitoring.CommandListener):
    """Records the maxTimeMS of every command the app sends, and whether the store took it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.refused: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, event.command.get("maxTimeMS")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.refused.append(f"{event.command_name}: {event.failure}")


@dataclass
class OutageService:
    service: PayService
    store: OwnStore
    app_store: Any  # the app's api.store.Store, to read its client's options
    app: Any  # the app itself, to read its state
    records: list[logging.LogRecord] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.service.url


@pytest.fixture
def start_outage_service(
    own_store: OwnStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[..., OutageService]]:
    """The sandbox simulator and branchpay (real app, uvicorn) on the test's own store."""
    caplog.set_level(logging.INFO)
    services = PayServices(tmp_path, own_store.uri, f"bp_outage_{uuid.uuid4().hex[:8]}")

    def start(
        listeners: tuple[monitoring.CommandListener, ...] = (), **settings: Any
    ) -> OutageService:
        service = services.start(listeners=listeners, **settings)
        app = services.apps[-1]
        return OutageService(service, own_store, app.state.store, app, caplog.records)

    yield start
    # Bring the store back first: the app and the clean-up talk to it.
    own_store.ensure_running()
    services.stop()


def post(
    url: str, key: str | None, query: str, variables: dict[str, Any] | None = None
) -> tuple[httpx.Response, float]:
    """One GraphQL request over HTTP; returns the response and how long it took."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    started = time.monotonic()
    response = httpx.post(
        f"{url}/graphql",
        json={"query": query, "variables": variables or {}},
        headers=headers,
        timeout=60.0,
    )
    return response, time.monotonic() - started


def assert_store_unavailable(
    response: httpx.Response, took: float, store: OwnStore, retry_after: int
) -> str:
    """A clean 503 STORE_UNAVAILABLE within 5 s; returns its errorId."""
    assert took < 5.0, f"answered after {took:.2f} s"
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == str(retry_after)
    body = response.json()
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "STORE_UNAVAILABLE"
    error_id = error["extensions"]["errorId"]
    assert ERROR_ID.fullmatch(error_id)
    assert error_id in error["message"]
    assert_no_internals(response.text, store)
    return str(error_id)


def assert_no_internals(text: str, store: OwnStore) -> None:
    for secret in ("127.0.0.1", str(store.port), "Topology", "timed out", "Timeout", "Traceback"):
        assert secret not in text, f"{secret!r} leaked: {text}"


def assert_logged_once_without_traceback(records: list[logging.LogRecord], error_id: str) -> None:
    mentions = [r for r in records if error_id in r.getMessage()]
    assert len(mentions) == 1, [r.getMessage() for r in mentions]
    assert mentions[0].levelno == logging.WARNING
    assert mentions[0].exc_info is None


def assert_no_tracebacks(records: list[logging.LogRecord]) -> None:
    noisy = [r.getMessage() for r in records if r.name.startswith("branchpay") and r.exc_info]
    assert noisy == []


def create_order_input(key: str) -> dict[str, Any]:
    return {
        "input": {
            "branch": "zj",
            "items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 1}],
            "customer": {"name": "Li Lei", "phone": "13912345678"},
            "idempotencyKey": key,
        }
    }


def test_the_store_client_has_the_timeouts_and_durability_of_the_settings(
    start_outage_service: Callable[..., OutageService],
) -> None:
    deadlines = Deadlines()
    running = start_outage_service(
        listeners=(deadlines,),
        expiry_interval_seconds=3600,
        store_timeout_seconds=3.5,
        store_server_selection_timeout_seconds=1.5,
        store_connect_timeout_seconds=1.25,
        store_socket_timeout_seconds=6.0,
    )
    options = running.app_store.client.options
    assert options.server_selection_timeout == 1.5
    assert options.pool_options.connect_timeout == 1.25
    assert options.pool_options.socket_timeout == 6.0
    assert running.app_store.client.write_concern.document == {"j": True}

    # Every command of a request carries the request's deadline as maxTimeMS, and the store takes it.
    deadlines.sent.clear()
    response, _ = post(running.url, running.service.client.key, ORDERS)
    assert response.status_code == 200 and "errors" not in response.json()
    sent = dict(deadlines.sent)
    assert {"find"} <= sent.keys()
    for name, max_time_ms in deadlines.sent:
        assert max_time_ms is not None and 0 < max_time_ms <= 3500, (name, max_time_ms)
    assert deadlines.refused == []
    # The tests' own listeners still reach the client (client_options win over the settings).
    assert running.service.commands


def test_a_paused_store_gets_a_json_503_within_5_s_and_ready_and_health_stay_right(
    start_outage_service: Callable[..., OutageService],
) -> None:
    running = start_outage_service(store_retry_after_seconds=7, expiry_interval_seconds=0.5)
    key = running.service.client.key
    assert post(running.url, key, ORDERS)[0].status_code == 200
    assert httpx.get(f"{running.url}/readyz").status_code == 200

    running.store.pause()
    # The API-key gate reads the store first, so the outage surfaces there.
    response, took = post(running.url, key, ORDERS)
    error_id = assert_store_unavailable(response, took, running.store, retry_after=7)
    print(f"\nSIGSTOP: 503 after {took:.2f} s")
    assert_logged_once_without_traceback(running.records, error_id)
    started = time.monotonic()
    health = httpx.get(f"{running.url}/healthz", timeout=10)
    assert health.status_code == 200 and time.monotonic() - started < 1.0
    started = time.monotonic()
    ready = httpx.get(f"{running.url}/readyz", timeout=10)
    print(f"SIGSTOP: /readyz {ready.status_code} after {time.monotonic() - started:.2f} s")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert time.monotonic() - started < 5.0
    # Without a key nothing reads the store: still refused at once, not a 503.
    assert post(running.url, None, ORDERS)[0].status_code == 401
    time.sleep(1.0)  # the expiry job runs into the outage too

    running.store.resume()
    deadline = time.monotonic() + 10
    while httpx.get(f"{running.url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "/readyz stayed 503 after the store came back"
        time.sleep(0.1)
    response, _ = post(running.url, key, ORDERS)
    assert response.status_code == 200 and "errors" not in response.json()
    assert_no_tracebacks(running.records)


def test_a_store_lost_during_graphql_execution_is_a_coded_error_with_http_503(
    start_outage_service: Callable[..., OutageService], own_store: OwnStore
) -> None:
    tripwire = Tripwire(own_store, "find", "orders")
    running = start_outage_service(listeners=(tripwire,))
    key = running.service.client.key

    tripwire.armed = True
    response, took = post(running.url, key, ORDERS)
    error_id = assert_store_unavailable(response, took, running.store, retry_after=5)
    print(f"\nSIGSTOP inside GraphQL: 503 after {took:.2f} s")
    assert response.json()["errors"][0]["path"] == ["orders"]
    assert_logged_once_without_traceback(running.records, error_id)
    running.store.resume()
    response, _ = post(running.url, key, ORDERS)
    assert response.status_code == 200 and "errors" not in response.json()


def test_a_killed_store_loses_and_doubles_no_acknowledged_order(
    start_outage_service: Callable[..., OutageService],
) -> None:
    running = start_outage_service()
    key = running.service.client.key
    keys = [f"outage-{i:03d}-{uuid.uuid4().hex[:8]}" for i in range(28)]
    acknowledged: dict[str, str] = {}

    def create(idempotency_key: str) -> tuple[httpx.Response, float]:
        return post(running.url, key, CREATE_ORDER, create_order_input(idempotency_key))

    def created(response: httpx.Response) -> str:
        payload = response.json()["data"]["createOrder"]
        assert payload["userErrors"] == [], payload
        return str(payload["order"]["id"])

    for idempotency_key in keys[:20]:
        response, _ = create(idempotency_key)
        assert response.status_code == 200, response.text
        acknowledged[idempotency_key] = created(response)
    # Killed right after the last answer: a write acknowledged but not yet on disk would go.
    running.store.kill()
    refusals = [create(idempotency_key) for idempotency_key in keys[20:23]]
    for response, took in refusals:
        assert_store_unavailable(response, took, running.store, retry_after=5)
    print(f"\nSIGKILL: createOrder refused after {max(took for _, took in refusals):.2f} s at most")

    running.store.restart()
    # Every order acknowledged before the kill is there, once.
    for idempotency_key, order_id in acknowledged.items():
        assert running.service.db.orders.count_documents({"idempotencyKey": idempotency_key}) == 1
        assert running.service.db.orders.find_one({"_id": object_id(order_id)}) is not None
    # The refused ones and the rest, sent (again) with their keys: one order each.
    for idempotency_key in keys[20:]:
        deadline = time.monotonic() + 15
        while (response := create(idempotency_key)[0]).status_code != 200:
            assert response.status_code == 503 and time.monotonic() < deadline, response.text
            time.sleep(0.2)
        acknowledged[idempotency_key] = created(response)
    # Repeating an acknowledged one returns the same order.
    assert created(create(keys[0])[0]) == acknowledged[keys[0]]
    for idempotency_key in keys:
        assert running.service.db.orders.count_documents({"idempotencyKey": idempotency_key}) == 1
    assert running.service.db.orders.count_documents({}) == len(keys)
    assert len(set(acknowledged.values())) == len(keys)


@pytest.mark.parametrize("outage", ["pause", "kill"])
def test_a_notification_during_an_outage_gets_try_again_fast_and_its_redelivery_applies_once(
    start_outage_service: Callable[..., OutageService], outage: str
) -> None:
    running = start_outage_service()
    service = running.service
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    notification = service.settle(payment["outTradeNo"])

    running.store.fail(outage)
    started = time.monotonic()
    reply = httpx.post(
        f"{service.url}/notify/sandbox/zj",
        content=notification["body"].encode(),
        headers=notification["headers"],
        timeout=60,
    )
    took = time.monotonic() - started
    print(f"\n{outage}: notification answered {reply.status_code} after {took:.2f} s")
    assert took < 5.0
    assert reply.status_code == 400 and reply.json() == FAIL
    assert_no_internals(reply.text, running.store)
    running.store.recover(outage)

    # Nothing of it was applied.
    assert service.db.payment_events.count_documents({}) == 0
    assert service.order_doc(order["id"])["status"] == "PENDING_PAYMENT"
    # The platform delivers it again, twice: applied once.
    for _ in range(2):
        deadline = time.monotonic() + 15
        while (reply := service.deliver(notification)).status_code != 200:
            assert time.monotonic() < deadline, reply.text
            time.sleep(0.2)
        assert reply.json() == {"code": "SUCCESS"}
    assert service.db.payment_events.count_documents({}) == 1
    history = [entry["status"] for entry in service.order_doc(order["id"])["statusHistory"]]
    assert history == ["PENDING_PAYMENT", "PAID"]
    assert_no_tracebacks(running.records)


@pytest.mark.parametrize("outage", ["pause", "kill"])
async def test_a_subscription_gets_a_coded_error_during_an_outage_then_resumes_without_gap_or_repeat(
    start_outage_service: Callable[..., OutageService], outage: str
) -> None:
    from httpx_ws import aconnect_ws

    running = start_outage_service()
    service = running.service
    order = service.create_order()
    payment = service.start_payment(order["id"])["payment"]
    notification = service.settle(payment["outTradeNo"])

    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        aconnect_ws(f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]) as ws,
    ):
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"Authorization": f"Bearer {service.client.key}"},
            }
        )
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        await ws.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": ORDER_EVENTS, "variables": {"orderId": order["id"]}},
            }
        )
        first = await ws.receive_json(timeout=10)
        assert first["payload"]["data"]["orderEvents"]["status"] == "PENDING_PAYMENT"

        running.store.fail(outage)
        started = time.monotonic()
        message = await ws.receive_json(timeout=15)
        took = time.monotonic() - started
        print(f"\n{outage}: subscription error after {took:.2f} s")
        assert message["type"] == "next", message
        assert message["payload"]["data"] is None
        (error,) = message["payload"]["errors"]
        assert error["extensions"]["code"] == "STORE_UNAVAILABLE"
        assert ERROR_ID.fullmatch(error["extensions"]["errorId"])
        assert_no_internals(str(message), running.store)
        assert_logged_once_without_traceback(running.records, error["extensions"]["errorId"])

        await asyncio.sleep(2.0)  # the feed retries meanwhile
        running.store.recover(outage)
        restored = time.monotonic()

        # Changes made at once after the store is back, before the feed has reopened.
        def changes() -> None:
            deadline = time.monotonic() + 15
            while (reply := service.deliver(notification)).status_code != 200:
                assert time.monotonic() < deadline, reply.text
                time.sleep(0.2)
            assert service.refund(payment["id"], 2000)["userErrors"] == []
            assert service.refund(payment["id"], 3900)["userErrors"] == []

        with ThreadPoolExecutor(1) as pool:
            await asyncio.get_running_loop().run_in_executor(pool, changes)
        statuses: list[str] = []
        while True:
            message = await ws.receive_json(timeout=20)
            if message["type"] == "complete":
                break
            assert message["type"] == "next", message
            assert not message["payload"].get("errors"), message
            statuses.append(message["payload"]["data"]["orderEvents"]["status"])
            if len(statuses) == 1:
                print(
                    f"{outage}: first event {time.monotonic() - restored:.2f} s after the store was back"
                )
        assert statuses == ["PAID", "PARTIALLY_REFUNDED", "REFUNDED"]
    assert_no_tracebacks(running.records)


class Streams(monitoring.CommandListener):
    """Counts the change streams the app opens (aggregates with $changeStream) per collection."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pipeline = event.command.get("pipeline") or [{}]
        if event.command_name == "aggregate" and "$changeStream" in pipeline[0]:
            self.opened.append(event.command["aggregate"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_subscriber_leaving_during_an_outage_stops_the_retries(
    start_outage_service: Callable[..., OutageService],
) -> None:
    from httpx_ws import aconnect_ws

    streams = Streams()
    running = start_outage_service(listeners=(streams,))
    service = running.service
    order = service.create_order()
    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        aconnect_ws(f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]) as ws,
    ):
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"Authorization": f"Bearer {service.client.key}"},
            }
        )
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        await ws.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": ORDER_EVENTS, "variables": {"orderId": order["id"]}},
            }
        )
        assert (await ws.receive_json(timeout=10))["type"] == "next"
        running.store.kill()
        message = await ws.receive_json(timeout=15)
        assert message["payload"]["errors"][0]["extensions"]["code"] == "STORE_UNAVAILABLE"
    # Gone: were the feed still retrying, it would reopen its stream on orders
    # within the longest backoff of the store coming back. (The keys' stream
    # reopens: the key cache follows it for as long as the app runs.)
    before = streams.opened.count("orders")
    running.store.restart()
    await asyncio.sleep(7.0)
    assert streams.opened.count("orders") == before
    assert "api_keys" in streams.opened


def test_an_exception_escaping_the_app_is_answered_in_json_with_a_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pymongo.errors import ServerSelectionTimeoutError
    from starlette.types import Receive, Scope, Send

    from api.web.last_resort import LastResort

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/bug":
            raise RuntimeError("secret internals 127.0.0.1:27017")
        if scope["path"] == "/store":
            raise ServerSelectionTimeoutError("127.0.0.1:27017: timed out, Topology Description: x")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("after the start")

    caplog.set_level(logging.INFO)
    with LoopbackServer(LastResort(app, retry_after_seconds=9)) as server:
        bug = httpx.get(f"{server.url}/bug")
        store = httpx.get(f"{server.url}/store")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{server.url}/late")

    assert bug.status_code == 500 and bug.headers["content-type"] == "application/json"
    (error,) = bug.json()["errors"]
    assert bug.json()["data"] is None
    assert error["extensions"]["code"] == "INTERNAL"
    error_id = error["extensions"]["errorId"]
    assert ERROR_ID.fullmatch(error_id) and "secret" not in bug.text and "127.0.0.1" not in bug.text
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR and logged[0].exc_info

    assert store.status_code == 503 and store.headers["retry-after"] == "9"
    (error,) = store.json()["errors"]
    assert error["extensions"]["code"] == "STORE_UNAVAILABLE"
    assert "127.0.0.1" not in store.text and "Topology" not in store.text
    logged = [r for r in caplog.records if error["extensions"]["errorId"] in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING and not logged[0].exc_info
    # A failure after the response started is logged; the answer cannot be changed any more.
    assert any("after the response started" in r.getMessage() for r in caplog.records)


async def test_websocket_logins_and_new_operations_during_an_outage_answer_fast_with_a_code(
    start_outage_service: Callable[..., OutageService],
) -> None:
    from httpx_ws import WebSocketDisconnect, aconnect_ws

    running = start_outage_service()
    service = running.service
    login = {
        "type": "connection_init",
        "payload": {"Authorization": f"Bearer {service.client.key}"},
    }
    # A key this process has not seen yet: its login must read the store.
    unseen = issue_key(service.db, "ops")
    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        aconnect_ws(
            f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]
        ) as open_ws,
    ):
        await open_ws.send_json(login)
        assert (await open_ws.receive_json(timeout=10))["type"] == "connection_ack"
        running.store.pause()
        try:
            started = time.monotonic()
            # The key is known (cached), so an operation that needs no store is served...
            await open_ws.send_json(
                {"id": "1", "type": "subscribe", "payload": {"query": "{ branches { code } }"}}
            )
            served = await answer_to(open_ws, "1")
            assert served["type"] == "next" and served["payload"]["data"]["branches"]
            # ...and one that needs it gets the coded error, within the store deadline.
            await open_ws.send_json({"id": "2", "type": "subscribe", "payload": {"query": ORDERS}})
            refused = await answer_to(open_ws, "2")
            assert refused["type"] == "next", refused
            assert refused["payload"]["errors"][0]["extensions"]["code"] == "STORE_UNAVAILABLE"
            async with aconnect_ws(
                f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]
            ) as new_ws:
                await new_ws.send_json(
                    {"type": "connection_init", "payload": {"Authorization": f"Bearer {unseen}"}}
                )
                with pytest.raises(WebSocketDisconnect) as closed:
                    await new_ws.receive_json(timeout=15)
                assert closed.value.code == 1013
            # Bounded by the store deadline (4 s) for each of the two, not by the driver's 30 s.
            assert time.monotonic() - started < 20
        finally:
            running.store.resume()
        # The open socket still works once the store is back.
        await open_ws.send_json(
            {"id": "3", "type": "subscribe", "payload": {"query": "{ branches { code } }"}}
        )
        answer = await answer_to(open_ws, "3")
        assert answer["type"] == "next" and answer["payload"]["data"]["branches"]
    assert_no_tracebacks(running.records)


async def answer_to(ws: Any, operation: str) -> dict[str, Any]:
    """The next message for ``operation`` other than a completion."""
    while True:
        message: dict[str, Any] = await ws.receive_json(timeout=15)
        if message.get("id") == operation and message["type"] != "complete":
            return message


class Resumes(monitoring.CommandListener):
    """The $changeStream stage of every stream the app opens on orders."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pipeline = event.command.get("pipeline") or [{}]
        on_orders = event.command_name == "aggregate" and event.command["aggregate"] == "orders"
        if on_orders and "$changeStream" in pipeline[0]:
            self.stages.append(dict(pipeline[0]["$changeStream"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class RateLimitCalls(monitoring.CommandListener):
    """Counts the spends the app sends to the store's rate-limit buckets."""

    def __init__(self) -> None:
        self.sent = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "findAndModify" and event.command.get("findAndModify") == (
            "rate_limits"
        ):
            self.sent += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_killed_and_restarted_store_gives_every_subscriber_every_change_once(
    start_outage_service: Callable[..., OutageService],
) -> None:
    from httpx_ws import aconnect_ws

    resumes = Resumes()
    running = start_outage_service(listeners=(resumes,))
    service = running.service
    paid = []
    for _ in range(2):
        order = service.create_order()
        payment = service.start_payment(order["id"])["payment"]
        assert service.deliver(service.settle(payment["outTradeNo"])).status_code == 200
        paid.append((order["id"], payment["id"]))
    # Two sockets, four subscriptions: both orders on the first, the first order twice.
    plan = {"one": [paid[0][0], paid[1][0]], "two": [paid[0][0], paid[0][0]]}
    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        aconnect_ws(f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]) as one,
        aconnect_ws(f"{service.url}/graphql", http, subprotocols=["graphql-transport-ws"]) as two,
    ):
        sockets = {"one": one, "two": two}
        for name, ws in sockets.items():
            await ws.send_json(
                {
                    "type": "connection_init",
                    "payload": {"Authorization": f"Bearer {service.client.key}"},
                }
            )
            assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
            for n, order_id in enumerate(plan[name]):
                await ws.send_json(
                    {
                        "id": str(n),
                        "type": "subscribe",
                        "payload": {"query": ORDER_EVENTS, "variables": {"orderId": order_id}},
                    }
                )
            for _ in plan[name]:
                first = await ws.receive_json(timeout=10)
                assert first["payload"]["data"]["orderEvents"]["status"] == "PAID"
        assert len(resumes.stages) == 1  # one stream for the four

        running.store.kill()
        for name, ws in sockets.items():
            for _ in plan[name]:
                message = await ws.receive_json(timeout=15)
                assert message["payload"]["errors"][0]["extensions"]["code"] == "STORE_UNAVAILABLE"
        running.store.restart()

        def changes() -> None:
            (_, first_payment), (_, second_payment) = paid
            for payment_id, amount in ((first_payment, 1000), (second_payment, 2000)):
                deadline = time.monotonic() + 20
                while True:
                    try:
                        if service.refund(payment_id, amount)["userErrors"] == []:
                            break
                    except AssertionError:
                        pass  # STORE_UNAVAILABLE while the app reconnects
                    assert time.monotonic() < deadline, "the store did not come back"
                    time.sleep(0.2)
            assert service.refund(first_payment, 4900)["userErrors"] == []
            assert service.refund(second_payment, 3900)["userErrors"] == []

        with ThreadPoolExecutor(1) as pool:
            await asyncio.get_running_loop().run_in_executor(pool, changes)

        expected = ["PARTIALLY_REFUNDED", "REFUNDED"]
        for name, ws in sockets.items():
            got: dict[str, list[str]] = {str(n): [] for n in range(len(plan[name]))}
            completed: set[str] = set()
            while len(completed) < len(got):
                message = await ws.receive_json(timeout=20)
                if message["type"] == "complete":
                    completed.add(message["id"])
                    continue
                assert message["type"] == "next" and not message["payload"].get("errors"), message
                got[message["id"]].append(message["payload"]["data"]["orderEvents"]["status"])
            assert got == {op: expected for op in got}, (name, got)
    # The stream came back from its resume token (each subscriber got each change once).
    assert len(resumes.stages) >= 2
    assert all("resumeAfter" in stage for stage in resumes.stages[1:]), resumes.stages
    assert_no_tracebacks(running.records)


def test_a_store_that_hangs_on_a_rate_limit_spend_leaves_the_process_its_own_budget(
    start_outage_service: Callable[..., OutageService], own_store: OwnStore
) -> None:
    """Fails open, bounded: the request is served while the store hangs, the limit still holds."""
    tripwire = Tripwire(own_store, "findAndModify", "rate_limits")
    calls = RateLimitCalls()
    spent = 6 + 1  # `{ branches { code } }` and the point every request owes
    running = start_outage_service(
        listeners=(tripwire, calls),
        expiry_interval_seconds=3600,
        rate_limit_per_second=0.001,
        rate_limit_burst=3 * spent,
        max_query_cost=3 * spent,
        rate_limit_store_timeout_seconds=0.3,
        rate_limit_fallback_seconds=600,
    )
    key = running.service.client_for("partner", "zj").key
    branches = "{ branches { code } }"

    def remaining(response: httpx.Response) -> int:
        assert response.status_code == 200, response.text
        return int(response.json()["extensions"]["cost"]["remaining"])

    assert remaining(post(running.url, key, branches)[0]) == 2 * spent  # the store's bucket
    # The store stops as the next spend is sent: the budget does not wait for it.
    tripwire.armed = True
    served, _ = post(running.url, key, branches)
    assert own_store.paused, "the tripwire did not fire"
    # Answered with the store still stopped; spent from the process's own, full, bucket.
    assert remaining(served) == 2 * spent
    own_store.resume()
    sent = calls.sent
    # While the fall-back lasts the store is not asked, and the process keeps the limit.
    assert remaining(post(running.url, key, branches)[0]) == spent
    assert remaining(post(running.url, key, branches)[0]) == 0
    limited, _ = post(running.url, key, branches)
    assert limited.status_code == 429, limited.text
    assert limited.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert calls.sent == sent
    counters = running.app.state.budgets["per-key"].counters
    # The spend that timed out and the two after it; the refusal needed no spend.
    assert (counters.store_failures, counters.local_spends) == (1, 3)
    lines = [r for r in running.records if r.name == "branchpay.ratelimit"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "per-key" in lines[0].getMessage()
    assert str(own_store.port) not in lines[0].getMessage()
    assert_no_tracebacks(running.records)
