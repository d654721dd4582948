"""Free-text inputs over real HTTP: length limits, no NUL, no lone surrogate, nothing written.

A refused mutation answers a ``userErrors`` entry with a code naming the field,
a refused query a top-level BAD_USER_INPUT naming the argument; never INTERNAL.
Lone surrogates go both ways a client can send them: as a JSON escape in the
variables, and as an escape inside a GraphQL string literal in the document.
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
from tests.test_schema_mutations import CANCEL, CREATE, offering_id, order_input

ROOT = Path(__file__).resolve().parent.parent
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


def user_errors(body: dict[str, Any], mutation: str) -> list[dict[str, Any]]:
    assert not body.get("errors"), body
    errors: list[dict[str, Any]] = body["data"][mutation]["userErrors"]
    return errors


def top_level_codes(body: dict[str, Any]) -> list[str]:
    assert body.get("errors"), body
    return [error["extensions"]["code"] for error in body["errors"]]


def literal(value: str) -> str:
    """``value`` as a GraphQL string literal, non-ASCII as ``\\uXXXX`` escapes (JSON's are the same)."""
    return json.dumps(value)


def assert_refused(body: dict[str, Any], mutation: str, user_error: str) -> None:
    """Refused with BAD_USER_INPUT or the mutation's ``user_error``, never INTERNAL.

    Either is right for now: a lone surrogate escape does not parse (GraphQL
    forbids it) and a NUL does, so the field's own check refuses it.
    """
    if body.get("errors"):
        assert top_level_codes(body) == ["BAD_USER_INPUT"], body
    else:
        codes = [error["code"] for error in body["data"][mutation]["userErrors"]]
        assert codes == [user_error], body


@pytest.fixture
def service(start_service: Any) -> RunningService:
    running: RunningService = start_service()
    return running


def test_customer_name(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    cases = {
        "too long": "x" * (CUSTOMER_NAME.max_chars + 1),
        "NUL": "Wang\x00Fang",
        "line break": "Wang\nFang",
        "lone surrogate": f"Wang {LONE}",
        "blank": "   ",
    }
    messages = {}
    for number, (what, name) in enumerate(cases.items()):
        key = f"name-case-{number:04d}"
        customer = {"name": name, "phone": "13812345678"}
        body = post(client, CREATE, {"input": order_input(customer=customer, idempotencyKey=key)})
        [error] = user_errors(body, "createOrder")
        assert (error["code"], error["field"]) == ("INVALID_CUSTOMER", ["customer", "name"]), what
        assert body["data"]["createOrder"]["order"] is None
        messages[what] = error["message"]
    assert "lone surrogate" in messages["lone surrogate"]
    assert "U+0000" in messages["NUL"]
    for name in (f"Wang {LONE}", "Wang\x00Fang"):
        document = (
            'mutation { createOrder(input: {branch: "zj", items: [{offeringId: '
            + literal(offering_id("zj-plan-59"))
            + "}], customer: {name: "
            + literal(name)
            + ', phone: "13812345678"}, idempotencyKey: "name-literal-0001"})'
            + " { order { id } userErrors { code } } }"
        )
        assert_refused(post(client, document), "createOrder", "INVALID_CUSTOMER")
    assert service.db.orders.count_documents({}) == 0
    chinese = "张" * CUSTOMER_NAME.max_chars
    created = post(
        client, CREATE, {"input": order_input(customer={"name": chinese, "phone": "13812345678"})}
    )
    assert user_errors(created, "createOrder") == []
    assert created["data"]["createOrder"]["order"]["customer"]["name"] == chinese
    assert errors == []


def test_other_customer_and_order_text(
    service: RunningService, watch_errors: Callable[[], list[Any]]
) -> None:
    errors = watch_errors()
    client = service.client
    # Digits of other scripts, which str.isdigit() and a bare \d accept (valid in ASCII).
    fullwidth = "13" + "".join(chr(0xFF10 + int(d)) for d in "812345678")
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in "11010519491231002") + "X"
    cases: list[tuple[dict[str, Any], str, list[str]]] = [
        (
            {"customer": {"name": "Li", "phone": "138" + " " * 4000 + "12345678"}},
            "INVALID_PHONE",
            ["customer", "phone"],
        ),
        (
            {"customer": {"name": "Li", "phone": fullwidth}},
            "INVALID_PHONE",
            ["customer", "phone"],
        ),
        (
            {"customer": {"name": "Li", "phone": f"138{LONE}12345678"}},
            "INVALID_PHONE",
            ["customer", "phone"],
        ),
        (
            {
                "customer": {
                    "name": "Li",
                    "phone": "13812345678",
                    "idCardNumber": arabic_indic,
                }
            },
            "INVALID_ID_CARD",
            ["customer", "idCardNumber"],
        ),
        ({"idempotencyKey": f"key-{LONE}-0001"}, "INVALID_IDEMPOTENCY_KEY", ["idempotencyKey"]),
        ({"branch": "z" * 5000}, "UNKNOWN_BRANCH", ["branch"]),
        ({"branch": f"zj{LONE}"}, "UNKNOWN_BRANCH", ["branch"]),
        (
            {
                "items": [
                    {
                        "offeringId": offering_id("zj-handset-iphone17"),
                        "options": [{"name": "colour", "value": LONE}],
                    }
                ]
            },
            "UNKNOWN_OPTION",
            ["items", "0", "options"],
        ),
        (
            {
                "items": [
                    {
                        "offeringId": offering_id("zj-handset-iphone17"),
                        "options": [{"name": "c" * 65, "value": "x"}],
                    }
                ]
            },
            "UNKNOWN_OPTION",
            ["items", "0", "options"],
        ),
    ]
    for number, (overrides, code, field) in enumerate(cases):
        overrides.setdefault("idempotencyKey", f"other-case-{number:04d}")
        body = post(client, CREATE, {"input": order_input(**overrides)})
        found = user_errors(body, "createOrder")
        assert (found[0]["code"], found[0]["field"]) == (code, field), (overrides, found)
        assert len(found[0]["message"]) < 200, found
    assert service.db.orders.count_documents({}) == 0
    catalog = post(client, "query($b: String!) { catalog(branch: $b) { id } }", {"b": "z" * 4000})
    assert top_level_codes(catalog) == ["BAD_USER_INPUT"]
    assert len(catalog["errors"][0]["message"]) < 100
    assert errors == []


def test_cancel_reason(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    order = client.data(CREATE, {"input": order_input()})["createOrder"]["order"]
    stored_before = service.db.orders.find_one({})
    cases = {
        "one over the limit": "r" * (CANCEL_REASON.max_chars + 1),
        "900 KB": "r" * 900_000,
        "NUL": "changed\x00mind",
        "lone surrogate": f"changed {LONE} mind",
    }
    for what, reason in cases.items():
        body = post(client, CANCEL, {"input": {"orderId": order["id"], "reason": reason}})
        [error] = user_errors(body, "cancelOrder")
        assert (error["code"], error["field"]) == ("INVALID_REASON", ["reason"]), what
        assert body["data"]["cancelOrder"]["order"] is None
    for reason in (f"changed {LONE} mind", "changed\x00mind"):
        document = (
            "mutation { cancelOrder(input: {orderId: "
            + literal(order["id"])
            + ", reason: "
            + literal(reason)
            + "}) { order { id } userErrors { field message code } } }"
        )
        assert_refused(post(client, document), "cancelOrder", "INVALID_REASON")
    assert service.db.orders.find_one({}) == stored_before
    reason = ("changed my mind\n\tbecause " + "r" * 200)[: CANCEL_REASON.max_chars]
    done = post(client, CANCEL, {"input": {"orderId": order["id"], "reason": reason}})
    assert done["data"]["cancelOrder"] == {
        "order": {"id": order["id"], "status": "CANCELLED"},
        "userErrors": [],
    }
    assert service.db.orders.find_one({})["statusHistory"][-1]["reason"] == reason
    assert errors == []


def test_refund_reason(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    cases = {
        "one over the limit": "r" * (REFUND_REASON.max_chars + 1),
        "NUL": "damaged\x00box",
        "lone surrogate": f"damaged {LONE} box",
    }
    for number, (what, reason) in enumerate(cases.items()):
        refund = {
            "paymentId": MISSING_PAYMENT,
            "amountFen": 100,
            "reason": reason,
            "idempotencyKey": f"refund-reason-{number:04d}",
        }
        [error] = user_errors(post(client, REFUND, {"input": refund}), "refundPayment")
        assert (error["code"], error["field"]) == ("INVALID_REASON", ["reason"]), what
    for reason in (f"damaged {LONE} box", "damaged\x00box"):
        document = (
            "mutation { refundPayment(input: {paymentId: "
            + literal(MISSING_PAYMENT)
            + ', amountFen: 100, idempotencyKey: "refund-literal-0001", reason: '
            + literal(reason)
            + "}) { userErrors { code } } }"
        )
        assert_refused(post(client, document), "refundPayment", "INVALID_REASON")
    fine = {
        "paymentId": MISSING_PAYMENT,
        "amountFen": 100,
        "reason": "damaged box\nreturned",
        "idempotencyKey": "refund-reason-fine",
    }
    [error] = user_errors(post(client, REFUND, {"input": fine}), "refundPayment")
    assert error["code"] == "PAYMENT_NOT_FOUND"
    assert service.db.refund_requests.count_documents({}) == 0
    assert service.db.audit_log.count_documents({}) == 0
    assert errors == []


def test_return_url(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    order = client.data(CREATE, {"input": order_input()})["createOrder"]["order"]
    for url in (
        "https://shop.example/" + "a" * RETURN_URL.max_chars,
        "http://[::1",
        f"https://shop{LONE}.example/done",
        "https://shop.example/\x00done",
        "javascript:alert(1)",
        "https:///no-host",
    ):
        start = {"orderId": order["id"], "provider": "sandbox", "method": "PAGE", "returnUrl": url}
        [error] = user_errors(post(client, START, {"input": start}), "startPayment")
        assert (error["code"], error["field"]) == ("INVALID_RETURN_URL", ["returnUrl"]), url
    long_provider = {"orderId": order["id"], "provider": "p" * 4000, "method": "PAGE"}
    [error] = user_errors(post(client, START, {"input": long_provider}), "startPayment")
    assert error["code"] == "PROVIDER_NOT_ENABLED" and len(error["message"]) < 200
    assert service.db.payments.count_documents({}) == 0
    assert errors == []


def test_order_filter(service: RunningService, watch_errors: Callable[[], list[Any]]) -> None:
    errors = watch_errors()
    client = service.client
    for what, condition, named in (
        ("phone, lone surrogate", {"customerPhone": f"138{LONE}12345678"}, "customerPhone"),
        ("phone, NUL", {"customerPhone": "13812345678\x00"}, "customerPhone"),
        ("phone, too long", {"customerPhone": "1" * 33}, "customerPhone"),
        ("branch, lone surrogate", {"branches": [f"zj{LONE}"]}, "filter.branches[0]"),
        ("branch, NUL", {"branches": ["zj", "bj\x00"]}, "filter.branches[1]"),
        ("branch, too long", {"branches": ["z" * 9]}, "filter.branches[0]"),
    ):
        body = post(client, BY_FILTER, {"f": condition})
        assert top_level_codes(body) == ["BAD_USER_INPUT"], (what, body)
        assert named in body["errors"][0]["message"], (what, body)
    for condition in (
        "{customerPhone: " + literal(f"138{LONE}12345678") + "}",
        "{branches: [" + literal(f"zj{LONE}") + "]}",
        "{branches: [" + literal("zj\x00") + "]}",
    ):
        body = post(client, "{ orders(filter: " + condition + ") { totalCount } }")
        assert top_level_codes(body) == ["BAD_USER_INPUT"], (condition, body)
    assert (
        client.data(BY_FILTER, {"f": {"branches": ["zj", "nosuch"]}})["orders"]["totalCount"] == 0
    )
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
