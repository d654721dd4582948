"""Orders: the status machine, the rules of a valid order, and pricing from the catalog.

Pure: no I/O. The store and the services call these functions and write what
they return; a forbidden transition raises and is never written.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from api.domain.money import CURRENCY
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import CUSTOMER_NAME, ID_CARD, IDEMPOTENCY_KEY, OPTION, PHONE

MAX_QUANTITY = 99
MAX_ITEMS = 20
IDEMPOTENCY_KEY_FORM = re.compile(
    rf"^[A-Za-z0-9_\-:.]{{{IDEMPOTENCY_KEY.min_chars},{IDEMPOTENCY_KEY.max_chars}}}$"
)
# ASCII digits only: \d alone also matches other scripts' digits (e.g. fullwidth).
MOBILE_NUMBER = re.compile(r"^1[3-9][0-9]{9}$")
ID_CARD_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CARD_CHECK = "10X98765432"


class OrderStatus(enum.StrEnum):
    PENDING_PAYMENT = "PENDING_PAYMENT"
    PAID = "PAID"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class OfferingKind(enum.StrEnum):
    NUMBER = "NUMBER"
    PLAN = "PLAN"
    TOP_UP = "TOP_UP"
    HANDSET = "HANDSET"


ORDER_TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING_PAYMENT: frozenset(
        {OrderStatus.PAID, OrderStatus.CANCELLED, OrderStatus.EXPIRED}
    ),
    OrderStatus.PAID: frozenset({OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED}),
    OrderStatus.PARTIALLY_REFUNDED: frozenset(
        {OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED}
    ),
    OrderStatus.REFUNDED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"an order cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in ORDER_TRANSITIONS[current]


def check_transition(current: OrderStatus, target: OrderStatus) -> OrderStatus:
    """Return ``target`` when the move is allowed, raise IllegalTransition otherwise."""
    if not can_transition(current, target):
        raise IllegalTransition(current, target)
    return target


def sources_of(target: OrderStatus) -> list[OrderStatus]:
    """Every status from which ``target`` may be reached: the guard of a conditional update."""
    return [status for status, targets in ORDER_TRANSITIONS.items() if target in targets]


@dataclass(frozen=True, slots=True)
class RequestedItem:
    offering_id: str
    quantity: int
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Customer:
    name: str
    phone: str
    id_card: str | None = None


@dataclass(frozen=True, slots=True)
class PricedOrder:
    items: list[dict[str, Any]]
    total_fen: int
    currency: str = CURRENCY


def normalise_phone(raw: str) -> str | None:
    """A mainland mobile number as 11 digits, or None when it is not one.

    Accepts the forms partners send: spaces or dashes, and a +86 / 0086 prefix.
    """
    if PHONE.problem(raw, "phone") is not None:
        return None
    digits = re.sub(r"[\s\-]", "", raw)
    for prefix in ("+86", "0086"):
        if digits.startswith(prefix):
            digits = digits[len(prefix) :]
            break
    return digits if MOBILE_NUMBER.fullmatch(digits) else None


def check_customer(
    name: str, phone: str, id_card: str | None = None
) -> tuple[Customer | None, list[Problem]]:
    problems: list[Problem] = []
    if id_card is not None and (
        ID_CARD.problem(id_card, "idCardNumber") is not None
        or not valid_id_card(id_card.strip().upper())
    ):
        problems.append(
            Problem(
                ("customer", "idCardNumber"),
                "idCardNumber must be an 18-character resident ID card number",
                UserErrorCode.INVALID_ID_CARD,
            )
        )
    clean_name = name.strip()
    if (why := CUSTOMER_NAME.problem(clean_name, "name")) is not None:
        problems.append(Problem(("customer", "name"), why, UserErrorCode.INVALID_CUSTOMER))
    number = normalise_phone(phone)
    if number is None:
        problems.append(
            Problem(
                ("customer", "phone"),
                "phone must be a mainland China mobile number such as 13812345678",
                UserErrorCode.INVALID_PHONE,
            )
        )
    if problems or number is None:
        return None, problems
    return Customer(clean_name, number, id_card.strip().upper() if id_card else None), []


def valid_id_card(number: str) -> bool:
    """A mainland resident ID card number: 17 digits and the ISO 7064 MOD 11-2 check character."""
    # ASCII digits only: isdigit() and int() also take other scripts' digits.
    if len(number) != 18 or not number[:17].isascii() or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], ID_CARD_WEIGHTS, strict=True))
    return ID_CARD_CHECK[total % 11] == number[17]


def check_idempotency_key(key: str) -> list[Problem]:
    if IDEMPOTENCY_KEY_FORM.fullmatch(key):
        return []
    return [
        Problem(
            ("idempotencyKey",),
            f"idempotencyKey must be {IDEMPOTENCY_KEY.summary} "
            "of letters, digits, '_', '-', ':' or '.'",
            UserErrorCode.INVALID_IDEMPOTENCY_KEY,
        )
    ]


def price_order(
    branch: str,
    requested: Sequence[RequestedItem],
    offerings: Mapping[str, Mapping[str, Any]],
) -> tuple[PricedOrder | None, list[Problem]]:
    """Price the requested items from the branch's catalog.

    ``offerings`` maps offering id to the stored offering document (those that
    exist at all, of any branch). The client never sends an amount: each
    line's price is the offering's price plus the price of the chosen options.
    """
    problems: list[Problem] = []
    if not requested:
        problems.append(
            Problem(("items",), "an order needs at least one item", UserErrorCode.EMPTY_ORDER)
        )
    if len(requested) > MAX_ITEMS:
        problems.append(
            Problem(
                ("items",),
                f"an order holds at most {MAX_ITEMS} items",
                UserErrorCode.TOO_MANY_ITEMS,
            )
        )
    lines: list[dict[str, Any]] = []
    seen_numbers: set[str] = set()
    for index, item in enumerate(requested):
        path = ("items", str(index))
        if option_problem := _option_text_problem(item.options):
            problems.append(
                Problem((*path, "options"), option_problem, UserErrorCode.UNKNOWN_OPTION)
            )
            continue
        offering = offerings.get(item.offering_id)
        if offering is None or not offering.get("active", True):
            problems.append(
                Problem((*path, "offeringId"), "no such offering", UserErrorCode.UNKNOWN_OFFERING)
            )
            continue
        if offering["branch"] != branch:
            problems.append(
                Problem(
                    (*path, "offeringId"),
                    f"the offering belongs to another branch, not to {branch}",
                    UserErrorCode.OFFERING_OF_OTHER_BRANCH,
                )
            )
            continue
        if not 1 <= item.quantity <= MAX_QUANTITY:
            problems.append(
                Problem(
                    (*path, "quantity"),
                    f"quantity must be between 1 and {MAX_QUANTITY}",
                    UserErrorCode.INVALID_QUANTITY,
                )
            )
            continue
        kind = OfferingKind(offering["kind"])
        if kind is OfferingKind.NUMBER:
            if item.quantity != 1:
                problems.append(
                    Problem(
                        (*path, "quantity"),
                        "a mobile number is ordered once",
                        UserErrorCode.INVALID_QUANTITY,
                    )
                )
                continue
            if item.offering_id in seen_numbers:
                problems.append(
                    Problem(
                        (*path, "offeringId"),
                        "the same number twice",
                        UserErrorCode.DUPLICATE_NUMBER,
                    )
                )
                continue
            seen_numbers.add(item.offering_id)
        chosen, option_problems, extra_fen = _choose_options(offering, item.options, path)
        if option_problems:
            problems.extend(option_problems)
            continue
        unit_fen = int(offering["priceFen"]) + extra_fen
        lines.append(
            {
                "offeringId": item.offering_id,
                "kind": kind.value,
                "title": offering["title"],
                "quantity": item.quantity,
                "unitPriceFen": unit_fen,
                "options": chosen,
                "subtotalFen": unit_fen * item.quantity,
            }
        )
    if problems:
        return None, problems
    return PricedOrder(lines, sum(line["subtotalFen"] for line in lines)), []


def _option_text_problem(options: Mapping[str, str]) -> str | None:
    # Checked before any message repeats a name or value back to the client.
    for name, value in options.items():
        why = OPTION.problem(name, "an option name") or OPTION.problem(value, "an option value")
        if why is not None:
            return why
    return None


def _choose_options(
    offering: Mapping[str, Any], requested: Mapping[str, str], path: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[Problem], int]:
    groups = {group["name"]: group for group in offering.get("options", [])}
    problems = [
        Problem(
            (*path, "options", name),
            f"{offering['title']} has no option {name!r}",
            UserErrorCode.UNKNOWN_OPTION,
        )
        for name in requested
        if name not in groups
    ]
    chosen: list[dict[str, Any]] = []
    extra_fen = 0
    for name, group in groups.items():
        value = requested.get(name)
        if value is None:
            problems.append(
                Problem((*path, "options", name), f"choose a {name}", UserErrorCode.MISSING_OPTION)
            )
            continue
        choice = next((c for c in group["choices"] if c["value"] == value), None)
        if choice is None:
            allowed = ", ".join(c["value"] for c in group["choices"])
            problems.append(
                Problem(
                    (*path, "options", name),
                    f"{value!r} is not a {name} of this offering (one of: {allowed})",
                    UserErrorCode.UNKNOWN_OPTION,
                )
            )
            continue
        extra_fen += int(choice.get("priceDeltaFen", 0))
        chosen.append(
            {"name": name, "value": value, "priceDeltaFen": int(choice.get("priceDeltaFen", 0))}
        )
    return chosen, problems, extra_fen
