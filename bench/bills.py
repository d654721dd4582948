"""Scenario (r): bill reconciliation of one generated bill against a store of matching payments.

``make bench`` writes a sandbox-format bill (``providers.sandbox.bills``) of
``--bill-lines`` payment lines for one Beijing day to a temporary file, line by
line, and bulk-inserts the matching payments into a scratch database in the
store layer's document shape (branch, provider, ``outTradeNo``, ``amountFen``,
``SUCCEEDED``, ``paidAt`` in the day). Then a process of its own runs the bill
service's matching over the file (api/services/bills.py, the same code the
daily run and ``branchpay reconcile bills`` use; the sandbox adapter downloads
the file over loopback from a route of the bench process that answers like the
simulator's) and reports lines per second and its peak RSS
(``getrusage``'s ``ru_maxrss``), beside its RSS before the run. The
file's write and the inserts are not measured.

Every line is matched: the scenario measures the clean day, the common case.
"""

from __future__ import annotations

import asyncio
import resource
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bson import ObjectId

from api.domain.bills import day_bounds
from api.store import Store
from providers.kit.bills import BillEntry
from providers.sandbox.bills import write_bill

Document = dict[str, Any]
BRANCH = "zj"
PROVIDER = "sandbox"
MERCHANT = "zj"
DATABASE = "branchpay_bench_bills"
META = "bench_meta"
INSERT_BATCH = 5_000
DEFAULT_LINES = 1_000_000
QUICK_LINES = 20_000


def bill_day() -> date:
    """The bill's Beijing day: a fixed past day, far from any real payment's."""
    return date(2026, 11, 1)


def paid_at(day: date, index: int, count: int) -> datetime:
    """When payment ``index`` of ``count`` was paid: spread over the day, inside its margins."""
    start, end = day_bounds(day)
    margin = timedelta(minutes=10)
    span = (end - start - 2 * margin).total_seconds()
    return start + margin + timedelta(seconds=span * index / max(count, 1))


def amount_of(index: int) -> int:
    return 1_000 + (index * 7919) % 50_000


def out_trade_no(index: int) -> str:
    return f"RB{index:012d}"


def _object_id(at: datetime, tag: bytes, index: int) -> ObjectId:
    """A fixed id: the time, a tag byte (payment or order), the index."""
    return ObjectId(struct.pack(">I", int(at.timestamp())) + tag + index.to_bytes(7, "big"))


def payment(day: date, index: int, count: int) -> Document:
    """Payment ``index`` as api/store/payments.py stores an attempt that succeeded."""
    at = paid_at(day, index, count)
    created = at - timedelta(seconds=40)
    return {
        "_id": _object_id(created, b"\x01", index),
        "orderId": _object_id(created, b"\x02", index),
        "branch": BRANCH,
        "provider": PROVIDER,
        "method": "QR_CODE",
        "status": "SUCCEEDED",
        "amountFen": amount_of(index),
        "currency": "CNY",
        "outTradeNo": out_trade_no(index),
        "providerTradeNo": f"SBXR{index:012d}",
        "refunds": [],
        "refundedFen": 0,
        "reservedFen": 0,
        "flagged": None,
        "eventIds": [],
        "version": 1,
        "createdAt": created,
        "updatedAt": at,
        "paidAt": at,
    }


def entries(day: date, count: int) -> Iterator[BillEntry]:
    """The bill's lines, one at a time: never all of them in memory."""
    for index in range(count):
        at = paid_at(day, index, count)
        yield BillEntry(
            kind="PAYMENT",
            out_trade_no=out_trade_no(index),
            trade_no=f"SBXR{index:012d}",
            amount_fen=amount_of(index),
            at=at,
            created_at=at - timedelta(seconds=40),
            fee_fen=(amount_of(index) * 6 + 500) // 1000,
        )


