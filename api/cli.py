"""The ``branchpay`` command: serve, schema export, seed, plugins and config administration."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from api import devdb
from api.settings import Settings

console = Console(stderr=True)
SCHEMA_FILE = Path("schema.graphql")


def export_schema(path: Path) -> None:
    from api.schema import schema

    path.write_text(schema.as_str() + "\n", encoding="utf-8")


def prepare_demo(settings: Settings) -> None:
    """The demo's keys: each built-in provider's, and a PII key unless one is configured."""
    from api.simulators import ensure_demo_keys

    secrets_dir = settings.data_dir / "secrets"
    ensure_demo_keys(secrets_dir)
    if settings.pii_key is None and settings.pii_key_file is None:
        path = secrets_dir / "pii.key"
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(base64.b64encode(secrets.token_bytes(32)).decode())
        settings.pii_key_file = path


@contextlib.contextmanager
def store_uri(settings: Settings, *, reuse_running: bool = False) -> Iterator[str]:
    """The configured MongoDB, or the embedded store started for as long as we run.

    With ``reuse_running`` an admin command talks to the embedded store that a
    running ``make run`` already serves on the port, instead of starting one.
    """
    if settings.mongodb_uri:
        yield settings.mongodb_uri
        return
    if reuse_running and devdb.port_in_use(settings.db_port):
        yield f"mongodb://127.0.0.1:{settings.db_port}/?directConnection=true"
        return
    storage = settings.data_dir / "db"
    console.print(
        f"starting the embedded store (SecantusDB) on 127.0.0.1:{settings.db_port}, "
        f"data in {storage}"
    )
    with devdb.running(storage, settings.db_port) as store:
        yield store.uri


async def _seed(settings: Settings, uri: str) -> bool:
    from api.plugins.config import load_config
    from api.plugins.manager import installed_providers, load_plugin_manager
    from api.security.pii import PiiVault
    from api.seed import seed
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
    import uvicorn

    from api.app import create_app
    from api.plugins.config import ConfigError
    from api.plugins.manager import PluginError

    settings = Settings()
    if args.port is not None:
        settings.port = args.port
    if args.demo:
        prepare_demo(settings)
    try:
        settings.pii_master_key()
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    try:
        with store_uri(settings) as uri:
            if args.demo and asyncio.run(_seed(settings, uri)):
                console.print("seeded the demo branches, catalogs and orders")
            with contextlib.ExitStack() as simulators:
                if args.demo:
                    from api.simulators import start_demo_simulators

                    start_demo_simulators(settings.data_dir / "secrets", simulators, console)
                console.print(
                    f"branchpay on http://{settings.host}:{settings.port}/graphql "
                    "(GraphiQL in a browser); Ctrl-C stops it\n"
                    "every request needs an API key; create one in another terminal with\n"
                    "  .venv/bin/branchpay keys create --role ops --name me\n"
                    "and send it as `Authorization: Bearer <key>` (GraphiQL: the Headers tab)"
                )
                uvicorn.run(
                    create_app(settings, mongodb_uri=uri),
                    host=settings.host,
                    port=settings.port,
                    log_level="info",
                    proxy_headers=False,
                )
    except devdb.EmbeddedStoreError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    except (ConfigError, PluginError) as error:
        console.print("[red]invalid plugins configuration:[/red]")
        console.print(str(error), markup=False, highlight=False)
        return 1
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
    from api.plugins import admin

    return admin.plugins(args)


def cmd_providers(args: argparse.Namespace) -> int:
    from api.plugins import admin
    from api.security.admin import audit_provider_change

    code = admin.providers(args)
    if code == 0:
        audit_provider_change(args.action == "enable", args.branch, args.provider)
    return code


def cmd_config_check(args: argparse.Namespace) -> int:
    from api.plugins import admin

    return admin.config_check(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from api.security import admin

    return admin.keys(args)


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

    from api.payments.service import PaymentService
    from api.plugins.manager import load_plugin_manager
    from api.plugins.registry import ProviderRegistry
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


def cmd_reconcile(args: argparse.Namespace) -> int:
    from api.plugins.config import ConfigError

    settings = Settings()
    try:
        with store_uri(settings, reuse_running=True) as uri:
            return asyncio.run(_reconcile(settings, uri, args))
    except ConfigError as error:
        console.print(f"[red]invalid plugins configuration:[/red]\n{error}")
        return 1


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
    return top


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parser().parse_args(argv)
    sys.exit(args.run(args))
