"""`branchpay serve --demo`, what `make run` runs: store, seed, simulators, Ctrl-C, restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.devdb import free_port, port_in_use

ROOT = Path(__file__).resolve().parent.parent
COUNT = "{ branches { code } orders(first: 1) { totalCount } }"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    return tmp_path


def environment(workdir: Path, db_port: int) -> dict[str, str]:
    env = {
        **os.environ,
        "BRANCHPAY_DATA_DIR": str(workdir / ".data"),
        "BRANCHPAY_PLUGINS_TOML": str(workdir / "plugins.toml"),
        "BRANCHPAY_DB_PORT": str(db_port),
        "BRANCHPAY_SEED_DEMO_ORDERS": "40",
    }
    env.pop("BRANCHPAY_MONGODB_URI", None)
    return env


def serve(workdir: Path, api_port: int, db_port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--demo", "--port", str(api_port)],
        cwd=workdir,
        env=environment(workdir, db_port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the service did not become ready within 60 s")


def create_key(workdir: Path, db_port: int) -> str:
    """`branchpay keys create` beside a running `make run`: it uses that store."""
    created = subprocess.run(
        [sys.executable, "-m", "api", "keys", "create", "--role", "ops", "--name", "me"],
        cwd=workdir,
        env=environment(workdir, db_port),
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


def ask(url: str, key: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/graphql", json={"query": COUNT}, headers={"authorization": f"Bearer {key}"}
    )
    data: dict[str, Any] = response.json()["data"]
    return data


def interrupt(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    return output


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    yield free_port(), free_port()


def test_serve_seeds_once_stops_on_ctrl_c_and_reuses_its_data(
    workdir: Path, ports: tuple[int, int]
) -> None:
    api_port, db_port = ports
    url = f"http://127.0.0.1:{api_port}"
    first = serve(workdir, api_port, db_port)
    try:
        wait_ready(first, url)
        anonymous = httpx.post(f"{url}/graphql", json={"query": COUNT})
        assert anonymous.status_code == 401
        key = create_key(workdir, db_port)
        body = ask(url, key)
        assert [b["code"] for b in body["branches"]] == ["zj", "bj", "yn", "he", "sc", "cq"]
        assert body["orders"]["totalCount"] == 40
    finally:
        output = interrupt(first)
    assert "seeded the demo" in output
    assert "keys create" in output  # how to create a first key
    assert not port_in_use(db_port), "the embedded store outlived Ctrl-C"
    assert (workdir / ".data" / "db").is_dir()
    for secret in ("sandbox.key", "pii.key"):
        assert (workdir / ".data" / "secrets" / secret).stat().st_mode & 0o077 == 0

    second = serve(workdir, api_port, db_port)
    try:
        wait_ready(second, url)
        body = ask(url, key)
        assert body["orders"]["totalCount"] == 40
    finally:
        output = interrupt(second)
    assert "seeded the demo" not in output


def test_a_taken_store_port_is_named(workdir: Path, ports: tuple[int, int]) -> None:
    api_port, db_port = ports
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", db_port))
        blocker.listen()
        process = serve(workdir, api_port, db_port)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"port {db_port}" in output and "already in use" in output


def test_an_invalid_plugins_toml_stops_start_up_with_its_table_path(
    workdir: Path, ports: tuple[int, int]
) -> None:
    config = workdir / "plugins.toml"
    config.write_text(
        config.read_text().replace(
            "[branches.zj.providers.sandbox]", "[branches.zj.providers.nosuch]"
        )
    )
    api_port, db_port = ports
    process = serve(workdir, api_port, db_port)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "[branches.zj.providers.nosuch]" in output
    assert "sandbox" in output  # the installed providers are listed
    assert not port_in_use(db_port)
