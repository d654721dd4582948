"""Order.paymentOptions and startPayment agree on which (provider, method) can pay an order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.services.conftest import PayService

OPTIONS = """
query($id: ID!) {
  order(id: $id) {
    paymentOptions(payerIdKnown: false) {
      provider displayName method available reason detail needs
    }
  }
}
"""

# Hebei takes sandbox payments by QR code and on the page only, top-ups by QR code only,
# and up to 100 yuan.
HEBEI = """
[branches.he]
name = "China Telecom Hebei"
province = "Hebei"
operator = "China Telecom"

[branches.he.providers.sandbox]
enabled = true
gateway = "{gateway}"
secret = {{ file = "sandbox.key" }}
methods = ["PAGE", "QR_CODE"]
methods_by_kind = {{ TOP_UP = ["QR_CODE"] }}
max_amount_fen = 10000
"""


def options(service: PayService, order_id: str) -> dict[str, dict[str, Any]]:
    found = service.client.data(OPTIONS, {"id": order_id})["order"]["paymentOptions"]
    return {f"{o['provider']}/{o['method']}": o for o in found}


def start_codes(service: PayService, order_id: str, method: str) -> list[str]:
    errors = service.start_payment(order_id, method=method)["userErrors"]
    return [error["code"] for error in errors]


def start_service(start_payments: Callable[..., PayService]) -> PayService:
    service = start_payments(seed_branches=("zj", "bj", "yn", "he"))
    text = service.plugins_toml.read_text()
    service.plugins_toml.write_text(text + HEBEI.format(gateway=service.gateway_url))
    # Wait for the reload: Hebei appears among the branches.
    service.wait_for_branch("he")
    return service


def test_every_method_of_an_enabled_provider_is_available_for_a_plain_order(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    found = options(service, order["id"])
    assert found, "the branch's provider is listed"
    assert all(o["available"] and o["reason"] is None for o in found.values()), found
    assert found["sandbox/PAGE"]["displayName"]


def test_a_disabled_provider_is_listed_unavailable_and_start_payment_refuses_it(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    service.set_enabled("zj", enabled=False)
    found = options(service, order["id"])
    assert {o["reason"] for o in found.values()} == {"PROVIDER_DISABLED"}
    assert not any(o["available"] for o in found.values())
    assert start_codes(service, order["id"], "PAGE") == ["PROVIDER_NOT_ENABLED"]


def test_methods_kinds_and_amounts_of_the_branch_table_give_their_reasons(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_service(start_payments)
    plan = service.create_order("he", "he-plan-59")
    found = options(service, plan["id"])
    assert found["sandbox/PAGE"]["available"] and found["sandbox/QR_CODE"]["available"]
    assert found["sandbox/WAP"]["reason"] == "METHOD_NOT_OFFERED"
    assert "PAGE, QR_CODE" in found["sandbox/WAP"]["detail"]
    assert start_codes(service, plan["id"], "WAP") == ["METHOD_NOT_OFFERED"]

    top_up = service.create_order("he", "he-topup-50")
    found = options(service, top_up["id"])
    assert found["sandbox/QR_CODE"]["available"]
    assert found["sandbox/PAGE"]["reason"] == "METHOD_NOT_FOR_OFFERING"
    assert start_codes(service, top_up["id"], "PAGE") == ["METHOD_NOT_OFFERED"]
    assert not start_codes(service, top_up["id"], "QR_CODE")

    dear = service.create_order("he", "he-plan-129")
    found = options(service, dear["id"])
    assert found["sandbox/PAGE"]["reason"] == "AMOUNT_OUT_OF_LIMITS"
    assert "12900 fen" in found["sandbox/PAGE"]["detail"]
    assert start_codes(service, dear["id"], "PAGE") == ["AMOUNT_OUT_OF_LIMITS"]
    # Nothing was written for the refusals: the only attempt is the QR code's.
    assert service.db.payments.count_documents({"branch": "he"}) == 1
