"""The built-in UnionPay provider plugin (ACP 5.1.0 online gateway)."""

from api.plugin import hookimpl
from providers.unionpay.provider import UnionpayProvider

BRANCHPAY_PLUGIN_API = 2

__all__ = ["BRANCHPAY_PLUGIN_API", "UnionpayProvider", "register_providers"]


@hookimpl
def register_providers() -> list[type[UnionpayProvider]]:
    return [UnionpayProvider]
