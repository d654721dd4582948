"""The gateway simulators that ``make run`` starts beside the API, so the demo pays end to end.

They are found through the ``demo_gateways`` plugin hook, the built-in providers'
and any installed third-party provider's alike. Each demo gateway creates its
keys under ``.data/secrets``; its simulator is served on loopback (the port
``BRANCHPAY_SIMULATOR_PORT`` plus its place in provider-name order, or a free
port when that setting is 0) and its URL written to
``.data/secrets/<provider>.gateway``, which the shipped plugins.toml reads.

The demo's simulators publish the current Beijing day's bill so far (the
simulator kit's ``BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY`` setting, turned on
here unless it is set), so ``branchpay reconcile bills`` can reconcile today's
demo payments without waiting for the platforms' D+1.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pluggy
from rich.console import Console

from api.plugins.demo import DemoGateway


def demo_gateways(plugins: pluggy.PluginManager) -> list[DemoGateway]:
    """Every installed plugin's demo gateways, in provider-name order."""
    found = [gateway for result in plugins.hook.demo_gateways() for gateway in result]
    return sorted(found, key=lambda gateway: gateway.provider)


def ports(gateways: list[DemoGateway], base: int) -> dict[str, int]:
    """provider -> the port its simulator asks for (0: any free port)."""
    return {g.provider: base + index if base else 0 for index, g in enumerate(gateways)}


def ensure_demo_keys(plugins: pluggy.PluginManager, secrets_dir: Path, base_port: int) -> None:
    """Create each demo gateway's keys, and its gateway file unless one is there already."""
    gateways = demo_gateways(plugins)
    wanted = ports(gateways, base_port)
    for gateway in gateways:
        gateway.ensure_keys(secrets_dir)
        if not gateway.gateway_file(secrets_dir).exists():
            # Until its simulator runs, a gateway file names the port it will ask for,
            # so `branchpay config check` reads the demo configuration as valid.
            gateway.write_gateway(secrets_dir, f"http://127.0.0.1:{wanted[gateway.provider] or 1}")


def start_demo_simulators(
    plugins: pluggy.PluginManager,
    secrets_dir: Path,
    base_port: int,
    stack: contextlib.ExitStack,
    console: Console,
) -> dict[str, str]:
    """Serve every demo gateway's simulator until ``stack`` closes; provider -> its URL."""
    from providers.kit.bills import CURRENT_DAY_ENV
    from providers.kit.loopback import LoopbackServer

    # Before any simulator is made: a simulator's bill book reads it when created.
    os.environ.setdefault(CURRENT_DAY_ENV, "1")
    gateways = demo_gateways(plugins)
    wanted = ports(gateways, base_port)
    started: dict[str, str] = {}
    for gateway in gateways:
        port = wanted[gateway.provider]
        gateway.ensure_keys(secrets_dir)
        app = gateway.simulator(secrets_dir)
        try:
            server = stack.enter_context(LoopbackServer(app, port=port))
        except OSError as error:
            console.print(
                f"[yellow]{gateway.provider} simulator not started: port {port} is taken"
                f" ({error}); set BRANCHPAY_SIMULATOR_PORT to move them, 0 for free ports[/yellow]"
            )
            continue
        gateway.write_gateway(secrets_dir, server.url)
        started[gateway.provider] = server.url
        console.print(f"{gateway.provider} gateway simulator on {server.url}")
    return started
