"""Shared fixtures: a real MongoDB-compatible server for the whole run.

The suite starts a throwaway SecantusDB server on a free loopback port, or
uses ``BRANCHPAY_TEST_MONGODB_URI`` when it is set (any MongoDB 7+ replica set).
Each test that needs storage gets a database of its own.

Also the plugin runtime's fixtures (tests/plugins, tests/config, tests/cli): tiny
provider plugins and plugins.toml builders, at the end of this file.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, Field, SecretBytes, SecretStr, field_validator
from pymongo import MongoClient, monitoring
from pymongo.synchronous.database import Database

from api.dev import devdb
from api.domain.beijing import BEIJING, beijing_now
from api.plugins import hookimpl
from api.plugins.contract import PaymentMethod, Provider
from api.plugins.manager import installed_providers, new_plugin_manager

# Services the tests start do not run the daily bill reconciliation on their own (it would
# download and write a reconciliation in the middle of unrelated tests); its tests turn it on.
os.environ.setdefault("BRANCHPAY_BILL_RECONCILE", "0")


@pytest.fixture(scope="session", autouse=True)
def simulators_publish_today() -> Iterator[None]:
    """Every gateway simulator the suite starts publishes the current day's bill so far.

    (``providers.kit.bills``: the real platforms publish day D on D+1; a test
    reconciles today's payments.) Tests of the D+1 rule say so to their simulator.
    """
    from providers.kit.bills import CURRENT_DAY_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CURRENT_DAY_ENV, "1")
        yield


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("BRANCHPAY_TEST_MONGODB_URI")
    if configured:
        yield configured
        return
    with devdb.running(tmp_path_factory.mktemp("secantus") / "db") as store:
        yield store.uri


@pytest.fixture
def db_name() -> str:
    return f"bp_test_{uuid.uuid4().hex[:12]}"


DEMO_BRANCHES_TOML = """
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.sandbox]
enabled = true
gateway = "{gateway}"
secret = {{ file = "sandbox.key" }}

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.sandbox]
enabled = true
gateway = "{gateway}"
secret = {{ file = "sandbox.key" }}

[branches.yn]
name = "China Telecom Yunnan"
province = "Yunnan"
operator = "China Telecom"

[branches.yn.providers.sandbox]
enabled = false
gateway = "{gateway}"
secret = {{ file = "sandbox.key" }}
"""


class GraphQLClient:
    """Talks to a running branchpay over real HTTP, with an API key unless ``key`` is None."""

    def __init__(self, base_url: str, key: str | None = None) -> None:
        self.base_url = base_url
        self.key = key
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url, timeout=30.0, headers=headers)

    def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post("/graphql", json={"query": query, "variables": variables or {}})
        assert response.headers["content-type"].startswith("application/json"), response.text
        body: dict[str, Any] = response.json()
        return body

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of a request that must not fail."""
        body = self.post(query, variables)
        assert not body.get("errors"), body["errors"]
        result: dict[str, Any] = body["data"]
        return result

    def error_codes(self, query: str, variables: dict[str, Any] | None = None) -> list[str]:
        body = self.post(query, variables)
        assert body.get("errors"), f"expected errors, got {body}"
        return [error["extensions"]["code"] for error in body["errors"]]


def issue_key(
    db: Database[dict[str, Any]], role: str, branches: Sequence[str] = (), name: str | None = None
) -> str:
    """An API key stored the way `branchpay keys create` stores it."""
    from api.domain.principal import Role
    from api.store.keys import new_key

    record, key = new_key(name or f"test-{uuid.uuid4().hex[:8]}", Role(role), branches, by="tests")
    db.api_keys.insert_one(record)
    return key


@dataclass
class RunningService:
    url: str
    client: GraphQLClient  # an ops key: sees everything
    db: Database[dict[str, Any]]
    plugins_toml: Path
    commands: list[str]
    pii_key: bytes

    def client_for(self, role: str, *branches: str) -> GraphQLClient:
        return GraphQLClient(self.url, issue_key(self.db, role, branches))


