"""The ``branchpay`` command: serve, the embedded store, schema export, seed, plugins and config.

``serve`` owns its folder while it runs: a lock file in the data directory
(``.data/serve.lock``, holding its pid and URL) refuses a second ``serve`` there
at once, and the API port is bound before anything starts, so a port taken by
something else is named before a store or a simulator is started. SIGINT and
SIGTERM stop it in every phase, start-up included; should the shutdown hang,
a watchdog stops what it started and exits after ``STOP_GRACE_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console

from api.dev import devdb
from api.settings import Settings
from api.telemetry.logs import UVICORN_LOG_CONFIG, configure_logging

if TYPE_CHECKING:
    import uvicorn

console = Console(stderr=True)
SCHEMA_FILE = Path("schema.graphql")
SERVE_LOCK = "serve.lock"
# From the first SIGINT or SIGTERM to the hard stop when the shutdown hangs.
STOP_GRACE_SECONDS = 15.0
# How long open connections (WebSockets, slow clients) may hold up a shutdown.
CONNECTIONS_GRACE_SECONDS = 5


def export_schema(path: Path) -> None:
    from api.schema import schema

    path.write_text(schema.as_str() + "\n", encoding="utf-8")


def prepare_demo(settings: Settings) -> None:
    """The demo's keys: each installed demo gateway's, and a PII key unless one is configured."""
    from api.dev.demo import ensure_demo_keys
    from api.plugins.demo import write_secret
    from api.plugins.manager import load_plugin_manager

    secrets_dir = settings.data_dir / "secrets"
    ensure_demo_keys(load_plugin_manager(), secrets_dir, settings.simulator_port)
    if settings.pii_key is None and settings.pii_key_file is None:
        path = secrets_dir / "pii.key"
        write_secret(path, base64.b64encode(secrets.token_bytes(32)).decode())
        settings.pii_key_file = path


@contextlib.contextmanager
def store_uri(settings: Settings, *, reuse_running: bool = False) -> Iterator[str]:
    """The configured MongoDB, the embedded store running in this folder, or one started for us.

    An embedded store found through its pid file (``branchpay store start``, or
    a running ``branchpay serve``'s) is used and left running. With
    ``reuse_running`` an admin command also talks to a store that merely
    listens on the port, instead of starting one.
    """
    if settings.mongodb_uri:
        yield settings.mongodb_uri
        return
    storage = settings.data_dir / "db"
    record = devdb.find_running(storage)
    if record is not None:
        yield record.uri
        return
    if reuse_running and devdb.port_in_use(settings.db_port):
        yield devdb.uri_of(settings.db_port)
        return
    _starting(settings)
    with devdb.running(storage, settings.db_port) as store:
        yield store.uri


def _starting(settings: Settings) -> None:
    console.print(
        f"starting the embedded store (SecantusDB) on 127.0.0.1:{settings.db_port}, "
        f"data in {settings.data_dir / 'db'}",
        soft_wrap=True,
    )


@contextlib.contextmanager
def serve_store(settings: Settings, stop: StopSignals) -> Iterator[str]:
    """The store ``serve`` uses: stopped at exit only if ``serve`` started it.

    A store that already runs in this folder is used and left running, so the
    API can be stopped and started again while the store keeps its data warm.
    One whose ``serve`` died without stopping it is taken over: stopped at exit.
    """
    if settings.mongodb_uri:
        yield settings.mongodb_uri
        return
    storage = settings.data_dir / "db"
    record = devdb.find_running(storage)
    if record is not None and (record.owner is None or record.owner_alive):
        console.print(
            f"using the embedded store already running in this folder (pid {record.pid}, "
            f"127.0.0.1:{record.port}); it keeps running when branchpay stops",
            soft_wrap=True,
        )
        try:
            yield record.uri
        finally:
            console.print(
                f"the embedded store keeps running (pid {record.pid}); "
                "`branchpay store stop` stops it",
                soft_wrap=True,
            )
        return
    if record is not None:
        console.print(
            f"taking over the embedded store (pid {record.pid}, 127.0.0.1:{record.port}) "
            f"that branchpay pid {record.owner} left running; it stops when branchpay stops",
            soft_wrap=True,
        )
        adopted = dataclasses.replace(record, owner=os.getpid())
        devdb.write_record(adopted)
        stop.on_overrun(lambda: devdb.stop_recorded(adopted, timeout=2.0))
        try:
            yield adopted.uri
        finally:
            devdb.stop_recorded(adopted)
        return
    _starting(settings)
    with devdb.running(storage, settings.db_port) as store:
        stop.on_overrun(lambda: store.stop(timeout=2.0))
        yield store.uri


class StopSignals:
    """SIGINT and SIGTERM stop ``serve`` whatever it is doing, within a bounded time.

    Outside uvicorn (start-up: the store, the seed, the simulators; and the
    clean-up after it) the first signal raises KeyboardInterrupt, so every
    ``with`` block stops what it started; later ones are ignored so that they
    cannot break that clean-up in the middle. While uvicorn runs, its own
    handler stops it (see :class:`ApiServer`). Either way the first signal
    arms a watchdog: should stopping hang (a task that lost its cancellation,
    a store that does not answer), it stops what was started and exits 1.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace: float = STOP_GRACE_SECONDS) -> None:
        self.grace = grace
        self.requested = False
        self._overrun_actions: list[Callable[[], object]] = []
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def on_overrun(self, action: Callable[[], object]) -> None:
        """Run ``action`` (stop a child process) if the watchdog has to end the process."""
        self._overrun_actions.append(action)

    def note(self, signum: int) -> bool:
        """Record a stop request; True for the first one, which arms the watchdog."""
        if self.requested:
            return False
        self.requested = True
        self._timer = threading.Timer(self.grace, self._overrun)
        self._timer.daemon = True
        self._timer.start()
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.note(signum):
            raise KeyboardInterrupt

    def _overrun(self) -> None:
        console.print(
            f"[red]branchpay did not stop within {self.grace:.0f} s of the signal; "
            "stopping what it started and exiting[/red]",
            soft_wrap=True,
        )
        for action in reversed(self._overrun_actions):
            with contextlib.suppress(Exception):
                action()
        os._exit(1)


