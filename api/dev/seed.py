"""Demo data: the catalogs of the six demo branches and a few hundred demo orders.

Deterministic (a fixed random seed), so every fresh store looks the same. Used
by ``make run`` and ``branchpay seed`` when the store is empty, and by tests.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from api.domain.order import OfferingKind, OrderStatus, RequestedItem, price_order
from api.domain.pii import PiiVault, protect_customer
from api.store import Store

Document = dict[str, Any]

CHINA_MOBILE_PREFIXES = ("139", "138", "135", "188")
CHINA_TELECOM_PREFIXES = ("133", "153", "189", "199")

# branch code -> (operator, number prefixes, area digits used in demo numbers)
DEMO_BRANCHES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "zj": ("China Mobile", CHINA_MOBILE_PREFIXES, "57"),
    "bj": ("China Telecom", CHINA_TELECOM_PREFIXES, "10"),
    "yn": ("China Telecom", CHINA_TELECOM_PREFIXES, "87"),
    "he": ("China Telecom", CHINA_TELECOM_PREFIXES, "31"),
    "sc": ("China Telecom", CHINA_TELECOM_PREFIXES, "28"),
    "cq": ("China Telecom", CHINA_TELECOM_PREFIXES, "23"),
}

PLANS = (
    (39, "5G Basic 39", "5G 基础套餐 39元: 30 GB, 200 minutes"),
    (59, "5G Smart 59", "5G 智享套餐 59元: 60 GB, 300 minutes"),
    (129, "5G Premium 129", "5G 畅享套餐 129元: 150 GB, 800 minutes"),
    (199, "5G Family 199", "5G 全家享 199元: 300 GB shared, 3 SIMs"),
)
TOP_UPS = (30, 50, 100, 200, 500)
HANDSETS = (
    ("mate70", "Huawei Mate 70", 549900, ("Obsidian Black", "Snow White", "Spruce Green")),
    ("iphone17", "Apple iPhone 17", 599900, ("Black", "White", "Lavender")),
    ("xiaomi15", "Xiaomi 15", 449900, ("Black", "Green", "Liquid Silver")),
)
STORAGE = (("256GB", 0), ("512GB", 100000), ("1TB", 200000))
CONTRACTS = (("none", 0), ("24 months on 5G Premium 129", 0), ("12 months on 5G Smart 59", 30000))


def _numbers(branch: str, prefixes: tuple[str, ...], area: str) -> Iterable[tuple[str, bool]]:
    """Eight ordinary numbers and three premium ones (repeated tails) per branch."""
    rng = random.Random(f"numbers-{branch}")
    for index in range(8):
        prefix = prefixes[index % len(prefixes)]
        yield f"{prefix}{area}{rng.randrange(10**6):06d}", False
    for digit in ("8", "6", "9"):
        yield f"{prefixes[0]}{area}{digit * 6}", True


def demo_catalog(branch: str) -> list[Document]:
    operator, prefixes, area = DEMO_BRANCHES[branch]
    offerings: list[Document] = []

    def add(key: str, kind: OfferingKind, title: str, price_fen: int, **extra: Any) -> None:
        offerings.append(
            {
                "_id": f"{branch}-{key}",
                "branch": branch,
                "kind": kind.value,
                "title": title,
                "priceFen": price_fen,
                "options": [],
                "sort": len(offerings),
                "active": True,
                **extra,
            }
        )

    for number, premium in _numbers(branch, prefixes, area):
        add(
            f"number-{number}",
            OfferingKind.NUMBER,
            f"{'Premium number' if premium else 'Number'} {number}",
            88800 if premium else 5000,
            number=number,
            premium=premium,
            description=f"{operator} SIM with number {number}; the price is the prepaid deposit",
        )
    for yuan, title, description in PLANS:
        add(f"plan-{yuan}", OfferingKind.PLAN, title, yuan * 100, description=description)
    for yuan in TOP_UPS:
        add(
            f"topup-{yuan}",
            OfferingKind.TOP_UP,
            f"Top-up {yuan} yuan",
            yuan * 100,
            description=f"Adds {yuan} yuan of credit to any {operator} number",
        )
    for key, title, price_fen, colours in HANDSETS:
        add(
            f"handset-{key}",
            OfferingKind.HANDSET,
            title,
            price_fen,
            description=f"{title}, customised for {operator}",
            options=[
                {"name": "colour", "choices": [{"value": c, "priceDeltaFen": 0} for c in colours]},
                {
                    "name": "storage",
                    "choices": [{"value": v, "priceDeltaFen": d} for v, d in STORAGE],
                },
                {
                    "name": "contract",
                    "choices": [{"value": v, "priceDeltaFen": d} for v, d in CONTRACTS],
                },
            ],
        )
    return offerings


def demo_orders(
    catalogs: dict[str, list[Document]],
    count: int,
    now: datetime,
    ttl: timedelta,
    vault: PiiVault,
) -> list[Document]:
    """``count`` orders spread over the last 30 days; older unpaid ones are expired or cancelled."""
    rng = random.Random("orders")
    surnames = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu")
    orders: list[Document] = []
    branches = sorted(catalogs)
    for index in range(count):
        branch = branches[index % len(branches)]
        catalog = catalogs[branch]
        offering = rng.choice(catalog)
        options = {
            group["name"]: rng.choice(group["choices"])["value"] for group in offering["options"]
        }
        quantity = 1 if offering["kind"] in ("NUMBER", "HANDSET") else rng.randint(1, 3)
        priced, problems = price_order(
            branch,
            [RequestedItem(offering["_id"], quantity, options)],
            {o["_id"]: o for o in catalog},
        )
        assert priced is not None and not problems, problems
        created = now - timedelta(seconds=rng.randrange(30 * 24 * 3600))
        created = created.replace(microsecond=(created.microsecond // 1000) * 1000)
        expires = created + ttl
        if expires > now:
            status = OrderStatus.PENDING_PAYMENT
        else:
            status = rng.choice((OrderStatus.EXPIRED, OrderStatus.EXPIRED, OrderStatus.CANCELLED))
        key = f"demo-{index:06d}"
        orders.append(
            {
                "_id": ObjectId(),
                "branch": branch,
                "status": status.value,
                "totalFen": priced.total_fen,
                "currency": priced.currency,
                "items": priced.items,
                "customer": protect_customer(
                    vault,
                    f"{rng.choice(surnames)} {chr(65 + index % 26)}.",
                    f"13{rng.randrange(10**9):09d}",
                    None,
                ),
                "idempotencyKey": key,
                "requestHash": hashlib.sha256(key.encode()).hexdigest(),
                "createdAt": created,
                "updatedAt": created,
                "expiresAt": expires,
                "statusHistory": [{"status": status.value, "at": created, "reason": "demo data"}],
            }
        )
    return orders


async def seed(
    store: Store, *, branches: Iterable[str], orders: int, ttl: timedelta, vault: PiiVault
) -> bool:
    """Load the demo catalogs and orders if the store has no catalog yet; True when it did."""
    if not await store.catalog.is_empty():
        return False
    catalogs = {code: demo_catalog(code) for code in branches if code in DEMO_BRANCHES}
    await store.catalog.upsert_all(o for catalog in catalogs.values() for o in catalog)
    documents = demo_orders(catalogs, orders, datetime.now(UTC), ttl, vault)
    if documents:
        await store.orders.collection.insert_many(documents, ordered=False)
    return True
