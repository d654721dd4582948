"""The plugin-author kit: what a provider package needs to prove itself correct.

Import it as ``providers.kit``; the contract itself comes from ``api.plugin``.

- :class:`ProviderConformance` is the conformance suite: subclass it in a test
  module and supply the ``provider`` and ``gateway`` fixtures (the pytest
  plugin ``branchpay_provider_kit`` adds the defaults). It needs pytest, so it
  is imported only when first named.
- :class:`GatewayDriver` is the protocol a package implements to play the
  payment platform's side in the suite.
- :class:`LoopbackServer` runs an ASGI app (a gateway simulator) on a free
  loopback port in a background thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from providers.kit.driver import GatewayDriver, SettleOutcome
from providers.kit.loopback import LoopbackServer

if TYPE_CHECKING:
    from providers.kit.conformance import ProviderConformance

__all__ = ["GatewayDriver", "LoopbackServer", "ProviderConformance", "SettleOutcome"]


def __getattr__(name: str) -> Any:
    if name == "ProviderConformance":
        from providers.kit.conformance import ProviderConformance

        return ProviderConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
