"""A sandbox simulator and adapter for running the conformance kit against."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from providers.kit.loopback import LoopbackServer
from providers.sandbox import SandboxProvider, SandboxSettings
from providers.sandbox.driver import SandboxDriver
from providers.sandbox.simulator import create_app


@pytest.fixture(scope="module")
def sandbox_secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def sandbox_url(sandbox_secret: str) -> Iterator[str]:
    app = create_app(sandbox_secret.encode(), retry_delays=(0.05,))
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(sandbox_url: str, sandbox_secret: str, http: httpx.AsyncClient) -> SandboxProvider:
    settings = SandboxSettings(gateway=sandbox_url, secret=sandbox_secret)  # type: ignore[arg-type]
    return SandboxProvider(settings, branch="zj_mobile", http=http)


@pytest.fixture
def gateway(sandbox_url: str, http: httpx.AsyncClient) -> SandboxDriver:
    return SandboxDriver(sandbox_url, http)