class CommandLog(monitoring.CommandListener):
    """Records the name of every command the service sends to the store."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def start_service(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> Iterator[Callable[..., RunningService]]:
    """Start branchpay (real app, real uvicorn, real store) with demo catalogs; stops after the test."""
    from api.dev.seed import seed
    from api.domain.pii import PiiVault
    from api.settings import Settings
    from api.store import Store
    from api.web.app import create_app
    from providers.kit.loopback import LoopbackServer

    servers: list[LoopbackServer] = []
    sync_client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)

    def start(
        plugins_toml: str | None = None,
        *,
        gateway: str = "http://127.0.0.1:9",
        orders: int = 0,
        app_factory: Callable[..., Any] | None = None,
        **settings: Any,
    ) -> RunningService:
        """``app_factory`` builds the app instead of create_app (the bench's, with its endpoints)."""
        (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
        config = tmp_path / "plugins.toml"
        config.write_text((plugins_toml or DEMO_BRANCHES_TOML).format(gateway=gateway))
        pii_key = secrets.token_bytes(32)
        # Tests hammer the service; the rate limit has tests of its own that set it.
        settings.setdefault("rate_limit_per_second", 1_000_000.0)
        settings.setdefault("rate_limit_burst", 1_000_000)
        options = Settings(
            plugins_toml=config,
            database=db_name,
            data_dir=tmp_path / "data",
            pii_key=base64.b64encode(pii_key).decode(),
            **settings,
        )
        vault = PiiVault(options.pii_master_key())

        async def load_demo() -> None:
            store = Store.connect(mongo_uri, db_name)
            await store.ensure_indexes()
            await seed(
                store,
                branches=["zj", "bj", "yn"],
                orders=orders,
                ttl=timedelta(minutes=30),
                vault=vault,
            )
            await store.close()

        # On a thread of its own: a test may hold a running loop (Playwright's sync API does).
        with ThreadPoolExecutor(1) as apart:
            apart.submit(asyncio.run, load_demo()).result()
        log = CommandLog()
        app = (app_factory or create_app)(
            options, mongodb_uri=mongo_uri, client_options={"event_listeners": [log]}
        )
        server = LoopbackServer(app).start()
        servers.append(server)
        db = sync_client[db_name]
        ops = GraphQLClient(server.url, issue_key(db, "ops"))
        return RunningService(server.url, ops, db, config, log.commands, options.pii_master_key())

    yield start
    for server in servers:
        server.stop()
    sync_client.drop_database(db_name)
    sync_client.close()


@pytest.fixture
def watch_errors() -> Iterator[Callable[[], list[logging.LogRecord]]]:
    """Call it once the service runs: it collects the ERROR records logged from then on.

    uvicorn's loggers do not propagate, and uvicorn configures them afresh when
    a server starts, so they are watched only after start_service().
    """
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.ERROR)
    loggers = [logging.getLogger(name) for name in ("", "uvicorn.error")]

    def watch() -> list[logging.LogRecord]:
        for logger in loggers:
            logger.addHandler(handler)
        return records

    yield watch
    for logger in loggers:
        logger.removeHandler(handler)


# Tiny provider plugins and plugins.toml builders for the plugin runtime's tests.
#
# The providers here are defined by the tests themselves and registered on a
# plugin manager the test builds, so the runtime is tested without depending on
# any real adapter. ``cardpay`` checks its private key really is a PEM key (keys
# are generated per run with cryptography); ``wallet`` marks a plain ``str``
# field secret through ``json_schema_extra``.


class Limits(BaseModel):
    max_fen: int = Field(default=100_000, gt=0)


class CardSettings(BaseModel):
    merchant_id: str = Field(pattern=r"^[0-9]{6}$")
    gateway: str
    private_key: SecretStr
    limits: Limits = Limits()

    @field_validator("private_key")
    @classmethod
    def _is_pem_key(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        try:
            serialization.load_pem_private_key(text.encode(), password=None)
        except ValueError:
            # Deliberately careless: quotes the key, which the loader must never show.
            raise ValueError(f"not a PEM private key: {text[:40]}") from None
        return value


class CardPay(Provider):
    name = "cardpay"
    display_name = "Card Pay"
    methods = (PaymentMethod.PAGE, PaymentMethod.QR_CODE)
    Settings = CardSettings
    # Card Pay's service-provider mode: one account's keys, a merchant id per branch.
    sub_merchant_settings = ("merchant_id",)


class WalletSettings(BaseModel):
    app_id: str
    signing_key: str = Field(json_schema_extra={"secret": True})
    certificate: SecretBytes | None = None
    region: str = "cn"


class WalletPay(Provider):
    name = "wallet"
    display_name = "Wallet"
    methods = (PaymentMethod.WAP,)
    Settings = WalletSettings


class DemoPlugin:
    @hookimpl
    def register_providers(self) -> list[type[Provider]]:
        return [CardPay, WalletPay]


@pytest.fixture
def pm() -> pluggy.PluginManager:
    manager = new_plugin_manager()
    manager.register(DemoPlugin(), name="demo")
    return manager


@pytest.fixture
def providers(pm: pluggy.PluginManager) -> dict[str, type[Provider]]:
    return installed_providers(pm)


@pytest.fixture(scope="session")
def pem_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


VALID = """\
# Zhejiang prefers cards.
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.cardpay]
enabled = true   # the branch's first choice
merchant_id = "100001"
gateway = "http://127.0.0.1:9/card"
private_key = { file = "secrets/card.pem" }

[branches.zj.providers.wallet]
enabled = false
app_id = "wallet-zj"
signing_key = { env = "BP_TEST_WALLET_KEY" }

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.wallet]
enabled = true
app_id = "wallet-bj"
signing_key = { env = "BP_TEST_WALLET_KEY" }

[branches.bj.providers.cardpay]
enabled = true
merchant_id = "100002"
gateway = "http://127.0.0.1:9/card"
private_key = { file = "secrets/card.pem" }
"""

WALLET_KEY = "wallet-signing-key-0123456789"


@pytest.fixture
def valid_text() -> str:
    """Two branches, each with both providers, in different orders; one disabled."""
    return VALID


@pytest.fixture
def wallet_key() -> str:
    return WALLET_KEY


@pytest.fixture
def config_dir(tmp_path: Path, pem_key: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the secrets VALID refers to (the env one set too)."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "card.pem").write_text(pem_key)
    monkeypatch.setenv("BP_TEST_WALLET_KEY", WALLET_KEY)
    return tmp_path


@pytest.fixture
def write_config(config_dir: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = config_dir / "plugins.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def clear_of_beijing_midnight() -> None:
    """For tests that pay now and reconcile today's bill: start clear of a Beijing day's end.

    A bill run leaves the records of the day's last minutes (the bill tolerance) to the
    next day's run, so a test paying then would not find them on today's; started that
    close to midnight, the test waits until the next Beijing day begins (at most minutes,
    once: the next day's tests start clear).
    """
    from api.settings import Settings

    tolerance = Settings.model_fields["bill_tolerance_seconds"].default
    margin = timedelta(seconds=tolerance + 120)  # the test's own run time, generously
    now = beijing_now()
    ends = datetime.combine(now.date() + timedelta(days=1), clock_time(), BEIJING)
    if ends - now < margin:
        time.sleep((ends - now).total_seconds() + 1)
