"""startPayment over HTTP: the refusals, and a platform that fails while opening the attempt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from providers.wechatpay import demo as wechatpay_demo
from tests.services.conftest import CANCEL_ORDER, PayService

# WeChat Pay has no desktop PAGE method; its keys are made per test by the demo module.
WECHATPAY_TOML = f"""
[branches.zj.providers.wechatpay]
enabled = true
mchid = "{wechatpay_demo.DEMO_MCHID}"
appid = "{wechatpay_demo.DEMO_APPID}"
private_key = {{ file = "secrets/{wechatpay_demo.MERCHANT_KEY_FILE}" }}
cert_serial_no = "{wechatpay_demo.DEMO_CERT_SERIAL_NO}"
apiv3_key = {{ file = "secrets/{wechatpay_demo.APIV3_KEY_FILE}" }}
platform_public_key = {{ file = "secrets/{wechatpay_demo.PLATFORM_PUBLIC_FILE}" }}
platform_public_key_id = "{wechatpay_demo.DEMO_PLATFORM_PUBLIC_KEY_ID}"
gateway = "http://127.0.0.1:9"
"""


def codes(payload: dict[str, object]) -> list[str]:
    return [e["code"] for e in payload["userErrors"]]  # type: ignore[attr-defined, index]


def test_a_provider_the_branch_does_not_enable_is_refused_naming_the_enabled_ones(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    zj_order = service.create_order()
    refused = service.start_payment(zj_order["id"], provider="alipay")
    assert codes(refused) == ["PROVIDER_NOT_ENABLED"]
    assert "enabled: sandbox" in refused["userErrors"][0]["message"]
    assert refused["payment"] is None and refused["action"] is None

    yn_order = service.create_order(branch="yn", offering="yn-plan-59")
    refused = service.start_payment(yn_order["id"])
    assert codes(refused) == ["PROVIDER_NOT_ENABLED"]
    assert "enabled: none" in refused["userErrors"][0]["message"]
    assert service.db.payments.count_documents({}) == 0


def test_a_method_the_provider_does_not_support_is_refused(
    start_payments: Callable[..., PayService], tmp_path: Path
) -> None:
    wechatpay_demo.ensure_demo_keys(tmp_path / "secrets")
    service = start_payments(extra_toml=WECHATPAY_TOML)
    order = service.create_order()

    refused = service.start_payment(order["id"], provider="wechatpay", method="PAGE")

    assert codes(refused) == ["METHOD_NOT_SUPPORTED"]
    assert "QR_CODE, WAP, APP" in refused["userErrors"][0]["message"]
    assert service.db.payments.count_documents({}) == 0


def test_an_order_not_awaiting_payment_cannot_be_paid(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    service.client.data(CANCEL_ORDER, {"input": {"orderId": order["id"]}})
    assert codes(service.start_payment(order["id"])) == ["ORDER_NOT_PAYABLE"]
    assert codes(service.start_payment("not-an-id")) == ["INVALID_ID"]
    assert service.db.payments.count_documents({}) == 0


def test_a_platform_refusal_stores_the_attempt_failed(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    httpx.post(f"{service.gateway_url}/control/faults", json={"status": 400, "count": 1})

    refused = service.start_payment(order["id"])

    assert codes(refused) == ["PROVIDER_UNAVAILABLE"]
    assert [p["status"] for p in service.order(order["id"])["payments"]] == ["FAILED"]
    # The order still awaits payment and a new attempt opens.
    retried = service.start_payment(order["id"])
    assert retried["userErrors"] == [] and retried["payment"]["status"] == "PENDING"


def test_a_platform_that_may_have_opened_the_attempt_leaves_it_pending(
    start_payments: Callable[..., PayService],
) -> None:
    service = start_payments()
    order = service.create_order()
    httpx.post(f"{service.gateway_url}/control/faults", json={"status": 503, "count": 1})

    refused = service.start_payment(order["id"])

    assert codes(refused) == ["PROVIDER_UNAVAILABLE"]
    payments = service.order(order["id"])["payments"]
    assert [p["status"] for p in payments] == ["PENDING"]  # for reconciliation, never guessed
    assert service.order(order["id"])["status"] == "PENDING_PAYMENT"
