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
- The simulator toolkit (:mod:`providers.kit.simulator`): :class:`Notifier`
  delivers notifications to loopback targets only, signed per try, with
  bounded retries; :class:`FaultQueue` and :class:`Fault` inject failures;
  :func:`pay_page` and :func:`page` render the payer's pages. A simulator
  keeps only its platform's wire format.
- Daily bills (:mod:`providers.kit.bills`): :class:`BillBook` is a simulator's
  ledger of completed payments and refunds, when each day's bill is published,
  and the adjustments tests make to a bill; :func:`bill_routes` are their controls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from providers.kit.bills import BillBook, BillEntry, bill_routes
from providers.kit.driver import CodeBehaviour, GatewayDriver, SettleOutcome
from providers.kit.loopback import LoopbackServer
from providers.kit.simulator import (
    Delivery,
    Fault,
    FaultQueue,
    Notifier,
    Signer,
    control_routes,
    is_loopback_url,
    page,
    pay_page,
)

if TYPE_CHECKING:
    from providers.kit.conformance import ProviderConformance

__all__ = [
    "BillBook",
    "BillEntry",
    "CodeBehaviour",
    "Delivery",
    "Fault",
    "FaultQueue",
    "GatewayDriver",
    "LoopbackServer",
    "Notifier",
    "ProviderConformance",
    "SettleOutcome",
    "Signer",
    "bill_routes",
    "control_routes",
    "is_loopback_url",
    "page",
    "pay_page",
]


def __getattr__(name: str) -> Any:
    if name == "ProviderConformance":
        from providers.kit.conformance import ProviderConformance

        return ProviderConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
