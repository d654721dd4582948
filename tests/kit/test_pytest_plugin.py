"""The kit's pytest plugin as a package author meets it: loaded by entry point, overridable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PYPROJECT = """
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "session"
asyncio_default_test_loop_scope = "session"
"""

MISSING_FIXTURES = """
from providers.kit.conformance import ProviderConformance


class TestNothingSupplied(ProviderConformance):
    pass
"""

OVERRIDDEN_DEFAULTS = """
import secrets

import httpx
import pytest

from api.plugins.contract import PaymentMethod
from providers.kit.conformance import ProviderConformance
from providers.kit.loopback import LoopbackServer
from providers.sandbox import SandboxProvider, SandboxSettings
from providers.sandbox.driver import SandboxDriver
from providers.sandbox.simulator import create_app

SECRET = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def url():
    with LoopbackServer(create_app(SECRET.encode())) as server:
        yield server.url


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(url, http):
    settings = SandboxSettings.model_validate({"gateway": url, "secret": SECRET})
    return SandboxProvider(settings, branch="zj", http=http)


@pytest.fixture
def gateway(url, http):
    return SandboxDriver(url, http)


@pytest.fixture
def amount_fen():
    return 4321


@pytest.fixture
def payment_methods():
    return (PaymentMethod.APP,)


class TestSandboxWithModuleDefaults(ProviderConformance):
    def test_module_fixtures_win_over_the_plugin_defaults(self, amount_fen, payment_methods):
        assert (amount_fen, payment_methods) == (4321, (PaymentMethod.APP,))
"""

IN_APP_WITHOUT_PAYER_ID = OVERRIDDEN_DEFAULTS.replace(
    "class TestSandboxWithModuleDefaults(ProviderConformance):",
    """class InApp(SandboxProvider):
    methods = (*SandboxProvider.methods, PaymentMethod.JSAPI)


@pytest.fixture
def provider(url, http):
    settings = SandboxSettings.model_validate({"gateway": url, "secret": SECRET})
    return InApp(settings, branch="zj", http=http)


class TestSandboxWithModuleDefaults(ProviderConformance):""",
)


def _pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "test_author.py").write_text(test_source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_author.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_missing_fixtures_are_explained(tmp_path: Path) -> None:
    result = _pytest(tmp_path, MISSING_FIXTURES)
    assert result.returncode != 0
    assert "the conformance suite needs a `provider` fixture" in result.stdout


def test_an_authors_module_fixtures_override_the_defaults(tmp_path: Path) -> None:
    result = _pytest(tmp_path, OVERRIDDEN_DEFAULTS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 20, result.stdout[-2000:]


def test_an_in_app_provider_without_a_payer_id_is_told_to_supply_one(tmp_path: Path) -> None:
    result = _pytest(tmp_path, IN_APP_WITHOUT_PAYER_ID)
    assert result.returncode != 0
    assert "needs a `payer_id` fixture" in result.stdout, result.stdout[-3000:]
