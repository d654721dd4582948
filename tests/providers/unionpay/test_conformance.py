"""The plugin-author conformance suite, run against the UnionPay adapter and simulator.

The suite runs every declared method: the kit hands each PAGE and WAP form to
the driver (``present``), which posts it as the payer's browser would when the
attempt is settled.

The contract promises numbers that start with their 12-digit UTC creation
time, which the adapter takes as UnionPay's txnTime; the suite's own numbers
do not carry it yet, so here they are made the way branchpay's payment service
makes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from providers.kit.conformance import ProviderConformance
from providers.kit.loopback import LoopbackServer
from providers.unionpay import UnionpayProvider
from providers.unionpay.driver import UnionpayDriver
from tests.providers.unionpay.support import BRANCH, other_chain, settings, simulator_app


@pytest.fixture(scope="module")
def simulator() -> Iterator[LoopbackServer]:
    with LoopbackServer(simulator_app()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


@pytest.fixture
def gateway(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayDriver:
    return UnionpayDriver(simulator.url, http, forger_key=other_chain().platform_key)


@pytest.fixture
def provider(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayProvider:
    return UnionpayProvider(settings(simulator.url), branch=BRANCH, http=http)


class TestUnionpayConformance(ProviderConformance):
    pass
