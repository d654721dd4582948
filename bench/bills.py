"""Scenario (r): bill reconciliation of one generated bill against a store of matching payments.

``make bench`` writes a sandbox-format bill (``providers.sandbox.bills``) of
``--bill-lines`` payment lines for one Beijing day to a temporary file, line by
line, and bulk-inserts the matching payments into a scratch database in the
store layer's document shape (branch, provider, ``outTradeNo``, ``amountFen``,
``SUCCEEDED``, ``paidAt`` in the day). Then a process of its own runs the bill
service's matching over the file (api/services/bills.py, the same code the
daily run and ``branchpay reconcile bills`` use, with a provider whose
download copies the file) and reports lines per second and its peak RSS
(``getrusage``'s ``ru_maxrss``), beside its RSS before the run. The
file's write and the inserts are not measured.

Every line is matched: the scenario measures the clean day, the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO

from bson import ObjectId
from pymongo.errors import BulkWriteError

from api.domain.bills import day_bounds
from api.store import Store
from providers.kit.bills import BillEntry
from providers.sandbox.bills import write_bill

Document = dict[str, Any]
BRANCH = "zj"
PROVIDER = "sandbox"
MERCHANT = "zj"
DATABASE = "branchpay_bench_bills"
INSERT_BATCH = 5_000
DEFAULT_LINES = 1_000_000
QUICK_LINES = 20_000


def bill_day(now: datetime | None = None) -> date:
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
        for chunk in write_bill(
            MERCHANT, day, entries(day, count), generated_at=datetime.now(UTC)
        ):
            out.write(chunk)
    return path.stat().st_size


async def load_payments(uri: str, database: str, day: date, count: int) -> None:
    """A fresh scratch database with the API's indexes and the bill's ``count`` payments."""
    store = Store.connect(uri, database)
    try:
        await store.client.drop_database(database)
        await store.ensure_indexes()
        payments = store.collection("payments")
        for first in range(0, count, INSERT_BATCH):
            batch = [payment(day, i, count) for i in range(first, min(first + INSERT_BATCH, count))]
            try:
                await payments.insert_many(batch, ordered=False)
            except BulkWriteError:
                raise
    finally:
        await store.close()


async def drop(uri: str, database: str) -> None:
    store = Store.connect(uri, database)
    try:
        await store.client.drop_database(database)
    finally:
        await store.close()


@dataclass(frozen=True, slots=True)
class Matched:
    """What the matching process measured."""

    lines: int
    seconds: float
    rss_before: int  # bytes, once imports and the store's client are up
    rss_peak: int  # bytes, the process's peak (ru_maxrss)
    status: str
    matched: int
    open_discrepancies: int
    bill_bytes: int

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "seconds": self.seconds,
            "linesPerSecond": self.lines_per_second,
            "rssBeforeBytes": self.rss_before,
            "rssPeakBytes": self.rss_peak,
            "status": self.status,
            "matched": self.matched,
            "openDiscrepancies": self.open_discrepancies,
            "billBytes": self.bill_bytes,
        }


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
