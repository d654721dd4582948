"""Every documented ``orders`` query shape is served by an index, as the store's ``explain`` says.

The API runs for real; every ``find`` it sends to the orders collection is
recorded as sent, then handed back to the store's ``explain``, so the plans
checked are those of the exact query shapes the resolver generates (filter,
sort, limit, projection), first page and later pages alike, for an ops key
(all branches, no branch filter) and for partner keys of one and two branches.
Each shape must be an index walk with no in-memory sort that examines keys in
proportion to the page (``executionStats``). What SecantusDB 0.7.0b3 cannot
plan is an expected failure that names what its planner does instead.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.database import Database
from pymongo.errors import OperationFailure

from api.dev.seed import seed
from api.domain.order import normalise_phone
from api.domain.pii import PiiVault
from api.settings import Settings
from api.store import Store
from api.web.app import create_app
from providers.kit.loopback import LoopbackServer
from tests.conftest import DEMO_BRANCHES_TOML, GraphQLClient, issue_key

PAGE = "query($f: OrderFilter, $after: String) { orders(filter: $f, first: 5, after: $after) {"
PAGE += " edges { node { id status } } pageInfo { endCursor } } }"
FIND_FIELDS = ("filter", "sort", "limit", "projection", "skip", "hint")


class FindLog(monitoring.CommandListener):
    """Every ``find`` command sent to the orders collection, as sent."""

    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "orders":
            self.finds.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


PHONE = "13812345678"
PHONE_ORDERS = 12  # per branch given the number, so that two pages of 5 exist


@dataclass
class Service:
    url: str
    db: Database[dict[str, Any]]
    finds: FindLog

    def client(self, role: str, *branches: str) -> GraphQLClient:
        return GraphQLClient(self.url, issue_key(self.db, role, branches))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[Service]:
    """The real API on 600 seeded orders of three branches, for the whole module."""
    tmp_path = tmp_path_factory.mktemp("explain")
    db_name = f"bp_test_explain_{secrets.token_hex(6)}"
    (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
    config = tmp_path / "plugins.toml"
    config.write_text(DEMO_BRANCHES_TOML.format(gateway="http://127.0.0.1:9"))

    settings = Settings(
        plugins_toml=config,
        database=db_name,
        data_dir=tmp_path / "data",
        pii_key=secrets.token_urlsafe(32),
    )
    vault = PiiVault(settings.pii_master_key())

    async def load() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        await seed(
            store, branches=["zj", "bj", "yn"], orders=600, ttl=timedelta(minutes=30), vault=vault
        )
        # Some orders of zj and bj get one number, as createOrder would store it.
        digest = vault.fingerprint(normalise_phone(PHONE), "phone")
        for branch in ("zj", "bj"):
            ids = [
                doc["_id"]
                async for doc in store.orders.collection.find({"branch": branch}, {"_id": 1}).limit(
                    PHONE_ORDERS
                )
            ]
            await store.orders.collection.update_many(
                {"_id": {"$in": ids}}, {"$set": {"customer.phoneDigest": digest}}
            )
        await store.close()

    asyncio.run(load())
    finds = FindLog()
    app = create_app(
        settings,
        mongodb_uri=mongo_uri,
        client_options={"event_listeners": [finds]},
    )
    with LoopbackServer(app) as server, MongoClient(mongo_uri) as client:
        yield Service(server.url, client[db_name], finds)
        client.drop_database(db_name)


@pytest.fixture
def api(service: Service) -> tuple[GraphQLClient, FindLog]:
    service.finds.finds.clear()
    return service.client("ops"), service.finds


def _index_scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if plan.get("stage") == "IXSCAN":
        yield plan
    for child in ("inputStage", "queryPlan"):
        if isinstance(plan.get(child), dict):
            yield from _index_scans(plan[child])
    for stage in plan.get("inputStages", []):
        yield from _index_scans(stage)


def _winning_plan(client: MongoClient[dict[str, Any]], db: str, find: dict[str, Any]) -> Any:
    command = {"find": "orders", **{k: find[k] for k in FIND_FIELDS if k in find}}
    try:
        explained = client[db].command({"explain": command, "verbosity": "queryPlanner"})
    except OperationFailure as error:
        pytest.skip(f"the store cannot explain a find ({error.code}: {error}): plans unchecked")
    return explained["queryPlanner"]["winningPlan"]


FILTERS = pytest.mark.parametrize(
    "order_filter",
    [
        {"branches": ["zj"]},
        {"branches": ["zj"], "status": ["EXPIRED"]},
        {"branches": ["bj"], "status": ["EXPIRED", "CANCELLED"]},
    ],
    ids=["branch", "branch+status", "branch+statuses"],
)


def _two_pages(
    client: GraphQLClient, finds: FindLog, order_filter: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The finds the API sent for the first and the second page of ``order_filter``."""
    finds.finds.clear()
    first = client.data(PAGE, {"f": order_filter})["orders"]
    assert len(first["edges"]) == 5
    client.data(PAGE, {"f": order_filter, "after": first["pageInfo"]["endCursor"]})
    # The expiry job reads orders too; the pages are the finds sorted newest first.
    pages = [find for find in finds.finds if "createdAt" in find.get("sort", {})]
    assert len(pages) == 2, "one find per page"
    return pages


