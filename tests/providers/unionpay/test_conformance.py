"""The plugin-author conformance suite, run against the UnionPay adapter and simulator.

The suite opens its paid attempts with QR_CODE (the gateway learns of those
at once). PAGE and WAP forms are remembered by the driver, which posts them as
the payer's browser would when an attempt is settled.

The contract promises numbers that start with their 12-digit UTC creation
time, which the adapter takes as UnionPay's txnTime; the suite's own numbers
do not carry it yet, so here they are made the way branchpay's payment service
makes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from api.plugins.contract import ActionKind, PaymentAction, PaymentRequest
from providers.kit.conformance import ProviderConformance
from providers.kit.loopback import LoopbackServer
from providers.unionpay import UnionpayProvider
from providers.unionpay.driver import UnionpayDriver
from tests.providers.unionpay.support import BRANCH, other_chain, settings, simulator_app


class PayerFacingProvider(UnionpayProvider):
    """Hands every front-consume form to the driver, as the frontend hands it to the payer."""

    driver: UnionpayDriver

    async def create_payment(self, request: PaymentRequest) -> PaymentAction:
        action = await super().create_payment(request)
        if action.kind is ActionKind.FORM_POST and action.form_html:
            self.driver.remember(request.out_trade_no, action.form_html)
        return action


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
def provider(
    simulator: LoopbackServer, http: httpx.AsyncClient, gateway: UnionpayDriver
) -> UnionpayProvider:
    instance = PayerFacingProvider(settings(simulator.url), branch=BRANCH, http=http)
    instance.driver = gateway
    return instance


class TestUnionpayConformance(ProviderConformance):
    pass
