"""Free-text inputs over real HTTP: length limits, no NUL, no lone surrogate, nothing written.

A refused mutation answers a ``userErrors`` entry with a code naming the field,
a refused query a top-level BAD_USER_INPUT naming the argument; never INTERNAL.
Lone surrogates go both ways a client can send them: as a JSON escape in the
variables, and as an escape inside a GraphQL string literal in the document.

NUL, lone surrogates and strings over ``max_string_length`` may also be refused
earlier, by the generic check of every string in a request (a top-level
BAD_USER_INPUT): those cases accept either answer, ``EITHER``. Values only the
field's own limit refuses (one character over it) must get the field's code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from api.domain.text import (
    CANCEL_REASON,
    CUSTOMER_NAME,
    LIMITS,
    REFUND_REASON,
    RETURN_URL,
    TextLimit,
)
from tests.conftest import GraphQLClient, RunningService
from tests.schema.test_mutation import CANCEL, CREATE, offering_id, order_input

ROOT = Path(__file__).resolve().parents[2]
LONE = "\ud800"
REFUND = """mutation($input: RefundPaymentInput!) {
  refundPayment(input: $input) { refund { id } userErrors { field message code } } }"""
START = """mutation($input: StartPaymentInput!) {
  startPayment(input: $input) { payment { id } userErrors { field message code } } }"""
BY_FILTER = "query($f: OrderFilter) { orders(filter: $f) { totalCount } }"
MISSING_PAYMENT = "UGF5bWVudDowMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc"


def post(client: GraphQLClient, query: str, variables: dict[str, Any] | None = None) -> Any:
    """Sent as JSON with ASCII escapes, the way a lone surrogate can travel at all."""
    body = json.dumps({"query": query, "variables": variables or {}})
    response = client.http.post(
        "/graphql", content=body.encode("ascii"), headers={"content-type": "application/json"}
    )
    assert response.headers["content-type"] == "application/json", response.text
    return response.json()


GENERIC = ("BAD_USER_INPUT", ())


def refusal(body: dict[str, Any], mutation: str) -> tuple[str, tuple[str, ...]]:
    """(code, field) of a refused mutation: a top-level error, or its one userError."""
    if body.get("errors"):
        assert [error["extensions"]["code"] for error in body["errors"]] == ["BAD_USER_INPUT"]
        assert body["data"] is None or body["data"][mutation] is None, body
        return GENERIC
    payload = body["data"][mutation]
    [error] = payload["userErrors"]
    assert all(value is None for key, value in payload.items() if key != "userErrors"), body
    assert len(error["message"]) < 200, error
    return error["code"], tuple(error["field"])


def top_level_codes(body: dict[str, Any]) -> list[str]:
    assert body.get("errors"), body
    return [error["extensions"]["code"] for error in body["errors"]]


def literal(value: str) -> str:
    """``value`` as a GraphQL string literal, non-ASCII as ``\\uXXXX`` escapes (JSON's are the same)."""
    return json.dumps(value)


@pytest.fixture
def service(start_service: Any) -> RunningService:
    running: RunningService = start_service()
    return running


def test_customer_name(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    field = ("INVALID_CUSTOMER", ("customer", "name"))
    cases = {
        "one over the limit": ("x" * (CUSTOMER_NAME.max_chars + 1), [field]),
        "line break": ("Wang\nFang", [field]),
        "escape": ("Wang\x1bFang", [field]),
        "blank": ("   ", [field]),
        "NUL": ("Wang\x00Fang", [field, GENERIC]),
        "lone surrogate": (f"Wang {LONE}", [field, GENERIC]),
    }
    for number, (what, (name, allowed)) in enumerate(cases.items()):
        customer = {"name": name, "phone": "13812345678"}
        key = f"name-case-{number:04d}"
        body = post(client, CREATE, {"input": order_input(customer=customer, idempotencyKey=key)})
        assert refusal(body, "createOrder") in allowed, (what, body)
    for name in (f"Wang {LONE}", "Wang\x00Fang"):
        document = (
            'mutation { createOrder(input: {branch: "zj", items: [{offeringId: '
            + literal(offering_id("zj-plan-59"))
            + "}], customer: {name: "
            + literal(name)
            + ', phone: "13812345678"}, idempotencyKey: "name-literal-0001"})'
            + " { order { id } userErrors { field message code } } }"
        )
        assert refusal(post(client, document), "createOrder") in [field, GENERIC], name
    assert service.db.orders.count_documents({}) == 0
    chinese = "张" * CUSTOMER_NAME.max_chars
    customer = {"name": f"  {chinese} ", "phone": "13812345678"}
    created = post(client, CREATE, {"input": order_input(customer=customer)})
    assert created["data"]["createOrder"]["userErrors"] == []
    assert created["data"]["createOrder"]["order"]["customer"]["name"] == chinese
    assert errors == []


def test_the_field_says_why(service: RunningService) -> None:
    """A lone surrogate or NUL the field's own check refuses is named in the message."""
    client = service.client
    for number, (name, why) in enumerate(
        ((f"Wang {LONE}", "lone surrogate"), ("Wang\x00", "U+0000"))
    ):
        customer = {"name": name, "phone": "13812345678"}
        key = f"why-case-{number:04d}"
        body = post(client, CREATE, {"input": order_input(customer=customer, idempotencyKey=key)})
        if body.get("errors"):
            continue  # the generic check of every string refused it first
        assert why in body["data"]["createOrder"]["userErrors"][0]["message"]


def test_other_customer_and_order_text(
    service: RunningService, watch_errors: Callable[[], list[Any]]
) -> None:
    errors = watch_errors()
    client = service.client
    # Digits of other scripts, which str.isdigit() and a bare \d accept (valid in ASCII).
    fullwidth = "13" + "".join(chr(0xFF10 + int(d)) for d in "812345678")
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in "11010519491231002") + "X"
    phone = ("INVALID_PHONE", ("customer", "phone"))
    handset = offering_id("zj-handset-iphone17")
    option = ("UNKNOWN_OPTION", ("items", "0", "options"))
    cases: list[tuple[dict[str, Any], list[tuple[str, tuple[str, ...]]]]] = [
        ({"customer": {"name": "Li", "phone": "138" + " " * 3000 + "12345678"}}, [phone]),
        ({"customer": {"name": "Li", "phone": fullwidth}}, [phone]),
        ({"customer": {"name": "Li", "phone": f"138{LONE}12345678"}}, [phone, GENERIC]),
        (
            {"customer": {"name": "Li", "phone": "13812345678", "idCardNumber": arabic_indic}},
            [("INVALID_ID_CARD", ("customer", "idCardNumber"))],
        ),
        (
            {"idempotencyKey": f"key-{LONE}-0001"},
            [("INVALID_IDEMPOTENCY_KEY", ("idempotencyKey",)), GENERIC],
        ),
        ({"branch": "z" * 3000}, [("UNKNOWN_BRANCH", ("branch",))]),
        ({"branch": f"zj{LONE}"}, [("UNKNOWN_BRANCH", ("branch",)), GENERIC]),
        (
            {"items": [{"offeringId": handset, "options": [{"name": "colour", "value": LONE}]}]},
            [option, GENERIC],
        ),
        (
            {"items": [{"offeringId": handset, "options": [{"name": "c" * 65, "value": "x"}]}]},
            [option],
        ),
    ]
    for number, (overrides, allowed) in enumerate(cases):
        overrides.setdefault("idempotencyKey", f"other-case-{number:04d}")
        body = post(client, CREATE, {"input": order_input(**overrides)})
        assert refusal(body, "createOrder") in allowed, (overrides, body)
    assert service.db.orders.count_documents({}) == 0
    catalog = post(client, "query($b: String!) { catalog(branch: $b) { id } }", {"b": "z" * 3000})
    assert top_level_codes(catalog) == ["BAD_USER_INPUT"]
    assert len(catalog["errors"][0]["message"]) < 100
    assert errors == []


def test_cancel_reason(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    order = client.data(CREATE, {"input": order_input()})["createOrder"]["order"]
    stored_before = service.db.orders.find_one({}, {"outbox": 0})
    field = ("INVALID_REASON", ("reason",))
    cases = {
        "one over the limit": ("r" * (CANCEL_REASON.max_chars + 1), [field]),
        "an escape character": ("changed\x1bmind", [field]),
        "900 KB": ("r" * 900_000, [field, GENERIC]),
        "NUL": ("changed\x00mind", [field, GENERIC]),
        "lone surrogate": (f"changed {LONE} mind", [field, GENERIC]),
    }
    for what, (reason, allowed) in cases.items():
        body = post(client, CANCEL, {"input": {"orderId": order["id"], "reason": reason}})
        assert refusal(body, "cancelOrder") in allowed, (what, str(body)[:300])
    for reason in (f"changed {LONE} mind", "changed\x00mind"):
        document = (
            "mutation { cancelOrder(input: {orderId: "
            + literal(order["id"])
            + ", reason: "
            + literal(reason)
            + "}) { order { id } userErrors { field message code } } }"
        )
        assert refusal(post(client, document), "cancelOrder") in [field, GENERIC], reason
    assert service.db.orders.find_one({}, {"outbox": 0}) == stored_before
    reason = ("changed my mind\n\tbecause " + "r" * 200)[: CANCEL_REASON.max_chars]
    done = post(client, CANCEL, {"input": {"orderId": order["id"], "reason": reason}})
    assert done["data"]["cancelOrder"] == {
        "order": {"id": order["id"], "status": "CANCELLED"},
        "userErrors": [],
    }
    assert service.db.orders.find_one({}, {"outbox": 0})["statusHistory"][-1]["reason"] == reason
    assert errors == []


def test_refund_reason(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    field = ("INVALID_REASON", ("reason",))
    cases = {
        "one over the limit": ("r" * (REFUND_REASON.max_chars + 1), [field]),
        "an escape character": ("damaged\x1bbox", [field]),
        "NUL": ("damaged\x00box", [field, GENERIC]),
        "lone surrogate": (f"damaged {LONE} box", [field, GENERIC]),
    }
    for number, (what, (reason, allowed)) in enumerate(cases.items()):
        refund = {
            "paymentId": MISSING_PAYMENT,
            "amountFen": 100,
            "reason": reason,
            "idempotencyKey": f"refund-reason-{number:04d}",
        }
        assert refusal(post(client, REFUND, {"input": refund}), "refundPayment") in allowed, what
    for reason in (f"damaged {LONE} box", "damaged\x00box"):
        document = (
            "mutation { refundPayment(input: {paymentId: "
            + literal(MISSING_PAYMENT)
            + ', amountFen: 100, idempotencyKey: "refund-literal-0001", reason: '
            + literal(reason)
            + "}) { refund { id } userErrors { field message code } } }"
        )
        assert refusal(post(client, document), "refundPayment") in [field, GENERIC], reason
    fine = {
        "paymentId": MISSING_PAYMENT,
        "amountFen": 100,
        "reason": "damaged box\nreturned",
        "idempotencyKey": "refund-reason-fine",
    }
    body = post(client, REFUND, {"input": fine})
    assert refusal(body, "refundPayment") == ("PAYMENT_NOT_FOUND", ("paymentId",))
    assert service.db.refund_requests.count_documents({}) == 0
    assert service.db.audit_log.count_documents({}) == 0
    assert errors == []


def test_return_url(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    order = client.data(CREATE, {"input": order_input()})["createOrder"]["order"]
    field = ("INVALID_RETURN_URL", ("returnUrl",))
    for url, allowed in (
        ("https://shop.example/" + "a" * RETURN_URL.max_chars, [field]),
        ("http://[::1", [field]),
        ("javascript:alert(1)", [field]),
        ("https:///no-host", [field]),
        ("https://shop.example/\x1bdone", [field]),
        (f"https://shop{LONE}.example/done", [field, GENERIC]),
        ("https://shop.example/\x00done", [field, GENERIC]),
    ):
        start = {"orderId": order["id"], "provider": "sandbox", "method": "PAGE", "returnUrl": url}
        assert refusal(post(client, START, {"input": start}), "startPayment") in allowed, url
    long_provider = {"orderId": order["id"], "provider": "p" * 3000, "method": "PAGE"}
    body = post(client, START, {"input": long_provider})
    assert refusal(body, "startPayment") == ("PROVIDER_NOT_ENABLED", ("provider",))
    assert service.db.payments.count_documents({}) == 0
    assert errors == []


def test_order_filter(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    for what, condition, named in (
        ("phone, one over the limit", {"customerPhone": "1" * 33}, "filter.customerPhone"),
        ("branch, one over the limit", {"branches": ["z" * 9]}, "filter.branches[0]"),
        ("branch, an escape character", {"branches": ["zj", "bj\x1b"]}, "filter.branches[1]"),
        # Named by the field's check or the generic one, which names the variable's path.
        ("phone, lone surrogate", {"customerPhone": f"138{LONE}12345678"}, "customerPhone"),
        ("phone, NUL", {"customerPhone": "13812345678\x00"}, "customerPhone"),
        ("branch, lone surrogate", {"branches": [f"zj{LONE}"]}, "branches"),
        ("branch, NUL", {"branches": ["zj", "bj\x00"]}, "branches"),
    ):
        body = post(client, BY_FILTER, {"f": condition})
        assert top_level_codes(body) == ["BAD_USER_INPUT"], (what, body)
        assert named in body["errors"][0]["message"], (what, body)
    for condition in (
        "{customerPhone: " + literal(f"138{LONE}12345678") + "}",
        "{branches: [" + literal(f"zj{LONE}") + "]}",
        "{branches: [" + literal("zj\x00") + "]}",
        "{customerPhone: " + literal("13812345678\x00") + "}",
    ):
        body = post(client, "{ orders(filter: " + condition + ") { totalCount } }")
        assert top_level_codes(body) == ["BAD_USER_INPUT"], (condition, body)
    matched = client.data(BY_FILTER, {"f": {"branches": ["zj", "nosuch"]}})
    assert matched["orders"]["totalCount"] == 0
    assert errors == []


def test_every_limit_is_in_the_docs() -> None:
    """docs/security.md's Limits table and docs/api.md list each input of ``LIMITS`` with its limit."""
    for doc in ("security.md", "api.md"):
        text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
        for limit in LIMITS:
            assert f"| {limit.inputs} | {limit.summary} |" in text, (doc, limit)


@pytest.mark.parametrize("limit", LIMITS, ids=lambda limit: re.sub(r"\W+", "-", limit.inputs)[:40])
def test_each_limit_refuses_what_it_must(limit: TextLimit) -> None:
    ok = "a" * limit.max_chars
    assert limit.problem(ok, "x") is None
    assert limit.problem(ok + "a", "x") == f"x must be {limit.summary}"
    if limit.min_chars:
        assert limit.problem("a" * (limit.min_chars - 1), "x") == f"x must be {limit.summary}"
    for bad in ("\x00", "\x1b", "\x7f", "\x85", LONE, "\udfff"):
        assert limit.problem(bad + ok[1:], "x"), (limit, bad)
    assert (limit.problem("\n" + ok[1:], "x") is None) is limit.multiline
    assert limit.problem("\U0001f600" + ok[1:], "x") is None  # a pair decodes to one character
