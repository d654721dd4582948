"""The storefront's routes over HTTP: its key, its QR codes, its policy (api/web/demo.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.cli import worker_environment
from api.settings import Settings
from api.web.demo import QR_MAX_CHARS
from tests.conftest import GraphQLClient
from tests.services.conftest import PayService, PayServices


@pytest.fixture
def services(tmp_path: Path, mongo_uri: str, db_name: str) -> Iterator[PayServices]:
    started = PayServices(tmp_path, mongo_uri, db_name)
    yield started
    started.stop()


def session(service: PayService) -> httpx.Response:
    return httpx.get(f"{service.url}/demo/session")


def test_the_session_hands_over_a_partner_key_of_the_demo_branches_never_cached(
    services: PayServices,
) -> None:
    service = services.start(demo_pages=True)
    answer = session(service)
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["branches"] == ["zj", "bj", "yn"]
    key = body["key"]
    # The same key on every call of this process.
    assert session(service).json()["key"] == key

    partner = GraphQLClient(service.url, key)
    assert [b["code"] for b in partner.data("{ branches { code } }")["branches"]] == [
        "zj",
        "bj",
        "yn",
    ]
    # A partner key: the audit log (ops) is refused.
    assert partner.error_codes("{ auditLog { entries { id } } }") == ["FORBIDDEN"]
    records = list(service.db.api_keys.find({"name": {"$regex": "^demo-storefront-"}}))
    assert len(records) == 1
    assert records[0]["role"] == "partner" and records[0]["revokedAt"] is None
    # The store holds the secret's hash only.
    assert key.split("_")[-1] not in str(records[0])

    # The page itself carries no key.
    page = httpx.get(f"{service.url}/demo")
    assert page.status_code == 200
    assert key not in page.text and "bp_" not in page.text


def test_the_demo_key_is_revoked_when_the_process_stops(services: PayServices) -> None:
    service = services.start(demo_pages=True)
    key = session(service).json()["key"]
    api_server = services.servers.pop()
    api_server.stop()
    record = service.db.api_keys.find_one({"name": {"$regex": "^demo-storefront-"}})
    assert record is not None and record["revokedAt"] is not None
    assert key.startswith(f"bp_{record['_id']}_")


def test_the_qr_code_is_an_svg_of_bounded_text(services: PayServices) -> None:
    service = services.start(demo_pages=True)
    qr = f"{service.url}/demo/qr.svg"
    answer = httpx.get(qr, params={"text": "http://127.0.0.1:8009/pay/P123"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/svg+xml"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "<svg" in answer.text and "<script" not in answer.text
    other = httpx.get(qr, params={"text": "http://127.0.0.1:8009/pay/P124"})
    assert other.text != answer.text

    longest = httpx.get(qr, params={"text": "x" * QR_MAX_CHARS})
    assert longest.status_code == 200
    for refused in ({"text": "x" * (QR_MAX_CHARS + 1)}, {"text": ""}, {}):
        answer = httpx.get(qr, params=refused)
        assert answer.status_code == 400
        assert f"1 to {QR_MAX_CHARS} characters" in answer.text


def test_form_action_names_the_gateways_only_when_given(services: PayServices) -> None:
    service = services.start(demo_pages=True, demo_form_origins=["http://127.0.0.1:8011"])
    policy = httpx.get(f"{service.url}/demo").headers["content-security-policy"]
    assert "form-action 'self' http://127.0.0.1:8011;" in policy
    graphiql_policy = httpx.get(f"{service.url}/graphql", headers={"accept": "text/html"})
    assert "8011" not in graphiql_policy.headers.get("content-security-policy", "")


def test_demo_pages_are_off_by_default_and_workers_inherit_serve_s_choice() -> None:
    assert Settings().demo_pages is False
    settings = Settings(demo_pages=True, demo_form_origins=["http://127.0.0.1:8009"])
    env = worker_environment(settings, "mongodb://127.0.0.1:1")
    assert env["BRANCHPAY_DEMO_PAGES"] == "1"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        inherited = Settings()
    assert inherited.demo_pages is True
    assert inherited.demo_form_origins == ["http://127.0.0.1:8009"]
