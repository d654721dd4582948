"""The API under test: uvicorn in a process of its own, in bench mode, on a loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from api.devdb import free_port

READY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ApiProcess:
    pid: int
    url: str
    workers: int


@contextlib.contextmanager
def running_api(
    mongodb_uri: str,
    database: str,
    *,
    workers: int,
    log_path: Path,
    profile_to: Path | None = None,
) -> Iterator[ApiProcess]:
    """Start ``uvicorn api.bench:app_factory`` and yield once /readyz answers 200.

    With ``profile_to`` the single worker runs under pyinstrument, whose text
    report is written there when the API stops.
    """
    port = free_port()
    env = os.environ | {
        "BRANCHPAY_MONGODB_URI": mongodb_uri,
        "BRANCHPAY_DATABASE": database,
        "BRANCHPAY_BENCH_MODE": "true",
        "BRANCHPAY_GRAPHIQL": "false",
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
        "api.bench:app_factory",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    api = ApiProcess(process.pid, f"http://127.0.0.1:{port}", workers)
    try:
        _wait_ready(process, api.url, log_path)
        yield api
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
