"""The processes under test, each on a loopback port: the API and the sandbox gateway.

The API runs under uvicorn in bench mode with a plugins.toml of its own
(``.data/bench/plugins.toml``): the six demo branches, each offering only the
sandbox provider, whose simulator runs as a separate process so its work is
not charged to the API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import tomlkit

from api.dev.devdb import free_port, port_in_use
from bench.loadgen import idle_cpu_rate
from providers.sandbox.demo import SECRET_FILE, ensure_demo_keys

READY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """What every API process of a run shares: its plugins.toml and environment."""

    plugins_toml: Path
    environment: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ApiProcess:
    pid: int
    url: str
    workers: int
    # CPU seconds per second it spends with no request at all (background jobs),
    # measured once when it is ready, before any load.
    idle_cpu_rate: float


@contextlib.contextmanager
def running_api(
    mongodb_uri: str,
    database: str,
    *,
    workers: int,
    log_path: Path,
    config: ApiConfig,
    profile_to: Path | None = None,
) -> Iterator[ApiProcess]:
    """Start ``uvicorn bench.plain:app_factory`` and yield once /readyz answers 200.

    With ``profile_to`` the single worker runs under pyinstrument, whose text
    report is written there when the API stops.
    """
    port = free_port()
    env = os.environ | {
        "BRANCHPAY_MONGODB_URI": mongodb_uri,
        "BRANCHPAY_DATABASE": database,
        "BRANCHPAY_GRAPHIQL": "false",
        # Scenario (w)'s partner receiver listens on loopback (bench/receiver.py).
        "BRANCHPAY_WEBHOOKS_ALLOW_LOOPBACK": "true",
        **config.environment,
        "BRANCHPAY_PLUGINS_TOML": str(config.plugins_toml),
        # The simulator notifies the API at the address it was started on.
        "BRANCHPAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    profiler = (
        []
        if profile_to is None
        else [
            "-m",
            "pyinstrument",
            "--renderer",
            "text",
            "-p",
            "flat=true",
            "--outfile",
            str(profile_to),
        ]
    )
    command = [
        sys.executable,
        *profiler,
        "-m",
        "uvicorn",
        "bench.plain:app_factory",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        # Longer than uvicorn's 5 s: a pooled connection the generator left idle
        # while the store was slow must not be closed just as it is reused.
        "--timeout-keep-alive",
        "75",
        "--log-level",
        "warning",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, log_path)
        yield ApiProcess(process.pid, url, workers, idle_cpu_rate(process.pid))
    finally:
        # uvicorn re-raises the signal it stopped on; pyinstrument writes its
        # report on KeyboardInterrupt but is killed outright by SIGTERM.
        process.send_signal(signal.SIGINT if profile_to else signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(base_url=url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited with {process.returncode}; see {log_path}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            # Nothing to await across processes: poll the port until uvicorn listens.
            time.sleep(0.1)
    raise RuntimeError(f"the API was not ready within {READY_TIMEOUT:.0f} s; see {log_path}")


def write_plugins_toml(
    directory: Path, gateway: str, branches: Path = Path("plugins.toml")
) -> Path:
    """The bench's plugins.toml: the shipped branches, each offering the sandbox at ``gateway``."""
    shipped = tomlkit.parse(branches.read_text(encoding="utf-8"))
    document = tomlkit.document()
    document.add(tomlkit.comment("written by `make bench`; the shipped branches, sandbox only"))
    tables = tomlkit.table(is_super_table=True)
    for code, branch in shipped["branches"].items():
        table = tomlkit.table()
        for key in ("name", "province", "operator"):
            table[key] = branch[key]
        sandbox = tomlkit.table()
        sandbox["enabled"] = True
        sandbox["gateway"] = gateway
        sandbox["secret"] = tomlkit.inline_table()
        sandbox["secret"]["file"] = "secrets/sandbox.key"
        providers = tomlkit.table(is_super_table=True)
        providers["sandbox"] = sandbox
        table["providers"] = providers
        tables[code] = table
    document["branches"] = tables
    path = directory / "plugins.toml"
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return path


@contextlib.contextmanager
def listening_process(command: list[str], port: int, log_path: Path, name: str) -> Iterator[str]:
    """Run ``command`` (which listens on ``port``); yield its URL once it does; stop it after."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not port_in_use(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log_path}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_gateway(directory: Path, log_path: Path) -> Iterator[str]:
    """The sandbox simulator in its own process; yields its base URL once it listens."""
    ensure_demo_keys(directory / "secrets")
    secret = directory / "secrets" / SECRET_FILE
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "providers.sandbox.simulator",
        "--port",
        str(port),
        "--secret-file",
        str(secret),
    ]
    with listening_process(command, port, log_path, "the sandbox simulator") as url:
        yield url
