"""Every hook a branchpay plugin can implement, in one place.

A plugin is any module or object registered under the entry-point group
``branchpay.providers`` (the built-in providers are registered the same way).
Implement a hook by decorating a function of the same name with
``api.plugins.hookimpl``::

    from api.plugins import hookimpl

    @hookimpl
    def register_providers():
        return [MyProvider]

Lifecycle hooks are notifications: they run after the change is stored, each
implementation on its own; one that raises is logged and never breaks the
payment flow. They are called synchronously on the event loop, so keep them
quick (hand slow work to a queue of your own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from api.plugins.contract import Provider
    from api.plugins.demo import DemoGateway

PROJECT = "branchpay"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_providers() -> list[type[Provider]]:  # type: ignore[empty-body]
    """Return the provider classes this plugin ships.

    Called once when plugins are loaded. Each class is a subclass of
    ``api.plugins.contract.Provider`` with a unique ``name``.

    Example::

        @hookimpl
        def register_providers():
            return [AlipayProvider]
    """


@hookspec
def demo_gateways() -> list[DemoGateway]:  # type: ignore[empty-body]
    """Return the demo gateway of each provider this plugin ships, for ``make run``.

    Called by ``branchpay serve --demo`` only, never in production. For each
    :class:`~api.plugin.DemoGateway` the demo calls ``ensure_keys(secrets_dir)``
    (create the demo key files, e.g. with :func:`~api.plugin.write_secret`),
    serves ``simulator(secrets_dir)`` on loopback (port
    ``BRANCHPAY_SIMULATOR_PORT`` plus the gateway's place in name order; 0 means
    free ports) and writes its URL plus ``path`` to
    ``<secrets_dir>/<provider>.gateway``. A demo branch in plugins.toml then says
    ``gateway = { file = ".data/secrets/<provider>.gateway" }``.

    Parameters: none. Import the simulator inside the hook, so production never
    loads it.

    Example::

        @hookimpl
        def demo_gateways():
            from mypay.demo import ensure_demo_keys, demo_simulator

            return [DemoGateway("mypay", ensure_demo_keys, demo_simulator, path="/api")]
    """


@hookspec
def order_created(order: Mapping[str, Any]) -> None:
    """An order was created (not called again for an idempotent repeat).

    ``order`` is the stored order document (read-only).
    """


@hookspec
def payment_succeeded(order: Mapping[str, Any], payment: Mapping[str, Any]) -> None:
    """An attempt was paid and the order turned PAID."""


@hookspec
def refund_succeeded(
    order: Mapping[str, Any], payment: Mapping[str, Any], refund: Mapping[str, Any]
) -> None:
    """A refund of an attempt succeeded at the platform."""


@hookspec
def order_expired(order: Mapping[str, Any]) -> None:
    """An unpaid order passed ``expiresAt`` and turned EXPIRED."""
