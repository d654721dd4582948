"""The plugin-author conformance suite, run against the WeChat Pay adapter and simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from providers.kit.conformance import ProviderConformance
from providers.kit.loopback import LoopbackServer
from providers.wechatpay import WechatpayProvider
from providers.wechatpay.driver import WechatpayDriver
from tests.providers.wechatpay.support import (
    BRANCH,
    PLATFORM_KEY_ID,
    merchant,
    session_keys,
    settings,
    simulator_app,
)


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    keys = session_keys()
    app = simulator_app(
        merchant(keys),
    )
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def provider(simulator_url: str, http: httpx.AsyncClient) -> WechatpayProvider:
    return WechatpayProvider(settings(session_keys(), simulator_url), branch=BRANCH, http=http)


@pytest.fixture
def gateway(simulator_url: str) -> WechatpayDriver:
    keys = session_keys()
    return WechatpayDriver(
        simulator_url,
        platform_private_key=keys.platform,
        platform_public_key_id=PLATFORM_KEY_ID,
        apiv3_key=keys.apiv3_key.encode(),
    )


@pytest.fixture
def payer_id() -> str:
    """An openid as WeChat Pay issues them under an appid (28 characters)."""
    return "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


class TestWechatpayConformance(ProviderConformance):
    pass
