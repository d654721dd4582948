"""Example Pay for branchpay: the plugin module named by the ``branchpay.providers`` entry point."""

from api.plugin import DemoGateway, Provider, hookimpl
from branchpay_example_provider.provider import ExamplePayProvider, ExamplePaySettings

BRANCHPAY_PLUGIN_API = 2


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [ExamplePayProvider]


@hookimpl
def demo_gateways() -> list[DemoGateway]:
    # Imported here: only branchpay's demo (`make run`) needs the simulator.
    from branchpay_example_provider.demo import DEMO

    return [DEMO]


__all__ = [
    "BRANCHPAY_PLUGIN_API",
    "ExamplePayProvider",
    "ExamplePaySettings",
    "demo_gateways",
    "register_providers",
]
