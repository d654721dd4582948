"""Example Pay passes branchpay's provider conformance kit against its simulator."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from branchpay_example_provider import ExamplePayProvider, ExamplePaySettings
from branchpay_example_provider.driver import ExamplePayDriver
from branchpay_example_provider.simulator import create_app

from providers.kit import LoopbackServer, ProviderConformance

MERCHANT_ID = "M100200300"


@pytest.fixture(scope="module")
def api_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def simulator_url(api_key: str) -> Iterator[str]:
    with LoopbackServer(create_app(MERCHANT_ID, api_key.encode())) as server:
        yield server.url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(simulator_url: str, api_key: str, http: httpx.AsyncClient) -> ExamplePayProvider:
    settings = ExamplePaySettings.model_validate(
        {"merchant_id": MERCHANT_ID, "api_key": api_key, "gateway": simulator_url}
    )
    return ExamplePayProvider(settings, branch="zj", http=http)


@pytest.fixture
def gateway(simulator_url: str, http: httpx.AsyncClient) -> ExamplePayDriver:
    return ExamplePayDriver(simulator_url, http)


class TestExamplePayConformance(ProviderConformance):
    pass