def write_bill_file(path: Path, day: date, count: int) -> int:
    """The sandbox bill of ``count`` lines at ``path``, streamed; its size in bytes."""
    with path.open("wb") as out:
        for chunk in write_bill(MERCHANT, day, entries(day, count), generated_at=datetime.now(UTC)):
            out.write(chunk)
    return path.stat().st_size


async def load_payments(uri: str, database: str, day: date, count: int) -> None:
    """A fresh scratch database with the API's indexes and the bill's ``count`` payments."""
    store = Store.connect(uri, database)
    try:
        await store.client.drop_database(database)
        payments = store.collection("payments")
        for first in range(0, count, INSERT_BATCH):
            batch = [payment(day, i, count) for i in range(first, min(first + INSERT_BATCH, count))]
            await payments.insert_many(batch, ordered=False)
        # Indexed once loaded: one build per index instead of an update per document.
        await store.ensure_indexes()
    finally:
        await store.close()


async def drop(uri: str, database: str) -> None:
    store = Store.connect(uri, database)
    try:
        await store.client.drop_database(database)
    finally:
        await store.close()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


PLUGINS_TOML = """
[branches.{branch}]
name = "bench bills"
province = "Zhejiang"
operator = "China Mobile"

[branches.{branch}.providers.sandbox]
enabled = true
gateway = "{gateway}"
secret = {{ file = "{secret}" }}
"""


