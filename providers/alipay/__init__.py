"""The built-in ``alipay`` provider plugin: Alipay OpenAPI with RSA2 signatures.

Registered under the ``branchpay.providers`` entry-point group like any
third-party provider package.
"""

from __future__ import annotations

from api.plugin import DemoGateway, Provider, hookimpl
from providers.alipay.provider import AlipayProvider
from providers.alipay.settings import AlipaySettings

BRANCHPAY_PLUGIN_API = 2

__all__ = [
    "BRANCHPAY_PLUGIN_API",
    "AlipayProvider",
    "AlipaySettings",
    "demo_gateways",
    "register_providers",
]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [AlipayProvider]


@hookimpl
def demo_gateways() -> list[DemoGateway]:
    # Imported here: only `make run` needs the simulator.
    from providers.alipay.demo import DEMO

    return [DEMO]
