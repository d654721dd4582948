"""Queries over real HTTP: branches, catalog, orders with cursor pagination, node, and bad input."""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import RunningService
from tests.schema.test_mutation import create, offering_id

PAGE = """
query Page($filter: OrderFilter, $first: Int, $after: String) {
  orders(filter: $filter, first: $first, after: $after) {
    edges { cursor node { id status createdAt branch { code } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


def walk(
    service: RunningService, filter: dict[str, Any] | None, first: int
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        page = service.client.data(PAGE, {"filter": filter, "first": first, "after": after})[
            "orders"
        ]
        seen.extend(edge["node"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return seen
        after = page["pageInfo"]["endCursor"]


def test_branches_and_their_providers(start_service: Any) -> None:
    service: RunningService = start_service()
    data = service.client.data(
        "{ branches { code name province operator providers { name displayName methods } } }"
    )
    assert [b["code"] for b in data["branches"]] == ["zj", "bj", "yn"]
    zj = data["branches"][0]
    assert (zj["name"], zj["province"], zj["operator"]) == (
        "China Mobile Zhejiang",
        "Zhejiang",
        "China Mobile",
    )
    assert [p["name"] for p in zj["providers"]] == ["sandbox"]
    assert data["branches"][2]["providers"] == []  # yn has sandbox configured but disabled
    assert service.client.data('{ branch(code: "bj") { code } }') == {"branch": {"code": "bj"}}
    assert service.client.data('{ branch(code: "xx") { code } }') == {"branch": None}


def test_catalog_has_every_kind_with_handset_options(start_service: Any) -> None:
    service: RunningService = start_service()
    query = """query($kind: OfferingKind) { catalog(branch: "zj", kind: $kind) {
        id kind title price { amountFen currency } number premium
        options { name choices { value priceDelta { amountFen } } } branch { code } } }"""
    everything = service.client.data(query)["catalog"]
    assert {o["kind"] for o in everything} == {"NUMBER", "PLAN", "TOP_UP", "HANDSET"}
    assert all(o["branch"]["code"] == "zj" for o in everything)
    handsets = service.client.data(query, {"kind": "HANDSET"})["catalog"]
    assert handsets and {o["kind"] for o in handsets} == {"HANDSET"}
    assert {g["name"] for g in handsets[0]["options"]} == {"colour", "storage", "contract"}
    numbers = service.client.data(query, {"kind": "NUMBER"})["catalog"]
    assert any(n["premium"] for n in numbers) and all(n["number"] for n in numbers)
    node = service.client.data(
        "query($id: ID!) { node(id: $id) { id ... on Offering { title } } }",
        {"id": handsets[0]["id"]},
    )
    assert node["node"]["title"] == handsets[0]["title"]
    assert service.client.error_codes('{ catalog(branch: "xx") { id } }') == ["BAD_USER_INPUT"]


def test_walking_every_page_returns_each_order_once(start_service: Any) -> None:
    service: RunningService = start_service(orders=230)
    all_orders = walk(service, None, 17)
    assert len(all_orders) == 230 == len({o["id"] for o in all_orders})
    keys = [o["createdAt"] for o in all_orders]
    assert keys == sorted(keys, reverse=True)

    only = {"branches": ["zj", "bj"], "status": ["EXPIRED", "CANCELLED"]}
    filtered = walk(service, only, 9)
    expected = service.db.orders.count_documents(
        {"branch": {"$in": ["zj", "bj"]}, "status": {"$in": ["EXPIRED", "CANCELLED"]}}
    )
    assert len(filtered) == expected == len({o["id"] for o in filtered}) > 0
    assert all(
        o["branch"]["code"] in ("zj", "bj") and o["status"] in ("EXPIRED", "CANCELLED")
        for o in filtered
    )
    count = service.client.data(
        "query($f: OrderFilter) { orders(filter: $f, first: 1) { totalCount } }", {"f": only}
    )
    assert count["orders"]["totalCount"] == expected


def test_orders_tie_on_created_at_are_split_by_id(start_service: Any) -> None:
    service: RunningService = start_service(orders=40)
    same_time = datetime(2026, 1, 1, tzinfo=UTC)
    service.db.orders.update_many({}, {"$set": {"createdAt": same_time}})
    assert len({o["id"] for o in walk(service, None, 7)}) == 40


def test_pages_stay_exact_while_orders_are_created(start_service: Any) -> None:
    service: RunningService = start_service(orders=120)
    before = {o["_id"] for o in service.db.orders.find({}, {"_id": 1})}
    stop = threading.Event()

    def keep_creating() -> None:
        index = 0
        while not stop.is_set():
            create(service, idempotencyKey=f"during-walk-{index:04d}")
            index += 1

    writer = threading.Thread(target=keep_creating)
    writer.start()
    try:
        walked = walk(service, None, 10)
    finally:
        stop.set()
        writer.join()
    ids = [o["id"] for o in walked]
    assert len(ids) == len(set(ids))
    decoded = {
        base64.urlsafe_b64decode(i + "=" * (-len(i) % 4)).decode().split(":")[1] for i in ids
    }
    assert {str(i) for i in before} <= decoded


def test_filters_by_time(start_service: Any) -> None:
    service: RunningService = start_service(orders=60)
    since = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    recent = walk(service, {"createdAfter": since}, 100)
    assert len(recent) == service.db.orders.count_documents(
        {"createdAt": {"$gt": datetime.fromisoformat(since)}}
    )
    assert service.client.error_codes(
        PAGE, {"filter": {"createdAfter": "2026-01-01T00:00:00"}}
    ) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize(
    "variables",
    [
        {"first": 101},
        {"first": -1},
        {"after": "garbage"},
        {"after": base64.b64encode(b"o1:x:y").decode()},
    ],
)
def test_bad_page_arguments_are_bad_user_input(
    start_service: Any, variables: dict[str, Any]
) -> None:
    service: RunningService = start_service()
    body = service.client.post(PAGE, variables)
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]


def test_order_and_node_by_id(start_service: Any) -> None:
    service: RunningService = start_service()
    order = create(service)["order"]
    query = "query($id: ID!) { order(id: $id) { id total { amountFen } payments { id } } }"
    found = service.client.data(query, {"id": order["id"]})["order"]
    assert found == {
        "id": order["id"],
        "total": {"amountFen": order["total"]["amountFen"]},
        "payments": [],
    }
    node = service.client.data(
        "query($id: ID!) { node(id: $id) { id ... on Order { status } } }", {"id": order["id"]}
    )
    assert node["node"] == {"id": order["id"], "status": "PENDING_PAYMENT"}
    unknown = base64.urlsafe_b64encode(b"Order:0123456789abcdef01234567").decode().rstrip("=")
    assert service.client.data(query, {"id": unknown}) == {"order": None}
    for bad in (
        "nope",
        offering_id("zj-plan-59"),
        base64.b64encode(b"Order:zz").decode(),
        "x" * 300,
    ):
        assert service.client.error_codes(query, {"id": bad}) == ["BAD_USER_INPUT"]
    assert service.client.error_codes(
        "query($id: ID!) { node(id: $id) { id } }", {"id": "bm9wZQ"}
    ) == ["BAD_USER_INPUT"]
