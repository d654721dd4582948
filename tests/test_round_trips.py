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


def commands_for(service: RunningService, first: int) -> list[str]:
    service.commands.clear()
    data = service.client.data(QUERY, {"first": first})
    assert len(data["orders"]["edges"]) == first
    return [
        name
        for name in service.commands
        if name not in ("hello", "isMaster", "ping", "endSessions")
    ]


@pytest.mark.parametrize("first", [1, 10, 100])
def test_a_page_of_orders_costs_four_commands(start_service: Any, first: int) -> None:
    service: RunningService = start_service(orders=150)
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
                "outTradeNo": f"T{index:012d}",
                "createdAt": order["createdAt"],
                "refunds": [],
            }
            for index, order in enumerate(
                service.db.orders.find({}, {"branch": 1, "totalFen": 1, "createdAt": 1})
            )
        ]
    )
    # find of the API key, find for the page, find for the payments of all its orders
    # (one DataLoader batch), and the count: the same four whatever the page size
    assert sorted(commands_for(service, first)) == ["aggregate", "find", "find", "find"]
