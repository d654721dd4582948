"""A third-party provider pip-installed into a running service's venv, enabled live, used for real.

The service runs as its own process from a fresh venv. While it serves, the
example package is installed into that venv with pip and enabled for Zhejiang
by editing plugins.toml; then an order is paid through it end to end, and a
broken edit of the file leaves the last good configuration serving.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from api.dev.devdb import free_port
from api.dev.seed import seed
from api.domain.pii import PiiVault
from api.store import Store
from providers.kit.venv import create_venv, install_example
from tests.conftest import GraphQLClient, issue_key
from tests.schema.test_mutation import CREATE, offering_id, order_input

ROOT = Path(__file__).resolve().parents[2]
BRANCHES = """
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.sandbox]
enabled = true
gateway = "http://127.0.0.1:9"
secret = { file = "sandbox.key" }
"""
EXAMPLE_TABLE = """
[branches.zj.providers.example]
enabled = true
merchant_id = "M100"
api_key = { file = "example.key" }
gateway = "GATEWAY"
"""
SIMULATOR = """
import sys, uvicorn
from branchpay_example_provider.simulator import create_app
uvicorn.run(create_app("M100", sys.argv[2].encode()), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning")
"""
PROVIDERS = '{ branch(code: "zj") { providers { name } } configStatus { ok error } }'
START = """mutation($input: StartPaymentInput!) {
  startPayment(input: $input) { payment { id status } action { kind url qrCode } userErrors { code message } } }"""
STATUS = "query($id: ID!) { order(id: $id) { status payments { provider status } } }"


def eventually(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not true within {within} s")


def wait_listening(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within 60 s: {log.read_text()}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def test_an_outside_package_is_installed_enabled_live_and_pays(
    tmp_path: Path, mongo_uri: str, db_name: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    python = create_venv(tmp_path / "venv")
    (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
    api_key = secrets.token_urlsafe(24)
    (tmp_path / "example.key").write_text(api_key)
    config = tmp_path / "plugins.toml"
    config.write_text(BRANCHES)
    pii_key = base64.b64encode(secrets.token_bytes(32)).decode()

    async def load_catalog() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        vault = PiiVault(pii_key.encode())
        await seed(store, branches=["zj"], orders=0, ttl=timedelta(minutes=30), vault=vault)
        await store.close()

    asyncio.run(load_catalog())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BRANCHPAY_MONGODB_URI": mongo_uri,
        "BRANCHPAY_DATABASE": db_name,
        "BRANCHPAY_PLUGINS_TOML": str(config),
        "BRANCHPAY_PII_KEY": pii_key,
        "BRANCHPAY_DATA_DIR": str(tmp_path / "data"),
        "BRANCHPAY_PUBLIC_URL": url,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        processes.append(
            subprocess.Popen(
                [str(python), "-m", "api", "serve", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    wait_listening(f"{url}/healthz", processes[-1], log)
    with MongoClient(mongo_uri) as mongo:
        client = GraphQLClient(url, issue_key(mongo[db_name], "ops"))
    assert client.data(PROVIDERS)["branch"]["providers"] == [{"name": "sandbox"}]

    install_example(python)  # while the service runs
    gateway_port = free_port()
    simulator_log = tmp_path / "simulator.log"
    with simulator_log.open("wb") as out:
        processes.append(
            subprocess.Popen(
                [str(python), "-c", SIMULATOR, str(gateway_port), api_key],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    gateway = f"http://127.0.0.1:{gateway_port}"
    wait_listening(gateway, processes[-1], simulator_log)

    config.write_text(BRANCHES + EXAMPLE_TABLE.replace("GATEWAY", gateway))
    eventually(
        lambda: (
            client.data(PROVIDERS)["branch"]["providers"]
            == [{"name": "sandbox"}, {"name": "example"}]
        ),
        within=2.0,
    )

    order = client.data(
        CREATE,
        {
            "input": order_input(
                items=[{"offeringId": offering_id("zj-plan-129")}], idempotencyKey="example-0001"
            )
        },
    )["createOrder"]["order"]
    started = client.data(
        START, {"input": {"orderId": order["id"], "provider": "example", "method": "QR_CODE"}}
    )["startPayment"]
    assert started["userErrors"] == []
    assert started["action"]["kind"] == "QR_CODE" and started["action"]["qrCode"]
    paid = httpx.post(started["action"]["url"], data={"outcome": "success"})
    assert paid.status_code == 200, paid.text
    eventually(lambda: client.data(STATUS, {"id": order["id"]})["order"]["status"] == "PAID", 10.0)
    assert client.data(STATUS, {"id": order["id"]})["order"]["payments"] == [
        {"provider": "example", "status": "SUCCEEDED"}
    ]

    config.write_text(BRANCHES + "[branches.zj.providers.example\n")  # broken on purpose
    eventually(lambda: client.data(PROVIDERS)["configStatus"]["ok"] is False, within=2.0)
    after = client.data(PROVIDERS)
    assert "plugins.toml" in after["configStatus"]["error"]
    assert after["branch"]["providers"] == [{"name": "sandbox"}, {"name": "example"}]