def bill_app(path: Path, day: date) -> Any:
    """The platform's side: the sandbox's bill route, answering with the generated file.

    The adapter's signature is not checked: the bench measures reconciliation,
    not the simulator.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    async def bill(request: Request) -> Response:
        if request.path_params["day"] != day.isoformat():
            return JSONResponse({"code": "NO_BILL", "message": "no bill"}, status_code=404)
        return FileResponse(path, media_type="text/csv; charset=utf-8")

    return Starlette(routes=[Route("/api/bills/{day}", bill, methods=["GET"])])


def match_in_process(uri: str, database: str, plugins_toml: str, day: str) -> dict[str, Any]:
    """Run in a process of its own: one reconciliation of the day, timed; its figures."""
    return asyncio.run(_match(uri, database, Path(plugins_toml), date.fromisoformat(day)))


async def _match(uri: str, database: str, plugins_toml: Path, day: date) -> dict[str, Any]:
    import httpx

    from api.config.live import ProviderRegistry
    from api.domain.principal import Principal, Role
    from api.plugins.manager import ENTRY_POINT_GROUP, load_plugin_manager
    from api.services.bills import BillReconciliation
    from api.services.payments import PaymentService

    store = Store.connect(uri, database)
    stages: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
            registry = ProviderRegistry(
                plugins_toml, load_plugin_manager(), http, entry_point_group=ENTRY_POINT_GROUP
            )
            registry.load()
            payments = PaymentService(store, registry, base_url=lambda: "http://127.0.0.1:9")
            service = BillReconciliation(store, registry, payments)
            principal = Principal("make-bench", Role.OPS, frozenset())
            await store.client.admin.command("ping")
            rss_before = _peak_rss()

            def progress(stage: str, count: int) -> None:
                stages.setdefault(stage, time.perf_counter())  # the first call of each stage

            started = time.perf_counter()
            doc = await service.run(
                principal, branch=BRANCH, provider=PROVIDER, day=day, progress=progress
            )
            seconds = time.perf_counter() - started
    finally:
        await store.close()
    totals = doc.get("totals") or {}
    match_started = stages.get("match", started)
    return {
        "lines": int(totals.get("billLines", 0)),
        "seconds": seconds,
        "firstBatchSeconds": match_started - started,
        "rssBeforeBytes": rss_before,
        "rssPeakBytes": _peak_rss(),
        "status": doc["status"],
        "error": doc.get("error"),
        "matched": int(totals.get("matchedCount", 0)),
        "openDiscrepancies": int(doc.get("openDiscrepancies", 0)),
        "billTotalsAgree": totals.get("billTotalsAgree"),
    }


async def _loaded(uri: str, database: str, day: date, count: int) -> bool:
    """Whether the scratch database already holds this bill's payments (a previous run's)."""
    store = Store.connect(uri, database)
    try:
        meta = await store.collection(META).find_one({"_id": "bills"})
        return meta is not None and meta.get("count") == count and meta.get("day") == str(day)
    finally:
        await store.close()


async def _mark_loaded(uri: str, database: str, day: date, count: int) -> None:
    store = Store.connect(uri, database)
    try:
        await store.collection(META).replace_one(
            {"_id": "bills"}, {"_id": "bills", "count": count, "day": str(day)}, upsert=True
        )
    finally:
        await store.close()


def bill_scenario(
    uri: str,
    lines: int,
    workdir: Path,
    log: Callable[[str], None],
    *,
    database: str = DATABASE,
) -> dict[str, Any]:
    """Scenario (r): write the bill, load the payments (unless loaded), match in a child process."""
    from providers.kit.loopback import LoopbackServer

    day = bill_day()
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="bills-") as folder:
        path = Path(folder) / f"sandbox_{MERCHANT}_{day:%Y%m%d}.csv"
        log(f"(r) writing a sandbox bill of {lines:,} lines")
        size = write_bill_file(path, day, lines)
        if asyncio.run(_loaded(uri, database, day, lines)):
            log(f"(r) {database} holds the {lines:,} payments already (reused)")
        else:
            log(f"(r) inserting {lines:,} payments into {database}")
            inserting = time.perf_counter()
            asyncio.run(load_payments(uri, database, day, lines))
            asyncio.run(_mark_loaded(uri, database, day, lines))
            log(f"(r) inserted in {time.perf_counter() - inserting:,.0f} s")
        # Each run starts from the payments alone: no reconciliation of an earlier run.
        asyncio.run(_forget_runs(uri, database))
        secret = Path(folder) / "sandbox.key"
        secret.write_text("bench-bills-" + "x" * 32)
        server = LoopbackServer(bill_app(path, day)).start()
        try:
            toml = Path(folder) / "plugins.toml"
            # Relative to the plugins.toml, as plugins.toml resolves its secret files.
            toml.write_text(
                PLUGINS_TOML.format(branch=BRANCH, gateway=server.url, secret=secret.name)
            )
            log(f"(r) reconciling the bill ({size / 1_000_000:,.1f} MB) in a process of its own")
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                figures = pool.submit(
                    match_in_process, uri, database, str(toml), day.isoformat()
                ).result()
        finally:
            server.stop()
    figures["billBytes"] = size
    figures["linesGenerated"] = lines
    log(
        f"(r) {figures['status']}: {figures['lines']:,} lines in {figures['seconds']:,.1f} s, "
        f"{figures['lines'] / figures['seconds']:,.0f} lines/s, peak RSS "
        f"{figures['rssPeakBytes'] / 2**20:,.0f} MiB (before the run "
        f"{figures['rssBeforeBytes'] / 2**20:,.0f} MiB)"
    )
    return figures


async def _forget_runs(uri: str, database: str) -> None:
    store = Store.connect(uri, database)
    try:
        for name in ("reconciliations", "discrepancies", "bill_marks", "leases"):
            await store.collection(name).delete_many({})
    finally:
        await store.close()


def ratios(figures: dict[str, Any] | None) -> list[Any]:
    """(r)'s figures as rows of the ratios table."""
    from bench.report import Ratio

    if not figures:
        return []
    lines = figures["lines"]
    return [
        Ratio(
            f"(r) bill lines reconciled per second, {lines:,} lines",
            figures["lines"] / figures["seconds"],
            unit="lines/s",
        ),
        Ratio(
            f"(r) peak RSS of the reconciling process, {lines:,} lines",
            figures["rssPeakBytes"] / 2**20,
            unit="MiB",
        ),
        Ratio(
            "(r) peak RSS growth over the run",
            (figures["rssPeakBytes"] - figures["rssBeforeBytes"]) / 2**20,
            unit="MiB",
        ),
    ]
