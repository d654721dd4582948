"""The partner storefront at /demo in a real browser on a network limited to loopback.

A person's path (issue 17, item 1): a branch's catalog by kind, a customer, an
order created once however often the button is pressed, a payment through the
sandbox simulator's own pay page, and PAID shown live over ``orderEvents``.
Also a QR_CODE payment's image from our origin, a cancellation, customer input
shown as text, and no /demo at all with demo pages off (issue 19, item 2).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import RunningService
from tests.pages.conftest import OfflinePage
from tests.pages.test_graphiql import ALLOWED_SOURCES, assert_only_own_origin, policy
from tests.services.conftest import PayService, PayServices

# Each step waits on the API (and a loaded machine runs several suites): more than 5 s.
STEP = 20_000
ORDERS_OF = """
query($branches: [String!]) {
  orders(filter: { branches: $branches }) {
    totalCount
    edges { node { id status customer { name } payments { status providerTradeNo } } }
  }
}
"""


@pytest.fixture
def storefront(tmp_path: Path, mongo_uri: str, db_name: str) -> Iterator[Callable[..., PayService]]:
    """branchpay in demo-pages mode beside a sandbox simulator, both on loopback."""
    services = PayServices(tmp_path, mongo_uri, db_name)
    yield lambda **settings: services.start(demo_pages=True, **settings)
    services.stop()


def open_storefront(
    offline_page: OfflinePage, service: PayService, form_origins: tuple[str, ...] = ()
) -> Page:
    page = offline_page.page
    response = page.goto(f"{service.url}/demo")
    assert response is not None
    assert response.status == 200
    if form_origins:
        # Only form-action widens, by the gateways' origins; the rest is the own origin's.
        directives = policy(response)
        assert directives["form-action"] == ["'self'", *form_origins]
        assert directives["script-src"] == directives["connect-src"] == ["'self'"]
        for name, sources in directives.items():
            allowed = ALLOWED_SOURCES | set(form_origins if name == "form-action" else ())
            assert all(s in allowed or s.startswith("'nonce-") for s in sources), name
    else:
        assert_only_own_origin(response)
    expect(page.locator("#branch")).to_contain_text("China Mobile Zhejiang", timeout=STEP)
    return page


def choose_and_order(page: Page, kind: str, title: str, name: str, *, double: bool = False) -> None:
    page.get_by_role("button", name=kind, exact=True).click()
    card = page.locator(".offering", has=page.get_by_role("heading", name=title, exact=True))
    card.get_by_role("button", name="Choose").click()
    page.fill("#customer-name", name)
    page.fill("#customer-phone", "13812345678")
    page.fill("#customer-id", "33010619900101123X")
    if double:
        page.dblclick("#create-order")
    else:
        page.click("#create-order")
    expect(page.locator("#order-status")).to_have_text("PENDING_PAYMENT", timeout=STEP)
    # The current state comes first over the subscription: the page follows the order.
    expect(page.locator("#live")).to_contain_text("Following the order live", timeout=STEP)


def assert_clean(offline_page: OfflinePage, service: PayService) -> None:
    assert offline_page.blocked == [], "the page asked for something beyond loopback"
    assert offline_page.csp_violations() == []
    assert offline_page.console_errors == []
    # Our origin (its WebSocket included), and the simulator's pay page when it was opened.
    socket = service.url.replace("http://", "ws://", 1)
    own = [u for u in offline_page.requested if not u.startswith(("data:", service.gateway_url))]
    assert own and all(url.startswith((service.url, socket)) for url in own), own
    assert f"{socket}/graphql" in own


def test_a_person_orders_a_handset_pays_on_the_sandbox_page_and_sees_paid_live(
    storefront: Callable[..., PayService], offline_page: OfflinePage, screenshots: Path
) -> None:
    service = storefront()
    page = offline_page.page
    page.set_viewport_size({"width": 1100, "height": 900})
    page = open_storefront(offline_page, service)

    # Numbers first, the premium ones marked.
    offerings = page.locator("#offerings .offering")
    expect(offerings.first).to_be_visible(timeout=STEP)
    expect(page.locator("#offerings .mark").first).to_have_text("Premium", timeout=STEP)
    expect(page.locator("#offerings")).to_contain_text("¥888.00", timeout=STEP)
    page.screenshot(path=str(screenshots / "demo-catalog.png"), full_page=False)

    page.get_by_role("button", name="Plans", exact=True).click()
    expect(page.locator("#offerings")).to_contain_text("¥59.00", timeout=STEP)
    page.get_by_role("button", name="Top-ups", exact=True).click()
    expect(page.locator("#offerings")).to_contain_text("Top-up", timeout=STEP)
    page.get_by_role("button", name="Handsets", exact=True).click()
    # Options with their price deltas.
    expect(page.locator("#offerings")).to_contain_text(
        "storage: 256GB, 512GB (+¥1000.00)", timeout=STEP
    )
    handset = page.locator("#offerings .offering").first
    title = handset.locator("h3").inner_text()
    base_price = handset.locator(".price").inner_text()

    handset.get_by_role("button", name="Choose").click()
    storage = page.locator("#option-storage")
    # A choice with a price delta changes the total shown.
    pricier = storage.locator("option").filter(has_text="(+").first
    storage.select_option(label=pricier.inner_text())
    expect(page.locator("#checkout-total")).not_to_have_text(base_price, timeout=STEP)
    page.fill("#customer-name", "Li Wei")
    page.fill("#customer-phone", "13812345678")
    page.fill("#customer-id", "33010619900101123X")
    page.dblclick("#create-order")
    expect(page.locator("#order-status")).to_have_text("PENDING_PAYMENT", timeout=STEP)
    expect(page.locator("#order-items")).to_contain_text(title, timeout=STEP)
    expect(page.locator("#order-customer")).to_contain_text("138****5678", timeout=STEP)

    # A double click made one order, seen through the API.
    orders = service.client.data(ORDERS_OF, {"branches": ["zj"]})["orders"]
    assert orders["totalCount"] == 1
    order_id = orders["edges"][0]["node"]["id"]
    expect(page.locator("#order-id")).to_have_text(order_id, timeout=STEP)
    assert order_id in page.url

    page.select_option("#provider", "sandbox")
    page.select_option("#method", "PAGE")
    page.click("#pay")
    with page.expect_popup() as opened:
        page.click("#go-pay")
    gateway = opened.value
    expect(gateway.locator("body")).to_contain_text("Sandbox payment", timeout=STEP)
    assert gateway.url.startswith(service.gateway_url)
    gateway.get_by_role("button", name="Pay").click()
    expect(gateway.locator("body")).to_contain_text("Payment succeeded", timeout=STEP)

    # The storefront, left open, shows PAID as it happens, with the payment's details.
    expect(page.locator("#order-status")).to_have_text("PAID", timeout=STEP)
    payment = page.locator("#payments .payment")
    expect(payment).to_have_count(1, timeout=STEP)
    expect(payment).to_contain_text("SUCCEEDED", timeout=STEP)
    expect(payment).to_contain_text("via sandbox (PAGE)", timeout=STEP)
    seen = service.client.data(ORDERS_OF, {"branches": ["zj"]})["orders"]["edges"][0]["node"]
    assert seen["status"] == "PAID"
    provider_trade_no = seen["payments"][0]["providerTradeNo"]
    assert provider_trade_no
    expect(payment).to_contain_text(provider_trade_no, timeout=STEP)
    expect(page.locator("#pay-controls")).to_be_hidden(timeout=STEP)
    page.screenshot(path=str(screenshots / "demo-paid.png"), full_page=True)
    assert_clean(offline_page, service)


def test_a_qr_code_payment_shows_an_image_from_our_origin_and_cancel_shows_cancelled(
    storefront: Callable[..., PayService], offline_page: OfflinePage
) -> None:
    service = storefront()
    page = open_storefront(offline_page, service)
    choose_and_order(page, "Top-ups", "Top-up 50 yuan", "Zhang San")
    page.select_option("#provider", "sandbox")
    page.select_option("#method", "QR_CODE")
    page.click("#pay")
    qr = page.locator("#qr")
    expect(qr).to_be_visible(timeout=STEP)
    src = qr.get_attribute("src")
    assert src is not None and src.startswith("/demo/qr.svg?text=")
    # The image loaded (from our origin: anything else is blocked and refused by the CSP).
    page.wait_for_function("document.getElementById('qr').complete", timeout=STEP)
    assert page.evaluate("document.getElementById('qr').naturalWidth") > 0
    assert any(url.startswith(f"{service.url}/demo/qr.svg") for url in offline_page.requested)
    expect(page.locator("#payments .payment")).to_contain_text("PENDING", timeout=STEP)

    page.click("#cancel")
    expect(page.locator("#order-status")).to_have_text("CANCELLED", timeout=STEP)
    expect(page.locator("#order-reason")).to_have_text(
        "(cancelled in the storefront)", timeout=STEP
    )
    expect(page.locator("#pay-controls")).to_be_hidden(timeout=STEP)
    expect(page.locator("#qr")).to_have_count(0, timeout=STEP)
    assert_clean(offline_page, service)


def test_a_customer_name_with_markup_is_shown_as_text(
    storefront: Callable[..., PayService], offline_page: OfflinePage
) -> None:
    service = storefront()
    page = open_storefront(offline_page, service)
    name = "<script>window.pwned=1</script><img src=x onerror=pwned=2>"
    choose_and_order(page, "Plans", "5G Smart 59", name)
    expect(page.locator("#order-customer")).to_contain_text(name, timeout=STEP)
    assert page.locator("#order-customer *").count() == 0
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.pwned") is None
    nodes = service.client.data(ORDERS_OF, {"branches": ["zj"]})["orders"]["edges"]
    assert [n["node"]["customer"]["name"] for n in nodes] == [name]
    assert_clean(offline_page, service)


def test_the_storefront_fits_a_phone_and_resumes_an_order_from_its_address(
    storefront: Callable[..., PayService], offline_page: OfflinePage
) -> None:
    service = storefront()
    page = offline_page.page
    page.set_viewport_size({"width": 390, "height": 844})
    page = open_storefront(offline_page, service)
    expect(page.locator("#offerings .offering").first).to_be_visible(timeout=STEP)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    choose_and_order(page, "Handsets", "Huawei Mate 70", "Wang Fang")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # Back from a payment page (the returnUrl is this address): the order is shown again.
    page.reload()
    expect(page.locator("#order-status")).to_have_text("PENDING_PAYMENT", timeout=STEP)
    expect(page.locator("#order-customer")).to_contain_text("Wang Fang", timeout=STEP)
    assert_clean(offline_page, service)


def test_without_demo_pages_there_is_no_storefront(
    start_service: Any, offline_page: OfflinePage
) -> None:
    service: RunningService = start_service()
    response = offline_page.page.goto(f"{service.url}/demo")
    assert response is not None
    assert response.status == 404
    for path in ("/demo/session", "/demo/qr.svg?text=x", "/assets/demo/storefront.js"):
        status = httpx.get(f"{service.url}{path}").status_code
        assert status == (200 if path.startswith("/assets") else 404), path
    assert offline_page.blocked == []


def unionpay_toml(secrets_dir: Path, gateway: str) -> str:
    """Zhejiang also enables UnionPay, whose PAGE payment is a FORM_POST."""
    from providers.unionpay import demo

    files = {
        "sign_cert": demo.MERCHANT_CERT,
        "sign_cert_private_key": demo.MERCHANT_KEY,
        "middle_cert": demo.MIDDLE_CERT,
        "root_cert": demo.ROOT_CERT,
    }
    lines = [
        "",
        "[branches.zj.providers.unionpay]",
        "enabled = true",
        f'mer_id = "{demo.DEMO_MER_ID}"',
        *(f'{name} = {{ file = "{secrets_dir / file}" }}' for name, file in files.items()),
        f'gateway = "{gateway}"',
        f'file_transfer = "{gateway}"',
    ]
    return "\n".join(lines) + "\n"


def test_a_form_post_payment_posts_to_the_gateway_named_by_form_action_and_turns_paid(
    storefront: Callable[..., PayService], offline_page: OfflinePage, tmp_path: Path
) -> None:
    from providers.kit.loopback import LoopbackServer
    from providers.unionpay import demo

    secrets_dir = tmp_path / "unionpay"
    secrets_dir.mkdir()
    demo.ensure_demo_keys(secrets_dir)
    with LoopbackServer(demo.demo_simulator(secrets_dir)) as unionpay:
        service = storefront(
            extra_toml=unionpay_toml(secrets_dir, unionpay.url),
            demo_form_origins=[unionpay.url],
        )
        page = open_storefront(offline_page, service, (unionpay.url,))
        choose_and_order(page, "Plans", "5G Basic 39", "Chen Jing")
        page.select_option("#provider", "unionpay")
        page.select_option("#method", "PAGE")
        page.click("#pay")
        form = page.locator("#gateway-form")
        expect(form).to_have_attribute(
            "action", f"{unionpay.url}/gateway/api/frontTransReq.do", timeout=STEP
        )
        # The gateway's fields were copied over; its own markup was not inserted.
        assert form.locator("input[type=hidden]").count() > 5
        assert page.locator("#action script").count() == 0
        with page.expect_popup() as opened:
            form.get_by_role("button", name="Continue to the payment page").click()
        gateway = opened.value
        expect(gateway.locator("body")).to_contain_text("UnionPay simulator", timeout=STEP)
        gateway.get_by_role("button", name="Pay").click()
        expect(page.locator("#order-status")).to_have_text("PAID", timeout=STEP)
        expect(page.locator("#payments .payment")).to_contain_text(
            "via unionpay (PAGE)", timeout=STEP
        )
        assert offline_page.blocked == []
        assert offline_page.csp_violations() == []
        assert offline_page.console_errors == []


def test_an_app_payment_shows_its_payload_and_expiry_is_shown_as_it_happens(
    storefront: Callable[..., PayService], offline_page: OfflinePage
) -> None:
    service = storefront(expiry_interval_seconds=0.5)
    page = open_storefront(offline_page, service)
    choose_and_order(page, "Top-ups", "Top-up 30 yuan", "Zhao Lei")
    page.select_option("#provider", "sandbox")
    page.select_option("#method", "APP")
    page.click("#pay")
    payload = page.locator("#app-payload")
    expect(payload).to_contain_text('"amount_fen":3000', timeout=STEP)
    expect(payload).to_contain_text('"signature":', timeout=STEP)

    # The order's time runs out (moved forward in the store): the page shows it at once.
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert service.db.orders.update_many({}, {"$set": {"expiresAt": past}}).modified_count == 1
    expect(page.locator("#order-status")).to_have_text("EXPIRED", timeout=STEP)
    expect(page.locator("#pay-controls")).to_be_hidden(timeout=STEP)
    expect(page.locator("#app-payload")).to_have_count(0, timeout=STEP)
    assert_clean(offline_page, service)


def test_a_counter_sale_by_payment_code_is_paid_and_unusable_methods_say_why(
    storefront: Callable[..., PayService], offline_page: OfflinePage
) -> None:
    # Zhejiang takes sandbox payments by every method but APP (plugins.toml's `methods`).
    service = storefront()
    text = service.plugins_toml.read_text()
    service.plugins_toml.write_text(
        text.replace(
            "[branches.zj.providers.sandbox]\nenabled = true\n",
            "[branches.zj.providers.sandbox]\nenabled = true\n"
            'methods = ["PAGE", "WAP", "QR_CODE", "PAYMENT_CODE"]\n',
        )
    )
    wait_for_methods = 'query { branch(code: "zj") { providers { methods } } }'
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while datetime.now(UTC) < deadline:
        methods = service.client.data(wait_for_methods)["branch"]["providers"][0]["methods"]
        if "APP" not in methods:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the service did not reload plugins.toml")
    page = open_storefront(offline_page, service)
    choose_and_order(page, "Plans", "5G Smart 59", "Wang Fang")

    # APP is listed but disabled, with the reason in words; no button that would fail.
    app = page.locator("#method option[value=APP]")
    expect(app).to_be_disabled(timeout=STEP)
    expect(app).to_contain_text("the branch offers sandbox by PAGE, WAP, QR_CODE, PAYMENT_CODE")
    expect(page.locator("#auth-code-field")).to_be_hidden()
    page.select_option("#method", "PAYMENT_CODE")
    expect(page.locator("#auth-code-field")).to_be_visible()
    page.fill("#auth-code", "99" + "1" * 15 + "1")  # a sandbox code the payer pays at once
    page.click("#pay")
    expect(page.locator("#order-status")).to_have_text("PAID", timeout=STEP)
    expect(page.locator("#payments")).to_contain_text("via sandbox (PAYMENT_CODE)")
    # The one-time code is not kept on the page.
    expect(page.locator("#auth-code")).to_have_value("")
    assert_clean(offline_page, service)