METRICS_DIR = "metrics"
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics(settings: Settings) -> None:
    """Multiprocess metrics: a fresh ``data_dir/metrics`` that this serve and its workers write.

    Set before prometheus-client is first imported (it chooses how values are
    kept at import), so before the app's modules are; the serve lock makes the
    directory this serve's alone, and wiping it forgets an earlier run's counts.
    """
    if not settings.metrics:
        return
    if "prometheus_client" in sys.modules and MULTIPROCESS_DIR_ENV not in os.environ:
        raise RuntimeError("prometheus_client was imported before the metrics directory was set")
    directory = settings.data_dir / METRICS_DIR
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROCESS_DIR_ENV] = str(directory)


def serve_metrics_port(settings: Settings) -> None:
    """With ``metrics_port``: every process's metrics, without a token, on metrics_host only."""
    if not settings.metrics or settings.metrics_port is None:
        return
    from prometheus_client import start_http_server

    from api.telemetry import metrics

    try:
        start_http_server(settings.metrics_port, settings.metrics_host, metrics.registry())
    except OSError as error:
        raise PortTaken(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{error.strerror}; choose another BRANCHPAY_METRICS_PORT"
        ) from None
    console.print(
        f"metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics",
        soft_wrap=True,
    )


class AlreadyServing(Exception):
    """Another ``branchpay serve`` holds this folder's lock; the message names it."""


class PortTaken(Exception):
    """The API port cannot be bound; the message says why and what to do."""


def _lock_holder(path: Path) -> dict[str, Any]:
    # The holder writes its pid and URL right after locking; give it a moment.
    deadline = time.monotonic() + 1.0
    while True:
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(path.read_text())
            if isinstance(holder, dict):
                return holder
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


