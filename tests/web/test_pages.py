"""The pages' HTTP surface (api/web/pages.py): security headers, the files' routes and caching."""

from __future__ import annotations

import hashlib
import http.client
import re
from pathlib import Path
from typing import Any

import httpx

from api.settings import Settings
from tests.conftest import RunningService
from tests.pages.conftest import require_assets

HTML = {"accept": "text/html"}


def test_the_graphiql_page_loads_only_its_own_files_and_each_answer_has_its_own_nonce(
    start_service: Any,
) -> None:
    require_assets()
    service: RunningService = start_service()
    first = httpx.get(f"{service.url}/graphql", headers=HTML)
    second = httpx.get(f"{service.url}/graphql", headers=HTML)
    assert first.status_code == 200
    assert first.headers["content-type"] == "text/html; charset=utf-8"
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["x-frame-options"] == "DENY"
    nonces = [
        re.search(r"'nonce-([^']+)'", page.headers["content-security-policy"])
        for page in (first, second)
    ]
    assert nonces[0] and nonces[1] and nonces[0][1] != nonces[1][1]
    assert f'content="{nonces[0][1]}"' in first.text

    # Every script and stylesheet is a path on this service; no inline script.
    addresses = re.findall(r'(?:src|href)="([^"]+)"', first.text)
    assert addresses and all(a.startswith("/assets/") or a == "data:," for a in addresses)
    assert "<script>" not in first.text
    assert '<script type="module" src="/assets/graphiql.js">' in first.text


def test_vendor_files_are_the_installed_ones_cached_for_good_and_nothing_else_is_served(
    start_service: Any,
) -> None:
    require_assets()
    service: RunningService = start_service()
    page = httpx.get(f"{service.url}/graphql", headers=HTML).text
    script = re.search(r'src="(/assets/vendor/graphiql@[^"]+/graphiql\.min\.js)"', page)
    assert script is not None
    answer = httpx.get(service.url + script[1])
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert answer.headers["x-content-type-options"] == "nosniff"
    installed = Settings().assets_dir / "node_modules" / "graphiql" / "graphiql.min.js"
    assert (
        hashlib.sha256(answer.content).digest() == hashlib.sha256(installed.read_bytes()).digest()
    )
    style = re.search(r'href="(/assets/vendor/graphiql@[^"]+/graphiql\.min\.css)"', page)
    assert style is not None
    assert httpx.get(service.url + style[1]).headers["content-type"] == "text/css; charset=utf-8"

    version = script[1].split("@")[1].split("/")[0]
    for unlisted in (
        f"/assets/vendor/graphiql@{version}/package.json",  # installed, but not a page's file
        "/assets/vendor/graphiql@0.0.1/graphiql.min.js",  # not the installed version
        "/assets/vendor/graphql@16.11.0/index.js",
        "/assets/vendor/graphiql/graphiql.min.js",
    ):
        assert httpx.get(service.url + unlisted).status_code == 404, unlisted


def test_own_files_are_revalidated_and_the_source_beside_them_is_not_served(
    start_service: Any,
) -> None:
    service: RunningService = start_service()
    script = httpx.get(f"{service.url}/assets/graphiql.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.headers["cache-control"] == "no-cache"
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "createFetcher" in script.text
    again = httpx.get(
        f"{service.url}/assets/graphiql.js", headers={"if-none-match": script.headers["etag"]}
    )
    assert again.status_code == 304
    assert httpx.get(f"{service.url}/assets/pages.css").headers["content-type"] == (
        "text/css; charset=utf-8"
    )
    host, port = service.url.removeprefix("http://").split(":")
    for outside in ("/assets/../pages.py", "/assets/%2e%2e/templates/graphiql.html"):
        # Sent as written: httpx would resolve the dot segments before sending.
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", outside)
        answer = connection.getresponse()
        assert answer.status == 404, outside
        assert b"VendorFiles" not in answer.read()
        connection.close()
    assert httpx.get(f"{service.url}/assets/nothing.js").status_code == 404


def test_the_missing_assets_page_answers_at_once_and_shows_the_folder_as_text(
    start_service: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "<script>alert(1)</script>"
    service: RunningService = start_service(assets_dir=folder)
    answer = httpx.get(f"{service.url}/graphql", headers=HTML, timeout=5.0)
    assert answer.status_code == 503
    assert "make install" in answer.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text
    assert "<script>" not in answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    # The API itself does not need them.
    assert service.client.data("{ branches { code } }")["branches"]
