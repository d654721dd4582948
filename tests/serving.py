"""A real `branchpay serve` process for the tests that need one: its environment, its stop.

The folder holds its plugins.toml and .data; the simulators take free ports (a `make run`
beside the tests keeps its own). ``store`` is the suite's store (a URI, with ``database``)
or the port an embedded store of the serve's own is to take.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

STOP_SECONDS = 30


def serve_environment(
    workdir: Path,
    *,
    store: str | int,
    database: str | None = None,
    seed_orders: int = 0,
    **extra: str,
) -> dict[str, str]:
    env = {
        **os.environ,
        "BRANCHPAY_DATA_DIR": str(workdir / ".data"),
        "BRANCHPAY_PLUGINS_TOML": str(workdir / "plugins.toml"),
        "BRANCHPAY_SEED_DEMO_ORDERS": str(seed_orders),
        "BRANCHPAY_SIMULATOR_PORT": "0",
    }
    if isinstance(store, int):
        env["BRANCHPAY_DB_PORT"] = str(store)
        env.pop("BRANCHPAY_MONGODB_URI", None)
    else:
        env["BRANCHPAY_MONGODB_URI"] = store
    if database is not None:
        env["BRANCHPAY_DATABASE"] = database
    return env | extra


def stop(process: subprocess.Popen[Any], *, must_stop: bool = False) -> None:
    """Ctrl-C, as a person would; killed when it has not stopped in STOP_SECONDS.

    ``must_stop``: not stopping in time is the test's failure (after the kill).
    """
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        if must_stop:
            raise
