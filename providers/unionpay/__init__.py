"""The built-in UnionPay provider plugin (ACP 5.1.0 online gateway)."""

from api.plugin import DemoGateway, hookimpl
from providers.unionpay.provider import UnionpayProvider

BRANCHPAY_PLUGIN_API = 2

__all__ = ["BRANCHPAY_PLUGIN_API", "UnionpayProvider", "demo_gateways", "register_providers"]


@hookimpl
def register_providers() -> list[type[UnionpayProvider]]:
    return [UnionpayProvider]


@hookimpl
def demo_gateways() -> list[DemoGateway]:
    # Imported here: only `make run` needs the simulator.
    from providers.unionpay.demo import DEMO

    return [DEMO]
