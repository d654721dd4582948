"""Demo keys and the demo gateway for ``make run``.

``ensure_demo_keys`` writes two RSA key pairs into the secrets directory once:
the app's (the branch signs with its private key, the simulator checks with
its public key) and the simulated platform's (the simulator signs, the branch
checks with ``alipay_public_key``). ``demo_simulator`` builds the simulated
gateway from them; the plugin's ``demo_gateways`` hook hands :data:`DEMO` to
``make run``, which serves it and writes its URL (``.../gateway.do``) to
``.data/secrets/alipay.gateway``.

Each demo branch is its own merchant: :data:`DEMO_SELLERS` gives the app_id
and merchant PID (seller_id) of each, the ones the shipped plugins.toml
uses, so one branch's bill holds only that branch's trades. They all sign with
the one demo app key.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from api.plugin import (
    DemoGateway,
    load_private_key,
    new_private_key,
    private_key_pem,
    public_key_pem,
    write_secret,
)
from providers.alipay.simulator import create_app

APP_PRIVATE_KEY_FILE = "alipay_app_private_key.pem"
APP_PUBLIC_KEY_FILE = "alipay_app_public_key.pem"
PLATFORM_PRIVATE_KEY_FILE = "alipay_platform_private_key.pem"
PLATFORM_PUBLIC_KEY_FILE = "alipay_platform_public_key.pem"

# The demo branches' Alipay apps (app_id -> merchant PID), as in the shipped plugins.toml.
DEMO_SELLERS = {
    "2021000000000001": "2088000000000001",  # zj
    "2021000000000002": "2088000000000002",  # bj
    "2021000000000003": "2088000000000003",  # he
    "2021000000000004": "2088000000000004",  # cq
}


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create the demo key files that are missing (mode 0600)."""
    for private_name, public_name in (
        (APP_PRIVATE_KEY_FILE, APP_PUBLIC_KEY_FILE),
        (PLATFORM_PRIVATE_KEY_FILE, PLATFORM_PUBLIC_KEY_FILE),
    ):
        private_path = secrets_dir / private_name
        if not private_path.exists():
            write_secret(private_path, private_key_pem(new_private_key()))
        key = load_private_key(private_path.read_text())
        write_secret(secrets_dir / public_name, public_key_pem(key.public_key()))


def demo_simulator(secrets_dir: Path) -> Starlette:
    """The simulated Alipay gateway for every demo branch (any app_id, the demo app key).

    The apps of :data:`DEMO_SELLERS` belong to their own merchants; any other
    app to the simulator's default merchant.
    """
    ensure_demo_keys(secrets_dir)
    return create_app(
        apps={},
        alipay_private_key=(secrets_dir / PLATFORM_PRIVATE_KEY_FILE).read_text(),
        any_app_key=(secrets_dir / APP_PUBLIC_KEY_FILE).read_text(),
        sellers=DEMO_SELLERS,
    )


DEMO = DemoGateway("alipay", ensure_demo_keys, demo_simulator, path="/gateway.do")
