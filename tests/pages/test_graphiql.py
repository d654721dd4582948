"""GraphiQL in a real browser on a network limited to loopback (issue 19, item 3, for GraphiQL).

The tab refuses every request that would leave loopback; GraphiQL and its
explorer must load from the service alone, take an API key, run
``{ branches { code } }`` and show the codes, under a policy that allows only
the service's own origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Response, expect

from tests.conftest import RunningService, issue_key
from tests.pages.conftest import OfflinePage
from tests.schema.test_mutation import CANCEL, create

ALLOWED_SOURCES = {"'self'", "'none'", "data:"}


def policy(response: Response) -> dict[str, list[str]]:
    header = response.headers["content-security-policy"]
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {name: sources for name, *sources in directives}


def assert_only_own_origin(response: Response) -> None:
    directives = policy(response)
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    for name, sources in directives.items():
        # A nonce lets our own script add <style> elements; it names no origin.
        foreign = [s for s in sources if s not in ALLOWED_SOURCES and not s.startswith("'nonce-")]
        assert not foreign, f"{name} allows {foreign}"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_graphiql_loads_takes_a_key_and_runs_a_query_with_only_loopback_reachable(
    start_service: Any, offline_page: OfflinePage, service_assets: Path
) -> None:
    service: RunningService = start_service()
    key = issue_key(service.db, "partner", ["zj", "bj"])
    page = offline_page.page

    response = page.goto(f"{service.url}/graphql")
    assert response is not None
    assert response.status == 200
    assert_only_own_origin(response)

    # Without a key the page says what to do, and GraphiQL (with its explorer) is up.
    expect(page.locator("#key-status")).to_contain_text("every query needs one")
    expect(page.locator(".graphiql-execute-button")).to_be_visible(timeout=20_000)
    expect(page.get_by_role("button", name="Show GraphiQL Explorer")).to_be_visible()
    expect(page.locator(".result-window")).to_contain_text("Give your API key above first")

    page.fill("#api-key", key)
    page.click("#use-key")
    expect(page.locator("#key-status")).to_contain_text("Using the key you gave")
    # The field is emptied: the key is not shown again, and it is kept in this tab only.
    expect(page.locator("#api-key")).to_have_value("")
    assert key not in page.url
    assert key not in page.evaluate("JSON.stringify(localStorage)")
    assert page.evaluate("Object.values(sessionStorage)") == [key]
    # With the key, GraphiQL reads the schema: the explorer lists the root fields.
    page.get_by_role("button", name="Show GraphiQL Explorer").click()
    explorer = page.locator(".graphiql-explorer-root")
    expect(explorer).to_be_visible()
    expect(explorer).to_contain_text("branches", timeout=20_000)
    expect(explorer).to_contain_text("orders")

    page.locator(".graphiql-query-editor .CodeMirror").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text("{ branches { code } }")
    page.click(".graphiql-execute-button")

    result = page.locator(".result-window")
    expect(result).to_contain_text('"code": "zj"', timeout=20_000)
    expect(result).to_contain_text('"code": "bj"')
    # The partner key's branches only: Yunnan is not among them.
    assert '"yn"' not in result.inner_text()

    page.click("#forget-key")
    expect(page.locator("#key-status")).to_contain_text("No key")
    assert page.evaluate("sessionStorage.length") == 0

    # A dialog adds a <style> element: allowed by this answer's nonce, not by 'unsafe-inline'.
    page.get_by_role("button", name="Open settings dialog").click()
    expect(page.get_by_role("dialog")).to_contain_text("Theme")
    assert page.locator("style[nonce]").count() >= 1

    assert offline_page.blocked == [], "the page asked for something beyond loopback"
    assert offline_page.csp_violations() == []
    assert offline_page.console_errors == []
    own = [url for url in offline_page.requested if not url.startswith("data:")]
    assert own and all(url.startswith(service.url) for url in own), own
    assert any("/assets/vendor/graphiql@" in url for url in own)


def test_a_subscription_in_graphiql_carries_the_key_and_shows_the_order_change(
    start_service: Any, offline_page: OfflinePage, service_assets: Path
) -> None:
    service: RunningService = start_service()
    order_id = create(service)["order"]["id"]
    page = offline_page.page
    page.goto(f"{service.url}/graphql")
    page.fill("#api-key", issue_key(service.db, "partner", ["zj"]))
    page.press("#api-key", "Enter")
    expect(page.locator("#key-status")).to_contain_text("Using the key you gave")

    page.locator(".graphiql-query-editor .CodeMirror").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(
        f'subscription {{ orderEvents(orderId: "{order_id}") {{ status reason }} }}'
    )
    # GraphiQL parses the editor's text a moment after the last change and picks the transport
    # (WebSocket for a subscription) from that parse: a click within milliseconds of the paste,
    # as no person makes, still sees the old document and sends the subscription over HTTP.
    page.wait_for_timeout(1000)
    page.click(".graphiql-execute-button")
    # The WebSocket's connection_init carried the key: the order's current status comes first.
    result = page.locator(".result-window")
    expect(result).to_contain_text('"status": "PENDING_PAYMENT"', timeout=20_000)
    service.client.data(CANCEL, {"input": {"orderId": order_id, "reason": "changed my mind"}})
    expect(result).to_contain_text('"status": "CANCELLED"', timeout=20_000)
    expect(result).to_contain_text("changed my mind")
    assert offline_page.blocked == []
    assert offline_page.csp_violations() == []


def test_without_its_files_graphiql_says_how_to_install_them(
    start_service: Any, offline_page: OfflinePage, tmp_path: Path
) -> None:
    service: RunningService = start_service(assets_dir=tmp_path / "no-assets")
    page = offline_page.page

    response = page.goto(f"{service.url}/graphql")
    assert response is not None
    assert response.status == 503
    assert_only_own_origin(response)
    expect(page.locator("h1")).to_have_text("GraphiQL's files are not installed")
    expect(page.locator("main")).to_contain_text("make install")
    expect(page.locator("main")).to_contain_text(str(tmp_path / "no-assets"))
    assert offline_page.blocked == []
    assert offline_page.csp_violations() == []
