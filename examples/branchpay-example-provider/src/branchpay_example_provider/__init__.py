"""Example Pay for branchpay: the plugin module named by the ``branchpay.providers`` entry point."""

from api.plugin import Provider, hookimpl
from branchpay_example_provider.provider import ExamplePayProvider, ExamplePaySettings

BRANCHPAY_PLUGIN_API = 2


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [ExamplePayProvider]


__all__ = ["BRANCHPAY_PLUGIN_API", "ExamplePayProvider", "ExamplePaySettings", "register_providers"]
