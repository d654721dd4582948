"""The built-in ``sandbox`` provider plugin: test payments against a loopback simulator.

Registered under the entry-point group ``branchpay.providers`` like any
third-party provider package.
"""

from api.plugin import DemoGateway, Provider, hookimpl
from providers.sandbox.provider import SandboxProvider, SandboxSettings

BRANCHPAY_PLUGIN_API = 2


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [SandboxProvider]


__all__ = [
    "BRANCHPAY_PLUGIN_API",
    "SandboxProvider",
    "SandboxSettings",
    "demo_gateways",
    "register_providers",
]


@hookimpl
def demo_gateways() -> list[DemoGateway]:
    # Imported here: only `make run` needs the simulator.
    from providers.sandbox.demo import DEMO

    return [DEMO]
