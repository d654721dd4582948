"""Writes a synthetic order set into its own database once; later runs reuse it.

Each set lives in a database of its own (``branchpay_bench_<count>``) with the
API's indexes, the demo catalogs and a ``bench_meta`` document that records
how many orders are in and the set's base time. A set cut short (Ctrl-C, a
crash) resumes where it stopped: orders are written in index order and the
meta document is advanced after each batch. A set written in an older
synthetic format is dropped and loaded again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from api.dev.seed import seed
from api.domain.pii import PiiVault
from api.store import Store
from bench.synthetic import BRANCHES, FORMAT, MAX_ORDERS, OrderSet, batches

Document = dict[str, Any]
META = "bench_meta"
BATCH = 1000
DUPLICATE_KEY = 11000


async def _insert_new(collection: AsyncCollection[Document], documents: list[Document]) -> None:
    """Insert, tolerating documents a run cut short had already written."""
    if not documents:
        return
    try:
        await collection.insert_many(documents, ordered=False)
    except BulkWriteError as error:
        if any(e.get("code") != DUPLICATE_KEY for e in error.details.get("writeErrors", [])):
            raise


@dataclass(frozen=True, slots=True)
class LoadedSet:
    database: str
    count: int
    base: datetime
    reused: bool


def database_for(count: int) -> str:
    return f"branchpay_bench_{count}"


async def ensure_loaded(uri: str, count: int, console: Console, vault: PiiVault) -> LoadedSet:
    """The set of ``count`` orders, loaded now with a progress bar unless it is complete."""
    if not 0 < count <= MAX_ORDERS:
        raise ValueError(f"--orders must be between 1 and {MAX_ORDERS}")
    name = database_for(count)
    store = Store.connect(uri, name)
    try:
        meta_collection = store.collection(META)
        meta = await meta_collection.find_one({"_id": "orders"})
        if meta is not None and meta.get("format") != FORMAT:
            console.print(f"{name} holds an older synthetic format: loading it again")
            await store.client.drop_database(name)
            meta = None
        if meta is not None and meta["loaded"] >= count:
            return LoadedSet(name, count, meta["base"], reused=True)
        await store.ensure_indexes()
        await seed(store, branches=BRANCHES, orders=0, ttl=timedelta(minutes=30), vault=vault)
        if meta is None:
            base = datetime.now(UTC).replace(microsecond=0)
            meta = {"_id": "orders", "format": FORMAT, "count": count, "loaded": 0, "base": base}
            await meta_collection.insert_one(meta)
        orders = OrderSet(meta["base"], vault)
        start = meta["loaded"]
        with Progress(
            TextColumn(f"loading {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("orders"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("orders", total=count, completed=start)
            for first, stop in batches(count, start, BATCH):
                order_docs, payment_docs = orders.batch(first, stop)
                await _insert_new(store.orders.collection, order_docs)
                await _insert_new(store.collection("payments"), payment_docs)
                await meta_collection.update_one({"_id": "orders"}, {"$set": {"loaded": stop}})
                progress.update(task, completed=stop)
        return LoadedSet(name, count, meta["base"], reused=False)
    finally:
        await store.close()
