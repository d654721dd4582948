"""The built-in WeChat Pay (API v3) provider plugin, registered like any third-party one."""

from __future__ import annotations

from api.plugin import Provider, hookimpl
from providers.wechatpay.provider import WechatpayProvider
from providers.wechatpay.settings import WechatpaySettings

BRANCHPAY_PLUGIN_API = 2

__all__ = ["BRANCHPAY_PLUGIN_API", "WechatpayProvider", "WechatpaySettings", "register_providers"]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [WechatpayProvider]
