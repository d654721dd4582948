"""The built-in ``alipay`` provider plugin: Alipay OpenAPI with RSA2 signatures.

Registered under the ``branchpay.providers`` entry-point group like any
third-party provider package.
"""

from __future__ import annotations

from api.plugin import Provider, hookimpl
from providers.alipay.provider import AlipayProvider
from providers.alipay.settings import AlipaySettings

BRANCHPAY_PLUGIN_API = 2

__all__ = ["BRANCHPAY_PLUGIN_API", "AlipayProvider", "AlipaySettings", "register_providers"]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [AlipayProvider]
