"""Browser fixtures: Debian's Chromium driven by Playwright, on a network limited to loopback.

Chromium is the machine's own (``BRANCHPAY_CHROMIUM``, else ``chromium`` on PATH);
Playwright never downloads a browser here. With none found, every test that
needs it fails and says how to get one: a browser test is never skipped.

``offline_page`` is a tab whose every request, WebSocket included, to anything
but loopback is refused before it leaves the browser, and recorded in
``blocked``; the tab also records the Content-Security-Policy violations and the
console's errors, so a test can say the page needed nothing from outside and
broke no rule of its policy. ``service_assets`` fails with the command to run
when the pages' vendor files are not installed. ``screenshots`` is the folder the
tests save their screenshots in: ``.data/screenshots`` (not tracked), or
``BRANCHPAY_SCREENSHOTS_DIR``; ``BRANCHPAY_SCREENSHOTS_DIR=docs/images`` refreshes
the README's pictures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, WebSocketRoute, sync_playwright

from api.settings import Settings
from api.web.pages import VendorFiles

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Addresses that never reach a network: the page's own bytes.
LOCAL_SCHEMES = frozenset({"data", "blob", "about"})

# Collects the page's CSP violations before any of its scripts runs.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(
    `${event.effectiveDirective} refused ${event.blockedURI || "inline"} (${event.sourceFile}:${event.lineNumber})`
  );
});
"""


def chromium_executable() -> str:
    configured = os.environ.get("BRANCHPAY_CHROMIUM")
    found = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        pytest.fail(
            "no Chromium found for the browser tests: install Debian's package "
            "(apt-get install chromium; .ci/run does) or set BRANCHPAY_CHROMIUM to its path",
            pytrace=False,
        )
    return found


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOOPBACK


# Per module, not per session: Playwright's sync API keeps an event loop running on
# the main thread while it is open, and the asyncio tests that run after tests/pages
# (plugins, providers, schema, services...) cannot start their own loop meanwhile.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Headless Chromium; host names other than loopback resolve to nothing as well."""
    launched = playwright.chromium.launch(
        executable_path=chromium_executable(),
        headless=True,
        args=[
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1,"
            " EXCLUDE [::1]"
        ],
    )
    yield launched
    launched.close()


@dataclass
class OfflinePage:
    page: Page
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__cspViolations || []")
        return found


@pytest.fixture
def offline_page(browser: Browser) -> Iterator[OfflinePage]:
    """A tab that may reach only loopback, recording what it was refused and what it broke."""
    context = browser.new_context(service_workers="block")
    tab = OfflinePage(context.new_page())

    def guard(route: Route) -> None:
        url = route.request.url
        tab.requested.append(url)
        if is_loopback(url):
            route.continue_()
        else:
            tab.blocked.append(url)
            route.abort("internetdisconnected")

    def guard_socket(socket: WebSocketRoute) -> None:
        tab.requested.append(socket.url)
        if is_loopback(socket.url):
            socket.connect_to_server()
        else:
            tab.blocked.append(socket.url)
            socket.close()

    context.route("**/*", guard)
    context.route_web_socket("**/*", guard_socket)
    context.add_init_script(RECORD_VIOLATIONS)

    def console(message: Any) -> None:
        if message.type == "error":
            tab.console_errors.append(message.text)

    tab.page.on("console", console)
    tab.page.on("pageerror", lambda error: tab.console_errors.append(str(error)))
    yield tab
    context.close()


def require_assets() -> Path:
    """The vendor files' folder the services under test read; fails when they are missing."""
    vendor = VendorFiles(Settings().assets_dir)
    missing = vendor.missing()
    if missing:
        pytest.fail(
            f"the pages' vendor files are not installed in {vendor.root.resolve()} "
            f"(missing {', '.join(missing)}): run `make assets` (npm ci of assets/package-lock.json)",
            pytrace=False,
        )
    return vendor.root


@pytest.fixture(scope="session")
def service_assets() -> Path:
    return require_assets()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the tests save their screenshots; a test run leaves tracked files alone."""
    root = Path(__file__).resolve().parents[2]
    folder = Path(os.environ.get("BRANCHPAY_SCREENSHOTS_DIR") or root / ".data" / "screenshots")
    folder = folder if folder.is_absolute() else root / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder
