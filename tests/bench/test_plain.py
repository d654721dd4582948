"""The bench's plain endpoint is a fair ceiling: same data as GraphQL, and only in bench mode."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from bson import ObjectId

from api.schema.ids import to_global_id
from bench.plain import bench_app
from bench.scenarios import ORDER_QUERY, ORDERS_QUERY
from tests.conftest import RunningService


def _add_payment(service: RunningService, order: dict[str, Any]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    service.db.payments.insert_one(
        {
            "_id": ObjectId(),
            "orderId": order["_id"],
            "branch": order["branch"],
            "provider": "sandbox",
            "method": "QR_CODE",
            "status": "SUCCEEDED",
            "amountFen": order["totalFen"],
            "currency": "CNY",
            "outTradeNo": f"BP{order['_id']}",
            "providerTradeNo": "SBX1",
            "refunds": [],
            "createdAt": now,
            "updatedAt": now,
        }
    )


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL answer without its cost report, which the plain ceiling does not make."""
    return {key: value for key, value in body.items() if key != "extensions"}


def test_plain_orders_answer_what_graphql_answers(start_service: Any) -> None:
    service: RunningService = start_service(orders=120, app_factory=bench_app)
    newest = service.db.orders.find_one(
        {"branch": "zj", "status": "EXPIRED"}, sort=[("createdAt", -1), ("_id", -1)]
    )
    assert newest is not None
    _add_payment(service, newest)
    # A partner's view: personal data masked, as the plain endpoint serves it.
    partner = service.client_for("partner", "zj", "bj", "yn")
    for branch, statuses in (("zj", ["EXPIRED"]), ("bj", ["EXPIRED", "CANCELLED"]), ("zj", None)):
        filter_: dict[str, Any] = {"branches": [branch]}
        params: list[tuple[str, str]] = [("branch", branch), ("first", "7")]
        if statuses is not None:
            filter_["status"] = statuses
            params += [("status", status) for status in statuses]
        graphql = partner.post(ORDERS_QUERY, {"filter": filter_, "first": 7})
        plain = partner.http.get("/bench/orders", params=params)
        assert plain.status_code == 200
        assert plain.json() == answer(graphql)
        assert len(graphql["data"]["orders"]["edges"]) == 7
    # Ops sees personal data in both; a branch outside the key's scope is empty in both.
    ops_graphql = service.client.post(ORDERS_QUERY, {"filter": {"branches": ["bj"]}, "first": 5})
    ops_plain = service.client.http.get("/bench/orders", params={"branch": "bj", "first": "5"})
    assert ops_plain.json() == answer(ops_graphql)
    assert "*" not in ops_graphql["data"]["orders"]["edges"][0]["node"]["customer"]["phone"]
    outside = {"branch": "sc", "first": "5"}
    assert partner.http.get("/bench/orders", params=outside).json() == answer(
        partner.post(ORDERS_QUERY, {"filter": {"branches": ["sc"]}, "first": 5})
    )
    assert partner.http.get("/bench/orders", params=outside).json()["data"]["orders"]["edges"] == []
    paid_page = service.client.data(ORDERS_QUERY, {"filter": {"branches": ["zj"]}, "first": 100})
    payments = [edge["node"]["payments"] for edge in paid_page["orders"]["edges"]]
    assert sum(len(p) for p in payments) == 1


def test_plain_order_by_id_answers_what_graphql_answers(start_service: Any) -> None:
    service: RunningService = start_service(orders=12, app_factory=bench_app)
    order = service.db.orders.find_one({})
    assert order is not None
    _add_payment(service, order)
    partner = service.client_for("partner", "zj", "bj", "yn")
    known = to_global_id("Order", str(order["_id"]))
    missing = to_global_id("Order", str(ObjectId()))
    elsewhere = service.client_for("partner", "sc")
    for client in (partner, elsewhere):
        for order_id in (known, missing):
            graphql = client.post(ORDER_QUERY, {"id": order_id})
            plain = client.http.get(f"/bench/order/{order_id}")
            assert plain.status_code == 200
            assert plain.json() == answer(graphql)
    assert elsewhere.http.get(f"/bench/order/{known}").json() == {"data": {"order": None}}
    assert partner.http.get("/bench/order/not-an-id").status_code == 400
    assert partner.http.get("/bench/orders?status=LOST").status_code == 400


def test_plain_endpoints_sit_behind_the_api_key_gate(start_service: Any) -> None:
    service: RunningService = start_service(orders=3, app_factory=bench_app)
    anonymous = httpx.get(f"{service.url}/bench/orders", params={"branch": "zj"})
    assert anonymous.status_code == 401
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    forged = httpx.get(
        f"{service.url}/bench/order/x", headers={"authorization": "Bearer bp_not_a_key"}
    )
    assert forged.status_code == 401


def test_the_product_never_mounts_the_plain_endpoints(start_service: Any) -> None:
    service: RunningService = start_service(orders=3)
    assert service.client.http.get("/bench/orders?branch=zj").status_code == 404
