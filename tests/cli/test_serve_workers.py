"""`branchpay serve --workers 3` (`WORKERS=3 make run`): three API processes, one store, one
set of simulators; all three answer, and Ctrl-C stops every one of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from api.dev.devdb import free_port
from tests.conftest import issue_key
from tests.serving import serve_environment, stop

ROOT = Path(__file__).resolve().parents[2]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_three_workers_answer_share_the_store_and_stop_together(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_environment(tmp_path, store=mongo_uri, database=db_name, seed_orders=5)
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--demo", "--port", str(port), "--workers", "3"],
        cwd=tmp_path,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        # Fresh connections, many at once: the kernel hands each to whichever worker accepts.
        with ThreadPoolExecutor(12) as pool:
            while len(pids) < 3 and time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()

                def health(_: int) -> int | None:
                    try:
                        answer = httpx.get(f"{url}/healthz", timeout=2)
                    except httpx.TransportError:
                        return None
                    pid: int = answer.json()["pid"]
                    return pid

                pids.update(pid for pid in pool.map(health, range(24)) if pid is not None)
                time.sleep(0.1)
        assert len(pids) == 3, (pids, log.read_text())
        # Workers of this serve, not of anything else; the serve itself serves no request.
        assert {parent_of(pid) for pid in pids} == {process.pid}
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        with client:
            key = issue_key(client[db_name], "ops")
        answers = [
            httpx.post(
                f"{url}/graphql",
                json={"query": "{ orders(first: 1) { totalCount } }"},
                headers={"authorization": f"Bearer {key}"},
            ).json()
            for _ in range(6)
        ]
        # One store: every worker sees the seeded orders.
        assert {a["data"]["orders"]["totalCount"] for a in answers} == {5}
    finally:
        stop(process, must_stop=True)
        cleanup: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        with cleanup:
            cleanup.drop_database(db_name)
    output = log.read_text()
    assert process.returncode == 0, output
    # The parent started the simulators once; no worker started its own.
    assert output.count("sandbox gateway simulator on") == 1, output
    gone = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < gone:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
