"""``branchpay db check``: the indexes of the configured store against those required.

Exit status: 0 when every collection has exactly the required indexes, 1 when
any differs (missing, extra, wrong key order or key, wrong options), 2 when
the store could not be read. ``--format json`` prints one JSON document on
stdout instead of the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from pymongo.errors import PyMongoError
from rich.console import Console
from rich.table import Table

from api.settings import Settings
from api.store.indexes import Difference

DIFFERENT = 1
UNREADABLE = 2
err = Console(stderr=True)


def db(args: argparse.Namespace) -> int:
    from api.cli import store_uri

    settings = Settings()
    with store_uri(settings, reuse_running=True) as uri:
        try:
            found, checked = asyncio.run(_check(settings, uri))
        except PyMongoError as error:
            err.print(f"[red]error:[/red] the store could not be read: {type(error).__name__}")
            return UNREADABLE
    if args.format == "json":
        print(
            json.dumps(
                {
                    "database": settings.database,
                    "equal": not found,
                    "collections": checked,
                    "differences": [difference.as_json() for difference in found],
                },
                indent=2,
            )
        )
    else:
        _print_table(settings.database, found, len(checked))
    return DIFFERENT if found else 0


async def _check(settings: Settings, uri: str) -> tuple[list[Difference], list[str]]:
    from api.store import Store, StoreTimeouts
    from api.store.database import INDEXES
    from api.store.indexes import differences, present_specs, required_specs

    # The service's own timeouts: a store that is down is named in seconds, not after 30.
    timeouts = StoreTimeouts(
        server_selection_seconds=settings.store_server_selection_timeout_seconds,
        connect_seconds=settings.store_connect_timeout_seconds,
        socket_seconds=settings.store_socket_timeout_seconds,
    )
    store = Store.connect(uri, settings.database, timeouts)
    try:
        required = required_specs(INDEXES)
        present = await present_specs(store.db)
    finally:
        await store.close()
    return differences(required, present), sorted({*required, *present})


def _print_table(database: str, found: list[Difference], collections: int) -> None:
    out = Console()
    if not found:
        out.print(f"{database}: the indexes of {collections} collections are as required")
        return
    table = Table(title=f"{database}: {len(found)} indexes differ from those required")
    for column in ("collection", "index", "problem"):
        table.add_column(column, no_wrap=True)
    for column in ("required", "present"):
        table.add_column(column)
    for difference in found:
        table.add_row(
            difference.collection,
            difference.index,
            difference.problem.value,
            difference.required.describe() if difference.required else "",
            difference.present.describe() if difference.present else "",
        )
    out.print(table)
