"""The plugin-author conformance suite, run against the Alipay adapter and simulator."""

from __future__ import annotations

import httpx
import pytest

from providers.alipay import AlipayProvider
from providers.alipay.driver import AlipayGatewayDriver
from providers.kit.conformance import ProviderConformance
from tests.providers.alipay.support import (
    BRANCH,
    RunningSimulator,
    alipay_http,
    alipay_simulator,
    rsa_key,
    settings_for,
)

__all__ = ["alipay_http", "alipay_simulator"]


@pytest.fixture
def provider(alipay_simulator: RunningSimulator, alipay_http: httpx.AsyncClient) -> AlipayProvider:
    return AlipayProvider(settings_for(alipay_simulator.gateway), branch=BRANCH, http=alipay_http)


@pytest.fixture
def gateway(
    alipay_simulator: RunningSimulator, alipay_http: httpx.AsyncClient
) -> AlipayGatewayDriver:
    return AlipayGatewayDriver(alipay_simulator.url, alipay_http, forger_key=rsa_key("forger"))


@pytest.fixture
def payer_id() -> str:
    """A payer's Alipay user id, as alipay.system.oauth.token gives a mini program."""
    return "2088102177846880"


class TestAlipayConformance(ProviderConformance):
    pass
