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

import httpx
import pytest

from providers.kit.conformance import ProviderConformance
from providers.kit.loopback import LoopbackServer
from providers.unionpay.driver import UnionpayDriver
from tests.providers.unionpay.support import other_chain


@pytest.fixture
def gateway(simulator: LoopbackServer, http: httpx.AsyncClient) -> UnionpayDriver:
    return UnionpayDriver(simulator.url, http, forger_key=other_chain().platform_key)


class TestUnionpayConformance(ProviderConformance):
    pass
