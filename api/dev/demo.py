"""The gateway simulators that ``make run`` starts beside the API, so the demo pays end to end.

Each built-in provider with a ``demo`` module creates its demo keys under
``.data/secrets`` (which the shipped plugins.toml refers to) and serves its
simulator on a fixed loopback port (the provider's ``gateway`` setting there).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from rich.console import Console

# provider -> loopback port of its simulator (the `gateway` in plugins.toml)
DEMO_PORTS = {"sandbox": 8009, "alipay": 8010, "wechatpay": 8011, "unionpay": 8012}


def _demo_modules() -> Iterator[tuple[str, int, ModuleType]]:
    for name, port in DEMO_PORTS.items():
        try:
            yield name, port, importlib.import_module(f"providers.{name}.demo")
        except ModuleNotFoundError:
            continue


def ensure_demo_keys(secrets_dir: Path) -> None:
    for _, _, demo in _demo_modules():
        demo.ensure_demo_keys(secrets_dir)


def start_demo_simulators(secrets_dir: Path, stack: contextlib.ExitStack, console: Console) -> None:
    from providers.kit.loopback import LoopbackServer

    for name, port, demo in _demo_modules():
        app = demo.demo_simulator(secrets_dir)
        try:
            server = stack.enter_context(LoopbackServer(app, port=port))
        except OSError as error:
            console.print(
                f"[yellow]{name} simulator not started: port {port} is taken ({error})[/yellow]"
            )
            continue
        console.print(f"{name} gateway simulator on {server.url}")
