"""Example Pay in ``make run``: a demo API key and the simulator keyed with it.

The plugin's ``demo_gateways`` hook hands :data:`DEMO` to branchpay's demo,
exactly as the built-in providers do. A demo branch then says::

    [branches.zj.providers.example]
    enabled = true
    merchant_id = "M100200300"
    api_key = { file = ".data/secrets/example.key" }
    gateway = { file = ".data/secrets/example.gateway" }
"""

from __future__ import annotations

import secrets
from pathlib import Path

from starlette.applications import Starlette

from api.plugin import DemoGateway, write_secret
from branchpay_example_provider.simulator import create_app

DEMO_MERCHANT_ID = "M100200300"
API_KEY_FILE = "example.key"


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create the demo API key (mode 0600) unless it exists."""
    write_secret(secrets_dir / API_KEY_FILE, secrets.token_urlsafe(32))


def demo_simulator(secrets_dir: Path) -> Starlette:
    ensure_demo_keys(secrets_dir)
    return create_app(DEMO_MERCHANT_ID, (secrets_dir / API_KEY_FILE).read_bytes().strip())


DEMO = DemoGateway("example", ensure_demo_keys, demo_simulator)
