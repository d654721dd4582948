"""Example Pay for branchpay: the plugin module named by the ``branchpay.providers`` entry point."""

from api.payments.provider import Provider
from api.plugins import hookimpl
from branchpay_example_provider.provider import ExamplePayProvider, ExamplePaySettings

BRANCHPAY_PLUGIN_API = 1


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [ExamplePayProvider]


__all__ = ["BRANCHPAY_PLUGIN_API", "ExamplePayProvider", "ExamplePaySettings", "register_providers"]