@contextlib.contextmanager
def serve_lock(data_dir: Path, url: str) -> Iterator[None]:
    """Hold ``data_dir/serve.lock`` (an flock, released by the OS even on SIGKILL) while serving."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SERVE_LOCK
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(path)
            pid = holder.get("pid", "unknown")
            raise AlreadyServing(
                f"branchpay is already serving from this folder (pid {pid}, "
                f"{holder.get('url', 'URL unknown')}); use that one, or stop it first "
                f"(Ctrl-C in its terminal, or kill {pid}); another instance needs a folder "
                "or a BRANCHPAY_DATA_DIR of its own"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": os.getpid(), "url": url}).encode())
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


def bind_api(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: a restart must not wait for the old connections' TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortTaken(
                f"port {port} on {host} is already in use, so branchpay cannot serve there: "
                "stop whatever listens on it, or choose another port with --port "
                "(PORT=9000 make run)"
            ) from None
        raise PortTaken(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def _api_server(config: uvicorn.Config, stop: StopSignals) -> uvicorn.Server:
    import uvicorn

    class ApiServer(uvicorn.Server):
        """uvicorn, whose signal handler also arms the stop watchdog.

        uvicorn's handler only sets a flag that its main loop reads; during a
        start-up or a shutdown that hangs nobody reads it, which is how a
        second ``make run`` used to ignore SIGINT and SIGTERM for good.
        """

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            stop.note(sig)
            super().handle_exit(sig, frame)

    return ApiServer(config)


def uvicorn_logging(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging options: its lines in our format, no access log (the request line)."""
    return {
        "log_config": copy.deepcopy(UVICORN_LOG_CONFIG),
        "log_level": settings.log_level.lower(),
        "access_log": False,
    }


def run_api(app: Any, sock: socket.socket, settings: Settings, stop: StopSignals) -> int:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        proxy_headers=False,
        timeout_graceful_shutdown=CONNECTIONS_GRACE_SECONDS,
        **uvicorn_logging(settings),
    )
    server = _api_server(config, stop)
    with contextlib.suppress(SystemExit):  # uvicorn exits 3 when the app's start-up fails
        server.run(sockets=[sock])
    if not server.started and not stop.requested:
        console.print("[red]error:[/red] the API did not start; see the log above")
        return 1
    return 0


def worker_environment(settings: Settings, uri: str) -> dict[str, str]:
    """What ``serve`` decided that a spawned worker reads back from its environment."""
    env = {
        "BRANCHPAY_MONGODB_URI": uri,
        "BRANCHPAY_HOST": settings.host,
        "BRANCHPAY_PORT": str(settings.port),
        "BRANCHPAY_WEBHOOKS_ALLOW_LOOPBACK": "1" if settings.webhooks_allow_loopback else "0",
        "BRANCHPAY_CONFIG_EDITING": "1" if settings.config_editing else "0",
        "BRANCHPAY_LOG_FORMAT": settings.log_format,
        "BRANCHPAY_DEMO_PAGES": "1" if settings.demo_pages else "0",
        "BRANCHPAY_DEMO_FORM_ORIGINS": json.dumps(settings.demo_form_origins),
    }
    if settings.pii_key_file is not None:
        env["BRANCHPAY_PII_KEY_FILE"] = str(settings.pii_key_file)
    return env


def worker_app() -> Any:
    """The app of one ``serve --workers N`` worker (an app factory for uvicorn).

    The parent process started the store and the simulators and put what it
    decided in the environment (:func:`worker_environment`); a worker only
    builds the app, so N workers share one store and one set of simulators.
    """
    from api.web.app import create_app

    settings = Settings()
    configure_logging(settings)
    return create_app(settings)


