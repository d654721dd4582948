"""The GraphQL layer sends a bounded number of commands to the store, whatever the page size."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningService

QUERY = """
query($first: Int) {
  orders(first: $first) {
    totalCount
    edges { node { id status total { amountFen } branch { code name providers { name } }
                   items { title options { name } } customer { phone } payments { id status refunds { id } } } }
  }
}
"""


def add_payments(service: RunningService, prefix: str) -> None:
    """One closed payment attempt for every order, numbered ``prefix`` + index."""
    orders = service.db.orders.find({}, {"branch": 1, "totalFen": 1, "createdAt": 1})
    service.db.payments.insert_many(
        [
            {
                "orderId": order["_id"],
                "branch": order["branch"],
                "provider": "sandbox",
                "method": "QR_CODE",
                "status": "CLOSED",
                "amountFen": order["totalFen"],
                "currency": "CNY",
                "outTradeNo": f"{prefix}{index:012d}",
                "createdAt": order["createdAt"],
                "refunds": [],
            }
            for index, order in enumerate(orders)
        ]
    )


QUIET = {
    "webhook_delivery": False,
    "webhook_poll_seconds": 3600,
    "expiry_interval_seconds": 3600,
    "reconcile_interval_seconds": 3600,
}


def commands_for(service: RunningService, first: int) -> list[str]:
    service.commands.clear()
    data = service.client.data(QUERY, {"first": first})
    assert len(data["orders"]["edges"]) == first
    # getMore: the keys' change stream, which the key cache follows in the background.
    return [
        name
        for name in service.commands
        if name not in ("hello", "isMaster", "ping", "endSessions", "getMore")
    ]


@pytest.mark.parametrize("first", [1, 10, 100])
def test_a_page_of_orders_costs_four_commands_once_the_key_is_known(
    start_service: Any, first: int
) -> None:
    # No background job's command in the count: they poll the store on their own.
    service: RunningService = start_service(orders=150, **QUIET)
    add_payments(service, "T")
    # The first request reads its API key too; later ones find it in memory.
    assert sorted(commands_for(service, first)) == [
        "aggregate",
        "find",
        "find",
        "find",
        "findAndModify",
    ]
    # the spend of the key's budget (shared by every process), find for the page,
    # find for the payments of all its orders (one DataLoader batch), and the count:
    # the same four whatever the page size
    assert sorted(commands_for(service, first)) == ["aggregate", "find", "find", "findAndModify"]


FRAGMENT_QUERY = """
query($first: Int) {
  page: orders(first: $first) { edges { node { ...Paid } } }
  again: orders(first: 2) { edges { node { id } } }
}
fragment Paid on Order { id bought: payments { outTradeNo } }
"""


def test_payments_are_fetched_with_the_page_only_when_selected(start_service: Any) -> None:
    """Payments selected through an alias and a fragment come in one query; unselected, none."""
    service: RunningService = start_service(orders=30, **QUIET)
    add_payments(service, "F")
    service.commands.clear()
    data = service.client.data(FRAGMENT_QUERY, {"first": 20})
    finds = [name for name in service.commands if name == "find"]
    # the key, two pages, and one payments query for the page that selects them
    assert len(finds) == 4
    numbers = [p["outTradeNo"] for e in data["page"]["edges"] for p in e["node"]["bought"]]
    assert len(numbers) == 20 and len(set(numbers)) == 20
    assert all(set(edge["node"]) == {"id"} for edge in data["again"]["edges"])
    # the lazy path (node) still answers payments, from the DataLoader
    order_id = data["page"]["edges"][0]["node"]["id"]
    node = service.client.data(
        "query($id: ID!) { node(id: $id) { ... on Order { payments { outTradeNo } } } }",
        {"id": order_id},
    )
    assert node["node"]["payments"] == data["page"]["edges"][0]["node"]["bought"]
