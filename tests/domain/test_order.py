"""The pure order rules: status machine, pricing from the catalog, input checks."""

from __future__ import annotations

import itertools

import pytest

from api.dev.seed import demo_catalog
from api.domain.money import Money
from api.domain.order import (
    ORDER_TRANSITIONS,
    IllegalTransition,
    OrderStatus,
    RequestedItem,
    check_customer,
    check_idempotency_key,
    check_transition,
    normalise_phone,
    price_order,
)

ALLOWED = {
    (OrderStatus.PENDING_PAYMENT, OrderStatus.PAID),
    (OrderStatus.PENDING_PAYMENT, OrderStatus.CANCELLED),
    (OrderStatus.PENDING_PAYMENT, OrderStatus.EXPIRED),
    (OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED),
    (OrderStatus.PAID, OrderStatus.REFUNDED),
    (OrderStatus.PARTIALLY_REFUNDED, OrderStatus.PARTIALLY_REFUNDED),
    (OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(OrderStatus, OrderStatus)))
def test_every_transition_is_either_allowed_or_rejected(
    current: OrderStatus, target: OrderStatus
) -> None:
    if (current, target) in ALLOWED:
        assert check_transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition):
            check_transition(current, target)


def test_the_table_holds_exactly_the_documented_transitions() -> None:
    table = {
        (current, target) for current, targets in ORDER_TRANSITIONS.items() for target in targets
    }
    assert table == ALLOWED


CATALOG = {o["_id"]: o for o in demo_catalog("zj") + demo_catalog("bj")}


def test_pricing_uses_catalog_prices_and_option_deltas() -> None:
    priced, problems = price_order(
        "zj",
        [
            RequestedItem("zj-plan-129", 2),
            RequestedItem(
                "zj-handset-mate70",
                1,
                {
                    "colour": "Snow White",
                    "storage": "512GB",
                    "contract": "12 months on 5G Smart 59",
                },
            ),
        ],
        CATALOG,
    )
    assert problems == []
    assert priced is not None
    assert [line["subtotalFen"] for line in priced.items] == [2 * 12900, 549900 + 100000 + 30000]
    assert priced.total_fen == 2 * 12900 + 679900


@pytest.mark.parametrize(
    ("item", "code"),
    [
        (RequestedItem("zj-plan-999", 1), "UNKNOWN_OFFERING"),
        (RequestedItem("bj-plan-39", 1), "OFFERING_OF_OTHER_BRANCH"),
        (RequestedItem("zj-plan-39", 0), "INVALID_QUANTITY"),
        (RequestedItem("zj-plan-39", 100), "INVALID_QUANTITY"),
        (RequestedItem("zj-handset-mate70", 1, {"colour": "Black"}), "MISSING_OPTION"),
        (
            RequestedItem(
                "zj-handset-mate70",
                1,
                {"colour": "Pink", "storage": "256GB", "contract": "none"},
            ),
            "UNKNOWN_OPTION",
        ),
        (RequestedItem("zj-plan-39", 1, {"colour": "Black"}), "UNKNOWN_OPTION"),
    ],
)
def test_pricing_refuses_bad_items(item: RequestedItem, code: str) -> None:
    priced, problems = price_order("zj", [item], CATALOG)
    assert priced is None
    assert code in [p.code for p in problems]
    assert all(p.field[0] == "items" for p in problems)


def test_a_number_is_ordered_once() -> None:
    number = next(o for o in CATALOG.values() if o["branch"] == "zj" and o["kind"] == "NUMBER")
    _, twice = price_order("zj", [RequestedItem(number["_id"], 2)], CATALOG)
    _, duplicate = price_order(
        "zj", [RequestedItem(number["_id"], 1), RequestedItem(number["_id"], 1)], CATALOG
    )
    assert [p.code for p in twice] == ["INVALID_QUANTITY"]
    assert [p.code for p in duplicate] == ["DUPLICATE_NUMBER"]


def test_premium_numbers_cost_more() -> None:
    numbers = [o for o in CATALOG.values() if o["branch"] == "zj" and o["kind"] == "NUMBER"]
    premium = {o["priceFen"] for o in numbers if o["premium"]}
    ordinary = {o["priceFen"] for o in numbers if not o["premium"]}
    assert premium and ordinary and min(premium) > max(ordinary)


def test_an_empty_order_is_refused() -> None:
    assert [p.code for p in price_order("zj", [], CATALOG)[1]] == ["EMPTY_ORDER"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13812345678", "13812345678"),
        ("+86 138-1234-5678", "13812345678"),
        ("008613812345678", "13812345678"),
        ("12812345678", None),
        ("1381234567", None),
        ("138123456789", None),
        ("abc", None),
    ],
)
def test_mobile_numbers(raw: str, expected: str | None) -> None:
    assert normalise_phone(raw) == expected


def test_customer_and_key_checks_name_the_field() -> None:
    customer, problems = check_customer("  ", "123")
    assert customer is None
    assert {p.field for p in problems} == {("customer", "name"), ("customer", "phone")}
    assert check_idempotency_key("short") and not check_idempotency_key("order-2026-11-25-0001")


def test_money_is_integer_fen() -> None:
    assert Money(8880).yuan == "88.80"
    assert (Money(1) + Money(2)) * 3 == Money(9)
    with pytest.raises(TypeError):
        Money(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        Money(-1)