def run_workers(workers: int, sock: socket.socket, settings: Settings, stop: StopSignals) -> int:
    """uvicorn's supervisor: ``workers`` spawned processes accept on the one bound socket.

    A worker that dies is replaced; SIGINT or SIGTERM stops them all (and arms
    the stop watchdog, as :func:`run_api` does).
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from api.telemetry import metrics

    config = uvicorn.Config(
        "api.cli:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        proxy_headers=False,
        timeout_graceful_shutdown=CONNECTIONS_GRACE_SECONDS,
        **uvicorn_logging(settings),
    )

    class Supervisor(Multiprocess):
        def keep_subprocess_alive(self) -> None:
            before = {process.pid for process in self.processes}
            super().keep_subprocess_alive()
            # A replaced worker's live gauges (subscriptions open) no longer count.
            for pid in before - {process.pid for process in self.processes}:
                if pid is not None:
                    metrics.mark_process_dead(pid)

        def handle_int(self) -> None:
            stop.note(signal.SIGINT)
            super().handle_int()

        def handle_term(self) -> None:
            stop.note(signal.SIGTERM)
            super().handle_term()

    Supervisor(config, sockets=[sock]).run()
    if not stop.requested:
        console.print("[red]error:[/red] the API workers did not start; see the log above")
        return 1
    return 0


async def _seed(settings: Settings, uri: str) -> bool:
    from api.config.validate import load_config
    from api.dev.seed import seed
    from api.domain.pii import PiiVault
    from api.plugins.manager import installed_providers, load_plugin_manager
    from api.store import Store

    config = load_config(settings.plugins_toml, installed_providers(load_plugin_manager()))
    store = Store.connect(uri, settings.database)
    try:
        await store.ensure_indexes()
        return await seed(
            store,
            branches=list(config.branches),
            orders=settings.seed_demo_orders,
            ttl=timedelta(seconds=settings.order_ttl_seconds),
            vault=PiiVault(settings.pii_master_key()),
        )
    finally:
        await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.port is not None:
        settings.port = args.port
    if args.demo and "log_format" not in settings.model_fields_set:
        settings.log_format = "console"  # `make run` is read by a person at a terminal
        configure_logging(settings)
    with StopSignals() as stop:
        try:
            return _serve(args, settings, stop)
        except KeyboardInterrupt:
            console.print("stopped before serving")
            return 0


def _serve(args: argparse.Namespace, settings: Settings, stop: StopSignals) -> int:
    url = f"http://{settings.host}:{settings.port}"
    try:
        with contextlib.ExitStack() as stack:
            # The lock and the port first, before the app's (slow) imports: a second
            # `make run` is refused within a second, and nothing was started.
            stack.enter_context(serve_lock(settings.data_dir, url))
            sock = stack.enter_context(contextlib.closing(bind_api(settings.host, settings.port)))
            prepare_metrics(settings)
            return _serve_bound(args, settings, stop, stack, sock, url)
    except (AlreadyServing, PortTaken, devdb.EmbeddedStoreError) as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)
        return 1


def _serve_bound(
    args: argparse.Namespace,
    settings: Settings,
    stop: StopSignals,
    stack: contextlib.ExitStack,
    sock: socket.socket,
    url: str,
) -> int:
    from api.config.model import ConfigError
    from api.plugins.manager import PluginError
    from api.web.app import create_app

    if args.demo:
        prepare_demo(settings)
        # The demo's webhook receivers run on this machine; production never allows loopback.
        if "BRANCHPAY_WEBHOOKS_ALLOW_LOOPBACK" not in os.environ:
            settings.webhooks_allow_loopback = True
        # The partner storefront at /demo (api/web/demo.py); production never serves it.
        if "BRANCHPAY_DEMO_PAGES" not in os.environ:
            settings.demo_pages = True
        # The demo's /admin console may switch providers; production edits with the CLI.
        if "BRANCHPAY_CONFIG_EDITING" not in os.environ:
            settings.config_editing = True
    try:
        settings.pii_master_key()
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    if settings.otel_endpoint:
        from rich.markup import escape

        from api.telemetry.optional import TracingUnavailable, check_tracing

        try:  # before anything starts; each worker's app would stop at it
            check_tracing(settings)
        except TracingUnavailable as error:
            console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
            return 1
    try:
        uri = stack.enter_context(serve_store(settings, stop))
        if args.demo and asyncio.run(_seed(settings, uri)):
            console.print("seeded the demo branches, catalogs and orders")
        if args.demo:
            from api.dev.demo import start_demo_simulators
            from api.plugins.manager import load_plugin_manager

            simulators = start_demo_simulators(
                load_plugin_manager(),
                settings.data_dir / "secrets",
                settings.simulator_port,
                stack,
                console,
            )
            # A FORM_POST payment of the storefront posts to its simulator (CSP form-action).
            settings.demo_form_origins = [*settings.demo_form_origins, *simulators.values()]
        if settings.demo_pages:
            console.print(f"the partner storefront: {url}/demo")
        console.print(
            f"branchpay on {url}/graphql (GraphiQL in a browser); Ctrl-C stops it\n"
            "every request needs an API key; create one in another terminal with\n"
            "  .venv/bin/branchpay keys create --role ops --name me\n"
            "and send it as `Authorization: Bearer <key>` (GraphiQL: the Headers tab)"
        )
        serve_metrics_port(settings)
        if args.workers > 1:
            console.print(
                f"{args.workers} API worker processes share the port, the store and the simulators"
            )
            os.environ.update(worker_environment(settings, uri))
            return run_workers(args.workers, sock, settings, stop)
        return run_api(create_app(settings, mongodb_uri=uri), sock, settings, stop)
    except (ConfigError, PluginError) as error:
        console.print("[red]invalid plugins configuration:[/red]")
        console.print(str(error), markup=False, highlight=False)
        return 1


def _store_status(record: devdb.StoreRecord | None, settings: Settings) -> int:
    out = Console()
    storage = settings.data_dir / "db"
    if record is None:
        out.print(
            f"the embedded store is not running (it would use 127.0.0.1:{settings.db_port}, "
            f"data in {storage})",
            soft_wrap=True,
        )
        if devdb.port_in_use(settings.db_port):
            out.print(
                f"something not started from this folder listens on 127.0.0.1:{settings.db_port}",
                soft_wrap=True,
            )
        return 3
    listening = (
        "accepting connections" if devdb.port_in_use(record.port) else "NOT accepting connections"
    )
    out.print(
        f"the embedded store runs: pid {record.pid}, 127.0.0.1:{record.port} ({listening}), "
        f"data in {record.storage_path}",
        soft_wrap=True,
    )
    if record.owner is None:
        out.print("started by `branchpay store start`; `branchpay store stop` stops it")
    elif record.owner_alive:
        out.print(f"started by branchpay pid {record.owner}, which stops it when it stops")
    else:
        out.print(
            f"its branchpay (pid {record.owner}) is gone: the next `branchpay serve` takes it "
            "over, `branchpay store stop` stops it",
            soft_wrap=True,
        )
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    settings = Settings()
    action: str = args.store_command
    if settings.mongodb_uri:
        console.print(
            "BRANCHPAY_MONGODB_URI is set, so branchpay uses that server and no embedded "
            f"store: nothing to {action}",
            soft_wrap=True,
        )
        return 0
    storage = settings.data_dir / "db"
    record = devdb.find_running(storage)
    if action == "status":
        return _store_status(record, settings)
    if action == "start":
        if record is not None:
            console.print(
                f"the embedded store already runs (pid {record.pid}, 127.0.0.1:{record.port})",
                soft_wrap=True,
            )
            return 0
        try:
            store = devdb.start(storage, settings.db_port)
        except devdb.EmbeddedStoreError as error:
            console.print(f"[red]error:[/red] {error}", soft_wrap=True)
            return 1
        console.print(
            f"the embedded store (SecantusDB) runs on 127.0.0.1:{store.port} (pid {store.pid}), "
            f"data in {storage}, log in {store.log_path}; `branchpay serve` and `make run` "
            "use it and leave it running; `branchpay store stop` stops it",
            soft_wrap=True,
        )
        return 0
    if record is None:
        console.print("the embedded store is not running; nothing to stop")
        return 0
    if record.owner_alive:
        console.print(
            f"note: branchpay pid {record.owner} started this store and is still using it",
            soft_wrap=True,
        )
    killed = devdb.stop_recorded(record, timeout=args.timeout)
    how = f"killed after {args.timeout:g} s without stopping on SIGTERM" if killed else "stopped"
    console.print(f"the embedded store (pid {record.pid}) {how}")
    return 0


def cmd_schema_export(args: argparse.Namespace) -> int:
    export_schema(args.output)
    console.print(f"wrote {args.output}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    settings = Settings()
    prepare_demo(settings)
    with store_uri(settings) as uri:
        seeded = asyncio.run(_seed(settings, uri))
    console.print(
        "seeded the demo data" if seeded else "the store already has a catalog; nothing seeded"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from api.cli import plugins

    return plugins.plugins(args)


def cmd_providers(args: argparse.Namespace) -> int:
    """Edit plugins.toml only: the running service applies it and records it in the audit log."""
    from api.cli import plugins

    return plugins.providers(args)


def cmd_config_check(args: argparse.Namespace) -> int:
    from api.cli import plugins

    return plugins.config_check(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from api.cli import keys

    return keys.keys(args)


def cmd_db(args: argparse.Namespace) -> int:
    from api.cli import db

    return db.db(args)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from api.cli import webhooks

    return webhooks.webhooks(args)


DURATION = re.compile(r"(\d+)([smhd])")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``1d`` or combinations such as ``1h30m``."""
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 2h or 1d")
    return sum(
        (timedelta(**{DURATION_UNITS[unit]: int(number)}) for number, unit in parts), timedelta()
    )


