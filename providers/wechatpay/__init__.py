"""The built-in WeChat Pay (API v3) provider plugin, registered like any third-party one."""

from __future__ import annotations

from api.plugin import DemoGateway, Provider, hookimpl
from providers.wechatpay.provider import WechatpayProvider
from providers.wechatpay.settings import WechatpaySettings

BRANCHPAY_PLUGIN_API = 2

__all__ = [
    "BRANCHPAY_PLUGIN_API",
    "WechatpayProvider",
    "WechatpaySettings",
    "demo_gateways",
    "register_providers",
]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [WechatpayProvider]


@hookimpl
def demo_gateways() -> list[DemoGateway]:
    # Imported here: only `make run` needs the simulator.
    from providers.wechatpay.demo import DEMO

    return [DEMO]
