"""Three `branchpay serve` processes on one store: one rate limit for the cluster.

A key's query-cost budget and an address's failed authentications are spent
from buckets in the store, so requests spread over the processes get the limit
once in total, not once per process, and the request over it is refused by
whichever process it reaches.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from pymongo.synchronous.database import Database

from api.dev.devdb import free_port
from tests.conftest import DEMO_BRANCHES_TOML, issue_key

ROOT = Path(__file__).resolve().parents[2]
BRANCHES = "{ branches { code } }"
SPENT = 6 + 1  # the query's cost (docs/security.md) and the point every request owes
REQUESTS = 6  # what the key's budget holds
FAILED_LOGINS = 4  # what the address's budget holds


@dataclass
class Cluster:
    urls: list[str]
    db: Database[dict[str, Any]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "sandbox.key").write_text(secrets.token_urlsafe(32))
    (folder / "plugins.toml").write_text(DEMO_BRANCHES_TOML.format(gateway="http://127.0.0.1:9"))
    database = f"bp_test_{uuid.uuid4().hex[:12]}"
    environment = {
        **os.environ,
        "BRANCHPAY_MONGODB_URI": mongo_uri,
        "BRANCHPAY_DATABASE": database,
        "BRANCHPAY_PLUGINS_TOML": str(folder / "plugins.toml"),
        "BRANCHPAY_PII_KEY": secrets.token_urlsafe(32),
        # One point back in 1,000 s: nothing is regained during the test.
        "BRANCHPAY_RATE_LIMIT_PER_SECOND": "0.001",
        "BRANCHPAY_RATE_LIMIT_BURST": str(REQUESTS * SPENT),
        "BRANCHPAY_MAX_QUERY_COST": str(REQUESTS * SPENT),
        "BRANCHPAY_FAILED_AUTH_PER_SECOND": "0.001",
        "BRANCHPAY_FAILED_AUTH_BURST": str(FAILED_LOGINS),
        "BRANCHPAY_RECONCILE_INTERVAL_SECONDS": "3600",
        "BRANCHPAY_EXPIRY_INTERVAL_SECONDS": "3600",
    }
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    urls: list[str] = []
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    try:
        for n in range(3):
            port = free_port()
            log = folder / f"serve-{n}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "api", "serve", "--port", str(port)],
                env={**environment, "BRANCHPAY_DATA_DIR": str(folder / f"data-{n}")},
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            processes.append((process, log))
            urls.append(f"http://127.0.0.1:{port}")
        for (process, log), url in zip(processes, urls, strict=True):
            _wait_ready(process, log, url)
        yield Cluster(urls, client[database])
    finally:
        for process, _ in processes:
            process.terminate()
        for process, _ in processes:
            process.wait(timeout=20)
        client.drop_database(database)
        client.close()


def _wait_ready(process: subprocess.Popen[bytes], log: Path, url: str) -> None:
    # Other processes: their readiness is only observable from outside.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready: {log.read_text()}")


def _post(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/graphql",
        json={"query": BRANCHES},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def _assert_limited(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert int(answer.headers["retry-after"]) >= 1


def test_a_keys_budget_is_spent_once_over_three_processes(cluster: Cluster) -> None:
    key = issue_key(cluster.db, "partner", ["zj"])
    answers = [_post(cluster.urls[n % 3], key) for n in range(REQUESTS)]
    assert [a.status_code for a in answers] == [200] * REQUESTS
    # Each process reports what is left of the one bucket the others spent from too.
    assert [a.json()["extensions"]["cost"]["remaining"] for a in answers] == [
        (REQUESTS - 1 - n) * SPENT for n in range(REQUESTS)
    ]
    # The next request is refused wherever it goes, the same way one process refuses it.
    for url in cluster.urls:
        _assert_limited(_post(url, key))
    # Another key has a budget of its own.
    other = issue_key(cluster.db, "partner", ["zj"])
    assert _post(cluster.urls[2], other).status_code == 200


def test_an_addresss_failed_logins_are_counted_once_over_three_processes(
    cluster: Cluster,
) -> None:
    guess = f"bp_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    answers = [_post(cluster.urls[n % 3], guess) for n in range(FAILED_LOGINS)]
    assert [a.status_code for a in answers] == [401] * FAILED_LOGINS
    assert {a.json()["errors"][0]["extensions"]["code"] for a in answers} == {"UNAUTHENTICATED"}
    for url in cluster.urls:
        _assert_limited(_post(url, guess))
    # A valid key from the same address is still served.
    assert _post(cluster.urls[1], issue_key(cluster.db, "partner", ["zj"])).status_code == 200