async def _reconcile(settings: Settings, uri: str, args: argparse.Namespace) -> int:
    import httpx
    from rich.progress import Progress
    from rich.table import Table

    from api.config.live import ProviderRegistry
    from api.plugins.manager import load_plugin_manager
    from api.services.payments import PaymentService
    from api.store import Store

    plugins = load_plugin_manager()
    store = Store.connect(uri, settings.database)
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as http:
            registry = ProviderRegistry(settings.plugins_toml, plugins, http)
            registry.load()
            if args.branch is not None and registry.branch(args.branch) is None:
                console.print(f"[red]error:[/red] no branch {args.branch!r} in {registry.path}")
                return 2
            payments = PaymentService(
                store, registry, base_url=lambda: settings.base_url, plugins=plugins
            )
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("querying the platforms", total=None)
                report = await payments.reconcile(
                    since=args.since,
                    branch=args.branch,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
    finally:
        await store.close()
    table = Table(title=f"reconciled {len(report.rows)} attempts, {report.changed} changed")
    for column in ("outTradeNo", "branch", "provider", "before", "after", "note"):
        table.add_column(column)
    for row in report.rows:
        table.add_row(row.out_trade_no, row.branch, row.provider, row.before, row.after, row.note)
    Console().print(table)
    return 0


def cmd_reconcile_bills(args: argparse.Namespace) -> int:
    from api.cli import bills

    return bills.reconcile_bills(args)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from api.config.model import ConfigError

    settings = Settings()
    try:
        with store_uri(settings, reuse_running=True) as uri:
            return asyncio.run(_reconcile(settings, uri, args))
    except ConfigError as error:
        console.print(f"[red]invalid plugins configuration:[/red]\n{error}")
        return 1


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to 64")
    return int(text)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="branchpay", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the API (and the embedded store when no URI is set)"
    )
    serve.add_argument(
        "--port", type=int, default=int(os.environ["PORT"]) if os.environ.get("PORT") else None
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=os.environ.get("WORKERS") or "1",  # argparse converts it with _workers
        help="API processes sharing the port, the store and the simulators (WORKERS=3 make run)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="seed demo data into an empty store, create demo keys, start the gateway simulators",
    )
    serve.set_defaults(run=cmd_serve)

    schema_cmd = commands.add_parser("schema", help="the GraphQL schema")
    schema_sub = schema_cmd.add_subparsers(dest="schema_command", required=True)
    export = schema_sub.add_parser("export", help="print the SDL to a file")
    export.add_argument("--output", type=Path, default=SCHEMA_FILE)
    export.set_defaults(run=cmd_schema_export)

    store = commands.add_parser(
        "store", help="the embedded store (SecantusDB) on its own, for development"
    )
    store_sub = store.add_subparsers(dest="store_command", required=True)
    store_sub.add_parser(
        "start", help="start it detached on BRANCHPAY_DB_PORT (data in .data/db) and return"
    ).set_defaults(run=cmd_store)
    store_stop = store_sub.add_parser("stop", help="stop it: SIGTERM, then SIGKILL")
    store_stop.add_argument(
        "--timeout",
        type=float,
        default=devdb.STOP_TIMEOUT_SECONDS,
        help="seconds to wait after SIGTERM before SIGKILL",
    )
    store_stop.set_defaults(run=cmd_store)
    store_sub.add_parser(
        "status", help="whether it runs, its pid and port; exit code 3 when it does not run"
    ).set_defaults(run=cmd_store)

    seed = commands.add_parser("seed", help="load the demo data into an empty store")
    seed.set_defaults(run=cmd_seed)

    plugins = commands.add_parser("plugins", help="list installed plugins and their providers")
    plugins.set_defaults(run=cmd_plugins)

    providers = commands.add_parser("providers", help="enable or disable a provider for a branch")
    providers.add_argument("action", choices=["enable", "disable"])
    providers.add_argument("branch")
    providers.add_argument("provider")
    providers.set_defaults(run=cmd_providers)

    config = commands.add_parser("config", help="plugins.toml")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate plugins.toml and exit non-zero on errors")
    check.set_defaults(run=cmd_config_check)
    keys = commands.add_parser("keys", help="partner API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", help="create a key; it is printed once, on the last line"
    )
    create.add_argument("--role", required=True, choices=["partner", "branch_admin", "ops"])
    create.add_argument("--branch", action="append", default=[], help="a branch code; repeatable")
    create.add_argument("--name", required=True, help="unique name, shown in the audit log")
    create.set_defaults(run=cmd_keys)
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("name")
    revoke.set_defaults(run=cmd_keys)

    db = commands.add_parser("db", help="the store's collections")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_check = db_sub.add_parser(
        "check",
        help="compare the store's indexes with the required ones; exit 1 when they differ",
    )
    db_check.add_argument("--format", choices=["table", "json"], default="table")
    db_check.set_defaults(run=cmd_db)

    webhooks = commands.add_parser("webhooks", help="partner webhook endpoints and deliveries")
    webhooks_sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    wh_list = webhooks_sub.add_parser(
        "list", help="the endpoints: URL (without its query), events, state; never a secret"
    )
    wh_list.add_argument("--branch", help="only endpoints serving this branch")
    wh_list.set_defaults(run=cmd_webhooks)
    wh_deliveries = webhooks_sub.add_parser(
        "deliveries", help="an endpoint's deliveries, newest first, with their last try"
    )
    wh_deliveries.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    wh_deliveries.add_argument("--failed", action="store_true", help="only FAILED deliveries")
    # The limits live in api/cli/webhooks.py, imported only when the command runs.
    wh_deliveries.add_argument("--limit", type=int, help="how many, 1 to 500 (default 20)")
    wh_deliveries.set_defaults(run=cmd_webhooks)
    wh_replay = webhooks_sub.add_parser(
        "replay", help="make every delivery of an event due again (same event id); audited"
    )
    wh_replay.add_argument("event_id", metavar="EVENT_ID")
    wh_replay.set_defaults(run=cmd_webhooks)

    reconcile = commands.add_parser(
        "reconcile", help="ask the platforms about PENDING attempts and apply what they report"
    )
    reconcile.add_argument(
        "--since",
        type=parse_duration,
        help="only attempts created this long ago or later (30m, 2h)",
    )
    reconcile.add_argument("--branch", help="only attempts of this branch")
    reconcile.set_defaults(run=cmd_reconcile)
    reconcile_sub = reconcile.add_subparsers(dest="reconcile_command", metavar="{bills}")
    bills = reconcile_sub.add_parser(
        "bills",
        help="reconcile the platforms' daily bills of a Beijing day (docs/reconciliation.md)",
        description="Exit codes: 0 every bill reconciled, no open discrepancy; 1 open "
        "discrepancies remain; 2 refused input, nothing ran; 3 a bill NOT_READY or FAILED.",
    )
    bills.add_argument("--date", required=True, help="the bill's Beijing day, YYYY-MM-DD")
    # SUPPRESS: `reconcile --branch zj bills ...` keeps the branch given before `bills`.
    bills.add_argument(
        "--branch", default=argparse.SUPPRESS, help="only this branch (default: every branch)"
    )
    bills.add_argument("--provider", help="only this provider (default: every one with bills)")
    bills.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="of the report"
    )
    bills.set_defaults(run=cmd_reconcile_bills)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        configure_logging(Settings())
    except ValidationError:
        # The command names the bad setting; its own lines are logged as by default.
        configure_logging(Settings.model_construct())
    # SIGTERM unwinds like Ctrl-C, so a store an admin command started is stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        console.print("interrupted")
        code = 130
    sys.exit(code)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
