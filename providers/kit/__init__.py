"""The plugin-author kit: what a provider package needs to prove itself correct.

- :class:`~providers.kit.loopback.LoopbackServer` runs an ASGI app (a gateway
  simulator) on a free loopback port in a background thread.
- :class:`~providers.kit.driver.GatewayDriver` is the protocol a package
  implements to play the payment platform's side in the conformance suite.
- :class:`~providers.kit.conformance.ProviderConformance` is the suite itself:
  subclass it in a test module and supply the ``provider`` and ``gateway``
  fixtures (the pytest plugin ``branchpay_provider_kit`` adds the defaults).
"""

from providers.kit.driver import GatewayDriver, SettleOutcome
from providers.kit.loopback import LoopbackServer

__all__ = ["GatewayDriver", "LoopbackServer", "SettleOutcome"]
