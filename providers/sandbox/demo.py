"""The sandbox's demo set-up for ``make run``: a shared secret file and the simulator.

The plugin's ``demo_gateways`` hook hands :data:`DEMO` to the demo. A demo
branch refers to the secret in plugins.toml as
``secret = { file = ".data/secrets/sandbox.key" }`` and to the simulator as
``gateway = { file = ".data/secrets/sandbox.gateway" }``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from starlette.applications import Starlette

from api.plugin import DemoGateway, write_secret
from providers.sandbox.simulator import create_app

SECRET_FILE = "sandbox.key"


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create the shared secret file (mode 0600) unless it exists."""
    write_secret(secrets_dir / SECRET_FILE, secrets.token_urlsafe(32))


def demo_simulator(secrets_dir: Path) -> Starlette:
    """The simulator keyed with the demo secret (created if missing)."""
    ensure_demo_keys(secrets_dir)
    return create_app((secrets_dir / SECRET_FILE).read_bytes().strip())


DEMO = DemoGateway("sandbox", ensure_demo_keys, demo_simulator)
