"""The log output of a real `branchpay serve --demo` process: JSON lines, request ids, no PII.

One process for the module, on the suite's store (a database of its own), its
stdout and stderr captured in files, at log level DEBUG so that what the
quiet loggers (PyMongo's) would print at that level is searched too. The
zj branch's sandbox secret comes from an environment variable, the other
providers' keys from files, as plugins.toml allows. Orders with customer
names, phone and ID card numbers go through create, pay (the sandbox
simulator, whose notification comes back to /notify), refund and two refused
inputs; the output must hold none of those values, no secret, and no API
key's secret; every line is JSON and carries its request's id.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import aconnect_ws
from pymongo import MongoClient

from api.dev.devdb import free_port
from api.plugins.demo import write_secret
from tests.cli.test_serve import ROOT
from tests.conftest import GraphQLClient, issue_key
from tests.schema.test_mutation import offering_id
from tests.serving import serve_environment, stop

# Customers whose data goes through the flow (valid numbers) and through refusals.
CUSTOMERS = [
    {"name": "Zhang Xiuying", "phone": "13812345678", "idCardNumber": "11010519491231002X"},
    {"name": "欧阳修远", "phone": "15987654321"},
]
REFUSED = [
    # A bad ID card checksum, and a phone number one digit short.
    {"name": "Ouyang Mingyue", "phone": "13698765432", "idCardNumber": "110105194912310021"},
    {"name": "Sima Qianqian", "phone": "1391234567"},
]
PERSONAL = [
    value for customer in CUSTOMERS + REFUSED for value in customer.values() if len(value) > 4
]

CREATE = """
mutation CreateOrder($input: CreateOrderInput!) {
  createOrder(input: $input) { order { id } userErrors { code } }
}
"""
START = """
mutation StartPayment($input: StartPaymentInput!) {
  startPayment(input: $input) { payment { id outTradeNo } action { qrCode } userErrors { code } }
}
"""
ORDER = "query Order($id: ID!) { order(id: $id) { status payments { refunds { status } } } }"
REFUND = """
mutation RefundPayment($input: RefundPaymentInput!) {
  refundPayment(input: $input) { refund { status } userErrors { code message } }
}
"""
_FORM_ACTION = re.compile(r"<form\b[^>]*\baction=\"([^\"]*)\"", re.IGNORECASE)
SANDBOX_TABLE = """[branches.zj.providers.sandbox]
enabled = true
gateway = { file = ".data/secrets/sandbox.gateway" }
secret = { file = ".data/secrets/sandbox.key" }
"""


@dataclass
class Served:
    url: str
    workdir: Path
    db: Any
    stderr: Path
    stdout: Path
    keys: dict[str, str] = field(default_factory=dict)  # name -> the bearer secret
    env_secrets: list[str] = field(default_factory=list)

    def client(self, name: str, role: str, *branches: str) -> GraphQLClient:
        secret = issue_key(self.db, role, branches, name=name)
        self.keys[name] = secret
        return GraphQLClient(self.url, secret)

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines of stderr so far (its other lines are the console's messages)."""
        text = self.stderr.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def lines_of(
        self, request_id: str, *, until: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """The lines of one request, waiting for its request line (written after the answer)."""
        done = until or (lambda line: line.get("logger") == "branchpay.requests")
        deadline = time.monotonic() + 10
        while True:
            lines = [line for line in self.lines() if line.get("request_id") == request_id]
            if any(done(line) for line in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


def _wait_ready(process: subprocess.Popen[bytes], url: str, stderr: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, stderr.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the service did not become ready within 60 s:\n{stderr.read_text()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("logs")
    shipped = (ROOT / "plugins.toml").read_text()
    assert SANDBOX_TABLE in shipped
    (workdir / "plugins.toml").write_text(
        shipped.replace(
            SANDBOX_TABLE,
            SANDBOX_TABLE.replace(
                '{ file = ".data/secrets/sandbox.key" }', '{ env = "ZJ_SANDBOX_SECRET" }'
            ),
        )
    )
    # The simulator reads the file; the zj provider the same secret from the environment.
    sandbox_secret = secrets.token_urlsafe(32)
    write_secret(workdir / ".data" / "secrets" / "sandbox.key", sandbox_secret)
    api_port, database = free_port(), f"bp_logs_{uuid.uuid4().hex[:12]}"
    env = serve_environment(
        workdir,
        store=mongo_uri,
        database=database,
        BRANCHPAY_LOG_FORMAT="json",
        BRANCHPAY_LOG_LEVEL="DEBUG",
        ZJ_SANDBOX_SECRET=sandbox_secret,
    )
    env.pop("BRANCHPAY_PUBLIC_URL", None)
    url = f"http://127.0.0.1:{api_port}"
    # Beside the folder, not in it: the configuration watcher would log each write at DEBUG.
    output = tmp_path_factory.mktemp("logs-output")
    stdout, stderr = output / "stdout.log", output / "stderr.log"
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--demo", "--port", str(api_port)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=err,
        )
        try:
            _wait_ready(process, url, stderr)
            yield Served(
                url, workdir, client[database], stderr, stdout, env_secrets=[sandbox_secret]
            )
        finally:
            stop(process)
            client.drop_database(database)
            client.close()


def _global_key(global_id: str) -> str:
    return base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode().split(":")[1]


def _pay_as_payer(qr_code: str) -> None:
    with httpx.Client(timeout=30.0) as phone:
        page = phone.get(qr_code)
        assert page.status_code == 200, page.text
        found = _FORM_ACTION.search(page.text)
        target = page.url.join(html.unescape(found.group(1))) if found else page.url
        assert phone.post(target, data={"outcome": "success"}).status_code == 200


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within 20 s"
        time.sleep(0.2)


def _create(client: GraphQLClient, customer: dict[str, str], request_id: str) -> dict[str, Any]:
    response = client.http.post(
        "/graphql",
        json={
            "query": CREATE,
            "variables": {
                "input": {
                    "branch": "zj",
                    "items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 1}],
                    "customer": customer,
                    "idempotencyKey": f"logs-{uuid.uuid4().hex}",
                }
            },
        },
        headers={"x-request-id": request_id},
    )
    assert response.headers["x-request-id"] == request_id
    created: dict[str, Any] = response.json()["data"]["createOrder"]
    return created


@pytest.fixture(scope="module")
def flow(served: Served) -> dict[str, Any]:
    """Create, pay (the simulator notifies), refund, and refuse: what the tests read the logs of."""
    partner = served.client("zj-partner", "partner", "zj")
    admin = served.client("zj-admin", "branch_admin", "zj")
    created = [_create(partner, customer, f"create-{n}") for n, customer in enumerate(CUSTOMERS)]
    assert all(c["userErrors"] == [] for c in created), created
    refused = [_create(partner, customer, f"refused-{n}") for n, customer in enumerate(REFUSED)]
    assert [r["userErrors"][0]["code"] for r in refused] == ["INVALID_ID_CARD", "INVALID_PHONE"]
    order_id = created[0]["order"]["id"]
    started = partner.data(
        START, {"input": {"orderId": order_id, "provider": "sandbox", "method": "QR_CODE"}}
    )["startPayment"]
    assert started["userErrors"] == [], started
    _pay_as_payer(started["action"]["qrCode"])
    _until(lambda: partner.data(ORDER, {"id": order_id})["order"]["status"] == "PAID", "PAID")
    refunded = admin.data(
        REFUND,
        {
            "input": {
                "paymentId": started["payment"]["id"],
                "amountFen": 1000,
                "reason": "customer asked",
                "idempotencyKey": f"refund-{uuid.uuid4().hex}",
            }
        },
    )["refundPayment"]
    assert refunded["userErrors"] == [], refunded

    def refund_settled() -> bool:
        payments = partner.data(ORDER, {"id": order_id})["order"]["payments"]
        return [r["status"] for p in payments for r in p["refunds"]] == ["SUCCEEDED"]

    _until(refund_settled, "the refund")
    # A forged notification: refused, and logged under the id its sender gave.
    forged = httpx.post(
        f"{served.url}/notify/sandbox/zj",
        json={"out_trade_no": started["payment"]["outTradeNo"], "status": "SUCCESS"},
        headers={"x-request-id": "forged-notification-1"},
    )
    assert forged.headers["x-request-id"] == "forged-notification-1"
    served.lines_of("forged-notification-1")
    return {
        "order_id": _global_key(order_id),
        "payment_id": _global_key(started["payment"]["id"]),
        "out_trade_no": started["payment"]["outTradeNo"],
    }


def _secret_fragments(served: Served) -> list[str]:
    """Every secret the process holds: key files, the PII key, env secrets, API keys."""
    found = [*served.env_secrets, *served.keys.values()]
    for path in (served.workdir / ".data" / "secrets").iterdir():
        if path.suffix == ".gateway":  # the simulator's loopback URL, not a secret
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if len(line) >= 16 and not line.startswith("-----"):
                found.append(line)
    # The key's secret part alone, as a log line might show it without its prefix.
    found.extend(secret.split("_", 2)[2] for secret in served.keys.values())
    return found


def test_the_flow_logs_no_personal_data_and_no_secret(served: Served, flow: dict[str, Any]) -> None:
    output = served.stderr.read_text(encoding="utf-8") + served.stdout.read_text(encoding="utf-8")
    assert len(served.lines()) >= 15  # the flow was logged
    for value in PERSONAL:
        escaped = json.dumps(value)[1:-1]  # how a JSON line would hold it
        assert value not in output and escaped not in output, f"{value!r} is in the log"
    # The phone numbers without their country code or split by a masking would still be found:
    for customer in CUSTOMERS + REFUSED:
        assert customer["phone"][-8:] not in output
    fragments = _secret_fragments(served)
    assert len(fragments) >= 5
    for secret in fragments:
        assert secret not in output, "a secret is in the log"


def test_every_line_is_json_and_every_request_line_has_its_request_id(
    served: Served, flow: dict[str, Any]
) -> None:
    text = served.stderr.read_text(encoding="utf-8")
    others = [line for line in text.splitlines() if line and not line.startswith("{")]
    # What is not JSON is the console's own messages (the URL, how to make a key), no log line.
    for line in others:
        assert not re.search(r"\b(DEBUG|INFO|WARNING|ERROR)\b|Traceback|uvicorn", line), line
    lines = served.lines()
    assert {"timestamp", "level", "logger", "event"} <= set.intersection(
        *(set(line) for line in lines)
    )
    assert all(line["timestamp"].endswith("Z") for line in lines)  # UTC
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # uvicorn's lines joined
    assert not any(line["logger"].startswith("pymongo") for line in lines)  # quiet at DEBUG
    assert not any(line["logger"] == "uvicorn.access" for line in lines)  # the request line
    requests = [line for line in lines if line["logger"] == "branchpay.requests"]
    assert len(requests) >= 10
    assert all(re.fullmatch(r"[0-9a-f]{32}|[\w.:-]+", line["request_id"]) for line in requests)
    assert len({line["request_id"] for line in requests}) == len(requests)
    # Every line that names a key, an order or a payment was written inside a request.
    for line in lines:
        if {"key_name", "order_id", "payment_id"} & set(line):
            assert line.get("request_id"), line
    # The forged notification: its warning and its request line share the id it was sent with.
    forged = served.lines_of("forged-notification-1")
    assert [line["logger"] for line in forged] == [
        "branchpay.notifications",
        "branchpay.requests",
    ], forged
    assert forged[0]["level"] == "warning" and forged[0]["provider"] == "sandbox"
    assert {
        "method": "POST",
        "path": "/notify/sandbox/zj",
        "status": 400,
        "branch": "zj",
        "provider": "sandbox",
    }.items() <= forged[1].items()


def test_a_create_order_line_names_its_key_operation_branch_and_order(
    served: Served, flow: dict[str, Any]
) -> None:
    (line,) = served.lines_of("create-0")
    assert line["event"] == "request" and line["level"] == "info"
    assert line["method"] == "POST" and line["path"] == "/graphql" and line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["key_name"] == "zj-partner"
    assert line["operation"] == "CreateOrder" and line["operation_type"] == "mutation"
    assert line["branch"] == "zj" and line["order_id"] == flow["order_id"]
    # A refused input is logged without the order it did not create.
    (refused,) = served.lines_of("refused-0")
    assert refused["key_name"] == "zj-partner" and "order_id" not in refused
    # The notification the simulator sent for the payment names the order and the attempt.
    notified = [
        line
        for line in served.lines()
        if line["logger"] == "branchpay.requests"
        and line.get("path") == "/notify/sandbox/zj"
        and line.get("status") == 200
    ]
    assert notified and all(line["payment_id"] == flow["payment_id"] for line in notified)
    assert all(line["order_id"] == flow["order_id"] for line in notified)


BRANCHES = "query Branches { branches { code } }"


def test_a_sane_request_id_is_echoed_and_logged_an_insane_one_replaced(served: Served) -> None:
    client = served.client("ids-ops", "ops")
    sane = "partner-7f3a:retry.2/zj@edge+1=ok"
    answer = client.http.post("/graphql", json={"query": BRANCHES}, headers={"x-request-id": sane})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == sane
    (line,) = served.lines_of(sane)
    assert line["operation"] == "Branches" and line["key_name"] == "ids-ops"
    insane = ["x" * 129, "has spaces in it", 'quo"te', "tab\there", "ünïcode"]
    given: list[str] = []
    for value in insane:
        answer = client.http.post(
            "/graphql",
            json={"query": BRANCHES},
            headers=[(b"x-request-id", value.encode("latin-1"))],
        )
        assert answer.status_code == 200
        replaced = answer.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", replaced), replaced
        given.append(replaced)
        (line,) = served.lines_of(replaced)
        assert line["path"] == "/graphql"
    assert len(set(given)) == len(given)
    output = served.stderr.read_text(encoding="utf-8")
    for value in insane:
        assert value not in output and json.dumps(value)[1:-1] not in output
    # Refusals carry it too: the gate's 401, the view's 400, the body limit's 413.
    refusals = [
        httpx.post(
            f"{served.url}/graphql", json={"query": BRANCHES}, headers={"x-request-id": "r-401"}
        ),
        client.http.post(
            "/graphql",
            content=b"{not json",
            headers={"content-type": "application/json", "x-request-id": "r-400"},
        ),
        client.http.post(
            "/graphql",
            content=b"x" * 2_000_000,
            headers={"content-type": "application/json", "x-request-id": "r-413"},
        ),
    ]
    assert [(r.status_code, r.headers["x-request-id"]) for r in refusals] == [
        (401, "r-401"),
        (400, "r-400"),
        (413, "r-413"),
    ]
    assert [served.lines_of(rid)[-1]["status"] for rid in ("r-401", "r-400", "r-413")] == [
        401,
        400,
        413,
    ]


def test_an_internal_errors_error_id_is_the_request_id(served: Served) -> None:
    client = served.client("internal-ops", "ops")
    # An order document the code cannot read (no total): resolving it is our fault.
    broken = served.db.orders.insert_one(
        {"branch": "zj", "status": "PAID", "idempotencyKey": f"broken-{uuid.uuid4().hex}"}
    ).inserted_id
    order_id = base64.urlsafe_b64encode(f"Order:{broken}".encode()).decode().rstrip("=")
    query = "query Broken($id: ID!) { order(id: $id) { total { amountFen } } }"
    for sent in ({}, {"x-request-id": "support-case-1234"}):
        answer = client.http.post(
            "/graphql", json={"query": query, "variables": {"id": order_id}}, headers=sent
        )
        (error,) = answer.json()["errors"]
        assert error["extensions"]["code"] == "INTERNAL"
        request_id = answer.headers["x-request-id"]
        assert error["extensions"]["errorId"] == request_id == sent.get("x-request-id", request_id)
        lines = served.lines_of(request_id)
        reported = [line for line in lines if line["level"] == "error"]
        assert len(reported) == 1 and request_id in reported[0]["event"]
        assert "Traceback" in reported[0]["exception"]
        assert lines[-1]["logger"] == "branchpay.requests" and lines[-1]["operation"] == "Broken"
    served.db.orders.delete_one({"_id": broken})


def test_a_websocket_connection_has_an_id_on_its_lines(served: Served) -> None:
    client = served.client("ws-ops", "ops")

    async def connect() -> None:
        async with (
            httpx.AsyncClient(timeout=10.0) as http,
            aconnect_ws(
                f"{served.url}/graphql",
                http,
                subprotocols=["graphql-transport-ws"],
                headers={"x-request-id": "ws-logs-1"},
            ) as ws,
        ):
            await ws.send_json(
                {"type": "connection_init", "payload": {"Authorization": f"Bearer {client.key}"}}
            )
            assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
            await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": BRANCHES}})
            assert (await ws.receive_json(timeout=10))["type"] == "next"

    asyncio.run(connect())
    lines = served.lines_of("ws-logs-1", until=lambda line: line["event"] == "websocket closed")
    assert lines and lines[-1]["event"] == "websocket closed", lines
    assert {
        "logger": "branchpay.requests",
        "transport": "websocket",
        "path": "/graphql",
        "key_name": "ws-ops",
    }.items() <= lines[-1].items()
