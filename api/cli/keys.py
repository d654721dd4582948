"""The ``branchpay keys create|revoke`` commands.

They talk to the configured MongoDB, or to the embedded store of a running
``make run`` (or start it for the duration of the command).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass

from rich.console import Console

from api.domain.principal import Role
from api.settings import Settings
from api.store.audit import AuditAction
from api.store.keys import KeyAdminError

err = Console(stderr=True)


def keys(args: argparse.Namespace) -> int:
    from api.cli import store_uri

    settings = Settings()
    with store_uri(settings, reuse_running=True) as uri:
        try:
            if args.keys_command == "create":
                return asyncio.run(_create(settings, uri, args))
            return asyncio.run(_revoke(settings, uri, args.name))
        except KeyAdminError as error:
            err.print(f"[red]error:[/red] {error}")
            return 1


async def _create(settings: Settings, uri: str, args: argparse.Namespace) -> int:
    from api.config.validate import load_config
    from api.plugins.manager import installed_providers, load_plugin_manager
    from api.store import Store

    role = Role(args.role)
    known = load_config(settings.plugins_toml, installed_providers(load_plugin_manager())).branches
    unknown = [code for code in args.branch if code not in known]
    if unknown:
        raise KeyAdminError(f"no branch {', '.join(unknown)} in {settings.plugins_toml}")
    store = Store.connect(uri, settings.database)
    try:
        await store.ensure_indexes()
        record, key = await store.keys.create(args.name, role, args.branch, by=getpass.getuser())
        await store.audit.record(
            getpass.getuser(),
            AuditAction.KEY_CREATED,
            record["name"],
            {"role": record["role"], "branches": record["branches"]},
        )
    finally:
        await store.close()
    scope = ", ".join(record["branches"]) or "all branches"
    err.print(f"created {role.value} key {record['name']!r} for {scope}; it is shown once:")
    print(key)
    return 0


async def _revoke(settings: Settings, uri: str, name: str) -> int:
    from api.store import Store

    store = Store.connect(uri, settings.database)
    try:
        record = await store.keys.revoke(name)
        await store.audit.record(getpass.getuser(), AuditAction.KEY_REVOKED, record["name"])
    finally:
        await store.close()
    err.print(f"revoked key {name!r}")
    return 0
