"""`branchpay serve --demo`, what `make run` runs: store, seed, simulators, Ctrl-C, restart.

Also its lifecycle: `branchpay store start|status|stop`, a serve that uses a store kept
running and leaves it so, one serve a folder, and SIGINT/SIGTERM in every phase.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
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

from api.cli import STOP_GRACE_SECONDS
from api.dev.devdb import free_port, port_in_use
from tests.serving import serve_environment

ROOT = Path(__file__).resolve().parents[2]
COUNT = "{ branches { code } orders(first: 1) { totalCount } }"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    return tmp_path


def environment(workdir: Path, db_port: int) -> dict[str, str]:
    """A serve with an embedded store of its own on ``db_port``, seeding 40 demo orders."""
    return serve_environment(workdir, store=db_port, seed_orders=40)


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
        # `serve --demo` serves the storefront, with a demo partner key of its own.
        assert httpx.get(f"{url}/demo").status_code == 200
        demo_key = httpx.get(f"{url}/demo/session").json()["key"]
        assert [b["code"] for b in ask(url, demo_key)["branches"]][:2] == ["zj", "bj"]
        # The demo lets the /admin console edit plugins.toml (off by default elsewhere).
        switched = httpx.post(
            f"{url}/graphql",
            json={
                "query": 'mutation { setProviderEnabled(input: {branch: "cq", provider: "alipay",'
                " enabled: false}) { changed userErrors { code } } }"
            },
            headers={"authorization": f"Bearer {key}"},
        ).json()["data"]["setProviderEnabled"]
        assert switched == {"changed": False, "userErrors": []}  # already off in the demo
    finally:
        output = interrupt(first)
    assert "seeded the demo" in output
    assert f"the partner storefront: {url}/demo" in output
    assert "keys create" in output  # how to create a first key
    # `make run` logs readable lines, not JSON (BRANCHPAY_LOG_FORMAT unset).
    assert re.search(r"Z \[info\s*\] Application startup complete", output), output
    assert not port_in_use(db_port), "the embedded store outlived Ctrl-C"
    assert (workdir / ".data" / "db").is_dir()
    for secret in ("sandbox.key", "pii.key"):
        assert (workdir / ".data" / "secrets" / secret).stat().st_mode & 0o077 == 0

    second = serve(workdir, api_port, db_port)
    try:
        wait_ready(second, url)
        body = ask(url, key)
        assert body["orders"]["totalCount"] == 40
        # The first process revoked its demo key as it stopped.
        revoked = httpx.post(
            f"{url}/graphql", json={"query": COUNT}, headers={"authorization": f"Bearer {demo_key}"}
        )
        assert revoked.status_code == 401
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


# --- the lifecycle: `branchpay store`, a store kept running, one serve a folder, signals ---


def branchpay(workdir: Path, db_port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """A short `branchpay` command; the timeout catches one that does not return."""
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        cwd=workdir,
        env=environment(workdir, db_port),
        capture_output=True,
        text=True,
        timeout=40,
    )


def recorded_store(workdir: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((workdir / ".data" / "db.pid").read_text())
    return record


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def stop_with(process: subprocess.Popen[str], signum: int, within: float) -> tuple[str, float]:
    started = time.monotonic()
    process.send_signal(signum)
    try:
        output, _ = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"serve ignored {signum!r} for {within} s:\n{output}") from None
    return output, time.monotonic() - started


def lock_is_free(workdir: Path) -> bool:
    with (workdir / ".data" / "serve.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.fixture
def kept_store(workdir: Path, ports: tuple[int, int]) -> Iterator[int]:
    """A store started with `branchpay store start`; its pid. Stopped at the end whatever happens."""
    _, db_port = ports
    started = branchpay(workdir, db_port, "store", "start")
    assert started.returncode == 0, started.stderr
    pid = int(recorded_store(workdir)["pid"])
    try:
        yield pid
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
            branchpay(workdir, db_port, "store", "stop")


def test_store_start_status_stop(workdir: Path, ports: tuple[int, int]) -> None:
    _, db_port = ports
    status = branchpay(workdir, db_port, "store", "status")
    assert status.returncode == 3
    assert "not running" in status.stdout and f"127.0.0.1:{db_port}" in status.stdout

    began = time.monotonic()
    started = branchpay(workdir, db_port, "store", "start")
    assert started.returncode == 0, started.stderr
    assert time.monotonic() - began < 20  # it returns; the store runs on detached
    record = recorded_store(workdir)
    try:
        assert record["port"] == db_port and record["owner"] is None
        assert record["storage"] == str((workdir / ".data" / "db").resolve())
        assert port_in_use(db_port) and alive(record["pid"])
        assert f"pid {record['pid']}" in started.stderr

        again = branchpay(workdir, db_port, "store", "start")
        assert again.returncode == 0
        assert "already runs" in again.stderr and f"pid {record['pid']}" in again.stderr

        status = branchpay(workdir, db_port, "store", "status")
        assert status.returncode == 0
        assert f"pid {record['pid']}, 127.0.0.1:{db_port} (accepting connections)" in status.stdout

        stopped = branchpay(workdir, db_port, "store", "stop")
        assert stopped.returncode == 0
        assert f"(pid {record['pid']}) stopped" in stopped.stderr
        assert not port_in_use(db_port) and not alive(record["pid"])
        assert not (workdir / ".data" / "db.pid").exists()
    finally:
        if alive(record["pid"]):
            os.kill(record["pid"], signal.SIGKILL)
    assert branchpay(workdir, db_port, "store", "status").returncode == 3
    assert "not running" in branchpay(workdir, db_port, "store", "stop").stderr


def test_store_commands_with_a_configured_mongodb_have_nothing_to_do(
    workdir: Path, ports: tuple[int, int]
) -> None:
    _, db_port = ports
    for action in ("start", "status", "stop"):
        done = subprocess.run(
            [sys.executable, "-m", "api", "store", action],
            cwd=workdir,
            env={
                **environment(workdir, db_port),
                "BRANCHPAY_MONGODB_URI": f"mongodb://127.0.0.1:{db_port}/",
            },
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0
        assert (
            "BRANCHPAY_MONGODB_URI is set" in done.stderr and f"nothing to {action}" in done.stderr
        )
    assert not port_in_use(db_port)


def test_serve_uses_a_running_store_and_leaves_it_running(
    workdir: Path, ports: tuple[int, int], kept_store: int
) -> None:
    """`branchpay store start`, `make run`, Ctrl-C, `make run` again: the store stays up."""
    api_port, db_port = ports
    url = f"http://127.0.0.1:{api_port}"
    first = serve(workdir, api_port, db_port)
    try:
        wait_ready(first, url)
    finally:
        output, took = stop_with(first, signal.SIGINT, within=30)
    assert first.returncode == 0, output
    assert took < 8, f"stopping took {took:.1f} s"  # no store to stop
    assert f"already running in this folder (pid {kept_store}" in output
    assert "starting the embedded store" not in output
    assert "seeded the demo" in output
    assert "keeps running" in output
    assert port_in_use(db_port) and alive(kept_store)

    second = serve(workdir, api_port, db_port)
    try:
        wait_ready(second, url)
    finally:
        output, _ = stop_with(second, signal.SIGTERM, within=30)
    assert second.returncode == 0, output
    assert f"already running in this folder (pid {kept_store}" in output
    assert "seeded the demo" not in output  # the same store, with the first one's data
    assert port_in_use(db_port) and alive(kept_store)
    assert recorded_store(workdir)["pid"] == kept_store


def test_a_second_serve_in_the_folder_is_refused_at_once(
    workdir: Path, ports: tuple[int, int]
) -> None:
    api_port, db_port = ports
    url = f"http://127.0.0.1:{api_port}"
    first = serve(workdir, api_port, db_port)
    try:
        wait_ready(first, url)
        store_pid = recorded_store(workdir)["pid"]
        began = time.monotonic()
        # Another API port, so that only the folder's lock can refuse it.
        second = serve(workdir, free_port(), db_port)
        output, _ = second.communicate(timeout=30)
        assert time.monotonic() - began < 10
        assert second.returncode == 1
        assert f"branchpay is already serving from this folder (pid {first.pid}, {url})" in output
        for started in ("starting the embedded store", "simulator", "seeded", "Uvicorn"):
            assert started not in output
        assert recorded_store(workdir)["pid"] == store_pid
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    finally:
        interrupt(first)
    assert not port_in_use(db_port)
    assert lock_is_free(workdir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_on_a_signal_with_the_store_it_started(
    workdir: Path, ports: tuple[int, int], signum: int
) -> None:
    api_port, db_port = ports
    url = f"http://127.0.0.1:{api_port}"
    process = serve(workdir, api_port, db_port)
    try:
        wait_ready(process, url)
        record = recorded_store(workdir)
        assert record["owner"] == process.pid
    finally:
        output, took = stop_with(process, signum, within=30)
    assert process.returncode == 0, output
    # The API stops in about a second; SecantusDB's own shutdown takes one to four more.
    assert took < 12, f"stopping took {took:.1f} s"
    assert not alive(record["pid"]), "the embedded store outlived serve"
    assert not port_in_use(db_port) and not port_in_use(api_port)
    assert not (workdir / ".data" / "db.pid").exists()
    assert lock_is_free(workdir)


def test_a_signal_during_start_up_stops_what_was_started(
    workdir: Path, ports: tuple[int, int]
) -> None:
    api_port, db_port = ports
    process = serve(workdir, api_port, db_port)
    pid_file = workdir / ".data" / "db.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists():  # the store is starting: its process exists, not yet ready
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    store_pid = recorded_store(workdir)["pid"]
    output, took = stop_with(process, signal.SIGTERM, within=20)
    assert process.returncode == 0, output
    assert "stopped before serving" in output
    assert took < 12, f"stopping took {took:.1f} s"  # mostly SecantusDB's own shutdown
    assert not alive(store_pid), "the store being started outlived serve"
    assert not port_in_use(db_port) and not port_in_use(api_port)


@pytest.mark.parametrize("demo", [True, False], ids=["in-the-seed", "in-the-app-start-up"])
def test_serve_stops_on_sigterm_even_when_its_store_does_not_answer(
    workdir: Path, ports: tuple[int, int], kept_store: int, demo: bool
) -> None:
    """A paused store hangs start-up; SIGTERM still ends serve, within its grace at worst.

    With --demo the seed waits on the store (outside uvicorn: unwound at once); without
    it the app's start-up does (inside uvicorn, which only sets a flag: the watchdog).
    """
    api_port, db_port = ports
    if not demo:
        seeded = branchpay(workdir, db_port, "seed")  # the demo keys the app's start-up reads
        assert seeded.returncode == 0, seeded.stderr
    os.kill(kept_store, signal.SIGSTOP)
    command = [sys.executable, "-m", "api", "serve", "--port", str(api_port)]
    process = subprocess.Popen(
        [*command, "--demo"] if demo else command,
        cwd=workdir,
        env={
            **environment(workdir, db_port),
            "BRANCHPAY_PII_KEY_FILE": str(workdir / ".data" / "secrets" / "pii.key"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(5)  # start-up now waits on the store
    output, took = stop_with(process, signal.SIGTERM, within=STOP_GRACE_SECONDS + 10)
    assert took < STOP_GRACE_SECONDS + 5, output
    assert not port_in_use(api_port)
    assert alive(kept_store), "serve must not stop a store it did not start"
    os.kill(kept_store, signal.SIGCONT)


def test_a_taken_api_port_is_named_and_nothing_starts(
    workdir: Path, ports: tuple[int, int]
) -> None:
    api_port, db_port = ports
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", api_port))
        blocker.listen()
        process = serve(workdir, api_port, db_port)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"port {api_port} on 127.0.0.1 is already in use" in output
    for started in ("starting the embedded store", "simulator", "seeded"):
        assert started not in output
    assert not port_in_use(db_port)
    assert not (workdir / ".data" / "db.pid").exists()
    assert not (workdir / ".data" / "secrets").exists()
    assert lock_is_free(workdir)
