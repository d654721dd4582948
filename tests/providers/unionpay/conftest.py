"""The UnionPay simulator on loopback, one per test module, and an adapter of branch zj on it.

A module with a simulator of its own (the bill tests') defines ``simulator`` itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from providers.kit.loopback import LoopbackServer
from providers.unionpay import UnionpayProvider
from tests.providers.unionpay.support import BRANCH, settings, simulator_app


@pytest.fixture(scope="module")
def simulator() -> Iterator[LoopbackServer]:
    with LoopbackServer(simulator_app()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


@pytest.fixture
def provider(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayProvider:
    return UnionpayProvider(settings(simulator.url), branch=BRANCH, http=http)