def _page_plans(
    api: tuple[GraphQLClient, FindLog], service: Service, order_filter: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Winning plans of the first and second pages' finds, and whether the store is SecantusDB."""
    client, finds = api
    pages = _two_pages(client, finds, order_filter)
    store = service.db.client
    first_page, later_page = (_winning_plan(store, service.db.name, find) for find in pages)
    return first_page, later_page, _is_secantus(store)


@FILTERS
def test_first_pages_walk_a_branch_index(
    api: tuple[GraphQLClient, FindLog], service: Service, order_filter: dict[str, Any]
) -> None:
    first_page, _, _ = _page_plans(api, service, order_filter)
    assert _on_branch_index(first_page), first_page


@FILTERS
def test_later_pages_walk_a_branch_index(
    api: tuple[GraphQLClient, FindLog], service: Service, order_filter: dict[str, Any]
) -> None:
    _, later_page, secantus = _page_plans(api, service, order_filter)
    if secantus and not _on_branch_index(later_page):
        pytest.xfail(
            "SecantusDB 0.7.0b3's planner scans the collection for the keyset condition "
            "of a later page ($or on createdAt, _id) instead of the branch index; "
            "MongoDB bounds the index scan with it (docs/performance.md)"
        )
    assert _on_branch_index(later_page), later_page


def _on_branch_index(plan: dict[str, Any]) -> bool:
    scans = list(_index_scans(plan))
    return bool(scans) and all(next(iter(scan["keyPattern"])) == "branch" for scan in scans)


def _is_secantus(client: MongoClient[dict[str, Any]]) -> bool:
    return "secantusVersion" in client.admin.command("buildInfo")


@dataclass(frozen=True)
class Shape:
    """One documented ``orders`` query: who asks, the filter, the index meant to serve it."""

    role: str
    key_branches: tuple[str, ...]
    order_filter: dict[str, Any] | None
    index: str
    # The separate index ranges the store walks and merges: one per (branch, status) pair.
    ranges: int = 1
    # Another index that serves it as well: the number's orders are few in every branch.
    also: str | None = None


AFTER, BEFORE = "createdAfter", "createdBefore"
# The seeded orders span the last 30 days: both bounds cut it, and leave two pages.
SINCE = (datetime.now(UTC) - timedelta(days=25)).isoformat()
UNTIL = (datetime.now(UTC) - timedelta(days=5)).isoformat()
SHAPES = {
    "ops unfiltered": Shape("ops", (), None, "created"),
    "ops status": Shape("ops", (), {"status": ["EXPIRED"]}, "status_created"),
    "ops statuses": Shape("ops", (), {"status": ["EXPIRED", "CANCELLED"]}, "status_created", 2),
    "ops dates": Shape("ops", (), {AFTER: SINCE, BEFORE: UNTIL}, "created"),
    "ops status dates": Shape("ops", (), {"status": ["EXPIRED"], AFTER: SINCE}, "status_created"),
    "ops phone": Shape("ops", (), {"customerPhone": PHONE}, "phone_created"),
    "ops branch": Shape("ops", (), {"branches": ["zj"]}, "branch_created"),
    "ops branches": Shape("ops", (), {"branches": ["zj", "bj"]}, "branch_created", 2),
    "ops branch status": Shape(
        "ops", (), {"branches": ["zj"], "status": ["EXPIRED"]}, "branch_status_created"
    ),
    "ops branches statuses": Shape(
        "ops",
        (),
        {"branches": ["zj", "bj"], "status": ["EXPIRED", "CANCELLED"]},
        "branch_status_created",
        4,
    ),
    "ops branch dates": Shape("ops", (), {"branches": ["zj"], BEFORE: UNTIL}, "branch_created"),
    "partner unfiltered": Shape("partner", ("zj",), None, "branch_created"),
    "partner status": Shape("partner", ("zj",), {"status": ["EXPIRED"]}, "branch_status_created"),
    "partner dates": Shape("partner", ("zj",), {AFTER: SINCE}, "branch_created"),
    "partner phone": Shape(
        "partner", ("zj",), {"customerPhone": PHONE}, "branch_phone_created", also="phone_created"
    ),
    "partner of two branches": Shape("partner", ("zj", "bj"), None, "branch_created", 2),
    "partner of two branches, status": Shape(
        "partner", ("zj", "bj"), {"status": ["EXPIRED"]}, "branch_status_created", 2
    ),
}
SORT_STAGES = {"SORT", "SORT_KEY_GENERATOR"}  # a blocking sort in memory; SORT_MERGE is not one


def _stages(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in ("inputStage", "queryPlan"):
        if isinstance(plan.get(child), dict):
            yield from _stages(plan[child])
    for stage in plan.get("inputStages", []):
        yield from _stages(stage)


def _explained(service: Service, find: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The winning plan and the keys examined (None where the store gives no executionStats)."""
    command = {"find": "orders", **{k: find[k] for k in FIND_FIELDS if k in find}}
    db = service.db
    try:
        explained = db.command({"explain": command, "verbosity": "executionStats"})
    except OperationFailure:
        return _winning_plan(db.client, db.name, find), None
    stats = explained.get("executionStats") or {}
    keys = stats.get("totalKeysExamined")
    return explained["queryPlanner"]["winningPlan"], int(keys) if keys is not None else None


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_every_query_shape_is_served_by_an_index(service: Service, shape: Shape) -> None:
    """No in-memory sort, and keys examined in proportion to the page, first and later pages.

    The limit sent is the page plus one (to tell whether a next page exists).
    On SecantusDB 0.7.0b3 each shape is an expected failure naming what the
    store's planner does instead; on MongoDB (``BRANCHPAY_TEST_MONGODB_URI``)
    every shape must pass.
    """
    client = service.client(shape.role, *shape.key_branches)
    pages = _two_pages(client, service.finds, shape.order_filter)
    secantus = _is_secantus(service.db.client)
    limits: list[str] = []
    for page, find in zip(("first", "later"), pages, strict=True):
        plan, keys = _explained(service, find)
        stages = list(_stages(plan))
        names = {stage.get("stage") for stage in stages}
        scanned = [stage.get("indexName") for stage in stages if stage.get("stage") == "IXSCAN"]
        # An index that does not fit the filter is a mistake of ours on any store.
        assert all(_fits(name, shape) for name in scanned), (page, scanned, plan)
        problems = []
        if not scanned:
            problems.append(
                "scans the collection for the keyset $or of a later page"
                if page == "later"
                else "scans the collection for $in on both branch and status"
            )
        if names & SORT_STAGES:
            problems.append("sorts in memory although the index gives the order")
        # Twice the page per range: room for the keyset $or's second, one-instant range.
        bound = 2 * shape.ranges * (int(find["limit"]) + 1)
        if keys is not None and keys > bound:
            problems.append(
                f"walks the index range to its end, not to the limit "
                f"({keys} keys examined for a page of {find['limit']}, at most {bound})"
            )
        if problems and secantus:
            limits.append(f"{page} page: {'; '.join(problems)}")
            continue
        assert not problems, (page, problems, plan)
        assert {shape.index, shape.also} & set(scanned), (page, scanned, plan)
    if limits:
        pytest.xfail(
            f"SecantusDB 0.7.0b3 cannot plan this shape on {shape.index}, which MongoDB "
            f"walks in order to the limit (docs/performance.md): {' | '.join(limits)}"
        )


def _fits(index: str, shape: Shape) -> bool:
    """Whether the index starts with what the shape filters on by equality."""
    order_filter = shape.order_filter or {}
    by_branch = shape.role != "ops" or "branches" in order_filter
    if "customerPhone" in order_filter:
        return index == "phone_created" or (by_branch and index == "branch_phone_created")
    if by_branch:
        return index.startswith("branch_")
    if "status" in order_filter:
        return index.startswith("status_")
    return index == "created"
