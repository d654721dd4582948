"""The branch admin console at /admin in a real browser, with only loopback reachable.

A Zhejiang branch_admin signs in by pasting a key: sees Zhejiang's orders and
not Beijing's, refunds part of a paid order and sees the refund, switches the
sandbox provider off (plugins.toml keeps its comments; the branch stops
offering it after the reload); user input (a customer name, a refund reason)
is shown as text. With config editing off the console names the command; a
partner key sees no admin data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.config.test_live_reload import eventually
from tests.conftest import RunningService, issue_key
from tests.pages.conftest import OfflinePage
from tests.pages.test_graphiql import assert_only_own_origin
from tests.schema.test_bills import TODAY, discrepancy, reconciliation
from tests.services.conftest import (
    CREATE_ORDER,
    PayService,
    Receiver,
    create_endpoint,
    offering_id,
    receiver,  # noqa: F401 (a fixture)
    start_payments,  # noqa: F401 (a fixture)
    webhook_service,
)

ROOT = Path(__file__).parents[2]
SCRIPT_NAME = "<script>window.__injected = 1</script>Wang"
SCRIPT_REASON = '<img src=x onerror="window.__injected = 2">broken SIM'
KEPT_COMMENT = "# A comment of the branch's own: the console's edit keeps it.\n"
ZJ_PROVIDERS = '{ branch(code: "zj") { providers { name } } }'
PHONE_WIDTH = {"width": 390, "height": 844}


def paid_order(service: PayService, branch: str, customer: str) -> dict[str, Any]:
    order = service.client.data(
        CREATE_ORDER,
        {
            "input": {
                "branch": branch,
                "items": [{"offeringId": offering_id(f"{branch}-plan-59"), "quantity": 1}],
                "customer": {"name": customer, "phone": "13912345678"},
                "idempotencyKey": f"order-{uuid.uuid4().hex}",
            }
        },
    )["createOrder"]["order"]
    payment = service.start_payment(order["id"])["payment"]
    assert service.deliver(service.settle(payment["outTradeNo"]), branch).status_code == 200
    return {"order": order, "payment": payment}


def sign_in(page: Page, url: str, key: str) -> None:
    response = page.goto(f"{url}/admin")
    assert response is not None and response.status == 200
    assert_only_own_origin(response)
    expect(page.locator("#notice")).to_contain_text("Paste an API key")
    page.fill("#api-key", key)
    page.click("#sign-in-button")


def assert_clean(tab: OfflinePage) -> None:
    assert tab.blocked == []
    assert tab.csp_violations() == []
    assert tab.console_errors == []
    assert tab.page.evaluate("window.__injected") is None


def test_a_zhejiang_admin_sees_its_orders_refunds_part_of_one_and_switches_sandbox_off(
    start_payments: Callable[..., PayService],  # noqa: F811 (the fixture)
    offline_page: OfflinePage,
    screenshots: Path,
) -> None:
    service = start_payments(KEPT_COMMENT, config_editing=True, demo_pages=True)
    zj = paid_order(service, "zj", SCRIPT_NAME)
    paid_order(service, "bj", "Beijing Customer")
    key = issue_key(service.db, "branch_admin", ["zj"])
    # An admin action of Beijing's, which Zhejiang's admin must not see.
    service.db.audit_log.insert_one(
        {
            "at": datetime.now(UTC),
            "actor": "bj-admin",
            "action": "PROVIDER_DISABLED",
            "target": "alipay",
            "branch": "bj",
            "detail": {},
        }
    )
    page = offline_page.page
    page.set_viewport_size(PHONE_WIDTH)

    sign_in(page, service.url, key)

    expect(page.locator("#who")).to_contain_text("a key for zj")
    expect(page.locator("#sign-in")).to_be_hidden()
    # The key is not shown again and lives in this tab's sessionStorage only.
    expect(page.locator("#api-key")).to_have_value("")
    assert page.evaluate("Object.values(sessionStorage)") == [key]
    assert page.evaluate("localStorage.length") == 0
    assert key not in page.content()

    rows = page.locator("#orders-table tbody tr")
    expect(rows).to_have_count(1)
    expect(page.locator("#orders-count")).to_contain_text("1 order matches; 1 shown")
    # The name is shown as the text it is; no element was made of it.
    expect(rows.first.locator(".customer")).to_have_text(SCRIPT_NAME)
    assert page.locator("#orders-table script").count() == 0
    expect(page.locator("#orders-table")).not_to_contain_text("Beijing Customer")
    expect(page.locator("#config-status")).to_contain_text("in force")
    zj_block = page.locator('article.branch[data-branch="zj"]')
    expect(zj_block).to_contain_text("sandbox")
    expect(zj_block).to_contain_text("PAGE")
    # The audit log shows Zhejiang's entries only: none yet, Beijing's is not shown.
    expect(page.locator("#audit-log")).not_to_contain_text("bj-admin")

    # A partial refund of 12.50 of the order's 59.00, with a reason that looks like markup.
    rows.first.get_by_role("button", name="Open").click()
    detail = page.locator("#order-detail")
    expect(detail).to_contain_text("SUCCEEDED")
    form = detail.locator(".refund-form")
    form.locator('input[name="amount"]').fill("12.50")
    form.locator('input[name="reason"]').fill(SCRIPT_REASON)
    form.get_by_role("button", name="Refund").click()
    expect(detail.locator(".order-status")).to_have_text("PARTIALLY_REFUNDED", timeout=15_000)
    refund_row = detail.locator(".payment table tbody tr")
    expect(refund_row).to_have_count(1)
    expect(refund_row).to_contain_text("¥12.50")
    expect(refund_row).to_contain_text(SCRIPT_REASON)
    assert detail.locator("img").count() == 0
    refunds = service.order(zj["order"]["id"])["payments"][0]["refunds"]
    assert [r["amount"]["amountFen"] for r in refunds] == [1250]
    page.set_viewport_size({"width": 1100, "height": 900})
    page.screenshot(path=str(screenshots / "admin-console.png"), full_page=True)

    # Sandbox off, from the console: the file keeps its comments, the reload applies it.
    zj_block.locator('button[data-provider="sandbox"]').click()
    expect(zj_block.locator(".note")).to_contain_text("sandbox disabled in plugins.toml")
    # The switch is in the audit log under the key's name; Beijing's entry still is not.
    audit = page.locator("#audit-log")
    expect(audit).to_contain_text("PROVIDER_DISABLED")
    expect(audit).to_contain_text("sandbox")
    expect(audit).not_to_contain_text("bj-admin")
    text = service.plugins_toml.read_text()
    assert KEPT_COMMENT in text
    assert text.count("enabled = false") == 2  # Yunnan's already, and now Zhejiang's
    eventually(lambda: service.client.data(ZJ_PROVIDERS)["branch"]["providers"] == [], 3.0)
    # The console shows the branch as in force after the reload: sandbox off, to enable.
    expect(zj_block.locator('button[data-provider="sandbox"]')).to_have_text(
        "Enable", timeout=10_000
    )
    expect(zj_block.locator("td").nth(2)).to_have_text("disabled")
    assert_clean(offline_page)

    # The storefront no longer offers sandbox for a Zhejiang order awaiting payment.
    pending = service.client.data(
        CREATE_ORDER,
        {
            "input": {
                "branch": "zj",
                "items": [{"offeringId": offering_id("zj-plan-59"), "quantity": 1}],
                "customer": {"name": "Li Lei", "phone": "13912345678"},
                "idempotencyKey": f"order-{uuid.uuid4().hex}",
            }
        },
    )["createOrder"]["order"]
    shop = page.context.new_page()
    shop.goto(f"{service.url}/demo?order={pending['id']}")
    expect(shop.locator("#order-status")).to_have_text("PENDING_PAYMENT", timeout=20_000)
    expect(shop.locator("#pay-errors")).to_contain_text("enables no payment provider")
    assert shop.locator("#provider option").count() == 0
    shop.close()
    assert_clean(offline_page)

    # Signing out forgets the key.
    page.click("#sign-out")
    expect(page.locator("#notice")).to_contain_text("the key is forgotten")
    expect(page.locator("#console")).to_be_hidden()
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_orders_page_by_cursor_and_filter_by_status_and_beijing_dates(
    start_service: Any, offline_page: OfflinePage
) -> None:
    service: RunningService = start_service(orders=120)
    count = "query ($f: OrderFilter) { orders(filter: $f, first: 1) { totalCount } }"

    def total(**filter: Any) -> int:
        found: int = service.client.data(count, {"f": {"branches": ["zj"], **filter}})["orders"][
            "totalCount"
        ]
        return found

    zj_orders = total()
    assert zj_orders > 20, "the seed gives Zhejiang more than one page"
    page = offline_page.page
    sign_in(page, service.url, issue_key(service.db, "branch_admin", ["zj"]))

    rows = page.locator("#orders-table tbody tr")
    expect(rows).to_have_count(20)
    expect(page.locator("#orders-count")).to_have_text(f"{zj_orders} orders match; 20 shown.")
    page.click("#orders-more")
    expect(rows).to_have_count(min(40, zj_orders))
    branches = rows.locator("td:nth-child(2)").all_text_contents()
    assert set(branches) == {"zj"}
    ids = [row.get_attribute("data-order") for row in rows.all()]
    assert len(set(ids)) == len(ids), "no order twice across pages"

    page.select_option("#filter-status", "PAID")
    page.click("#filter-apply")
    paid = total(status=["PAID"])
    shown = min(paid, 20)
    matching = "1 order matches" if paid == 1 else f"{paid} orders match"
    expect(page.locator("#orders-count")).to_have_text(f"{matching}; {shown} shown.")
    assert set(rows.locator("td:nth-child(5)").all_text_contents()) <= {"PAID"}

    # From tomorrow (a Beijing day): nothing was created yet.
    tomorrow = page.evaluate(
        "new Intl.DateTimeFormat('sv-SE', {timeZone: 'Asia/Shanghai'})"
        ".format(new Date(Date.now() + 86400000))"
    )
    page.fill("#filter-from", tomorrow)
    page.click("#filter-apply")
    expect(page.locator("#orders-count")).to_have_text("0 orders match; 0 shown.")
    expect(page.locator("#orders-more")).to_be_hidden()
    assert_clean(offline_page)


def test_open_discrepancies_of_the_branch_are_listed_and_one_is_resolved_with_a_note(
    start_service: Any, offline_page: OfflinePage
) -> None:
    # Stored as api/store/bills.py stores a run's findings (as tests/schema/test_bills.py does).
    service: RunningService = start_service(bill_reconcile=False)
    zj = reconciliation("zj", TODAY - timedelta(days=1), openDiscrepancies=2)
    bj = reconciliation("bj", TODAY - timedelta(days=1), openDiscrepancies=1)
    service.db.reconciliations.insert_many([zj, bj])
    service.db.discrepancies.insert_many(
        [
            discrepancy(zj, "MISSING_LOCALLY", 1),
            discrepancy(zj, "AMOUNT_MISMATCH", 2),
            discrepancy(bj, "MISSING_LOCALLY", 9),
        ]
    )
    page = offline_page.page
    sign_in(page, service.url, issue_key(service.db, "branch_admin", ["zj"]))

    rows = page.locator("#discrepancies tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#discrepancies")).not_to_contain_text("T00009")
    target = rows.filter(has_text="T00002")
    expect(target).to_contain_text("AMOUNT_MISMATCH")
    expect(target).to_contain_text("¥59.90")
    target.get_by_label("Resolution note").fill("<b>refunded</b> the 0.90 by hand")
    target.get_by_role("button", name="Resolve").click()

    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("T00001")
    stored = service.db.discrepancies.find_one({"outTradeNo": "T00002"})
    assert stored is not None and stored["open"] is False
    assert stored["resolution"]["note"] == "<b>refunded</b> the 0.90 by hand"
    assert_clean(offline_page)


def test_a_failed_webhook_delivery_is_listed_and_replayed_from_the_console(
    start_payments: Callable[..., PayService],  # noqa: F811 (the fixture)
    receiver: Receiver,  # noqa: F811 (the fixture)
    offline_page: OfflinePage,
) -> None:
    service = webhook_service(start_payments, webhook_retry_scale=0.001)
    admin = service.client_for("branch_admin", "zj")
    create_endpoint(service, admin, receiver.url, ["order.created"], ["zj"])
    receiver.answers = [410]  # a final answer: the delivery ends FAILED at once
    service.create_order()
    receiver.wait_for(lambda got: len(got) >= 1)
    assert admin.key is not None
    page = offline_page.page

    sign_in(page, service.url, admin.key)
    endpoint = page.locator("#endpoints article.endpoint")
    expect(endpoint).to_have_count(1)
    expect(endpoint.locator("h3")).to_have_text(receiver.url)
    failed = endpoint.locator("tbody tr")
    for _ in range(20):  # the failure is recorded just after the answer
        if failed.count():
            break
        page.wait_for_timeout(250)
        page.reload()
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("order.created")
    failed.get_by_role("button", name="Replay").click()

    expect(failed).to_contain_text("queued 1")
    first, again = receiver.wait_for(lambda got: len(got) >= 2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert_clean(offline_page)


def test_with_config_editing_off_the_console_shows_the_command_to_run(
    start_service: Any, offline_page: OfflinePage
) -> None:
    service: RunningService = start_service()
    before = service.plugins_toml.read_text()
    page = offline_page.page

    sign_in(page, service.url, issue_key(service.db, "branch_admin", ["zj"]))
    zj_block = page.locator('article.branch[data-branch="zj"]')
    zj_block.locator('button[data-provider="sandbox"]').click()

    expect(zj_block.locator(".note code")).to_have_text("branchpay providers disable zj sandbox")
    expect(zj_block.locator(".note")).to_contain_text("does not edit plugins.toml")
    assert service.plugins_toml.read_text() == before
    assert_clean(offline_page)


def test_a_partner_key_sees_no_admin_data(start_service: Any, offline_page: OfflinePage) -> None:
    service: RunningService = start_service()
    page = offline_page.page

    sign_in(page, service.url, issue_key(service.db, "partner", ["zj"]))

    expect(page.locator("#notice")).to_contain_text("This key sees no admin data")
    expect(page.locator("#notice")).to_contain_text("a partner key may not do this")
    expect(page.locator("#console")).to_be_hidden()
    expect(page.locator("#orders-table tbody tr")).to_have_count(0)
    assert offline_page.blocked == []
    assert offline_page.csp_violations() == []
