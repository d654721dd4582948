"""Demo keys and the demo gateway for ``make run``.

``ensure_demo_keys`` writes two RSA key pairs into the secrets directory once:
the app's (the branch signs with its private key, the simulator checks with
its public key) and the simulated platform's (the simulator signs, the branch
checks with ``alipay_public_key``). ``demo_simulator`` builds the simulated
gateway from them; ``make run`` serves it on 127.0.0.1:8010.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from api.plugin import load_private_key, private_key_pem, public_key_pem
from providers.alipay.simulator import create_app

DEMO_PORT = 8010
DEMO_GATEWAY = f"http://127.0.0.1:{DEMO_PORT}/gateway.do"

APP_PRIVATE_KEY_FILE = "alipay_app_private_key.pem"
APP_PUBLIC_KEY_FILE = "alipay_app_public_key.pem"
PLATFORM_PRIVATE_KEY_FILE = "alipay_platform_private_key.pem"
PLATFORM_PUBLIC_KEY_FILE = "alipay_platform_public_key.pem"


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create the demo key files that are missing (private files mode 0600)."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for private_name, public_name in (
        (APP_PRIVATE_KEY_FILE, APP_PUBLIC_KEY_FILE),
        (PLATFORM_PRIVATE_KEY_FILE, PLATFORM_PUBLIC_KEY_FILE),
    ):
        private_path = secrets_dir / private_name
        if private_path.exists():
            key = load_private_key(private_path.read_text())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_private(private_path, private_key_pem(key))
        public_path = secrets_dir / public_name
        if not public_path.exists():
            public_path.write_text(public_key_pem(key.public_key()))
            public_path.chmod(0o600)


def _write_private(path: Path, text: str) -> None:
    # Created with 0600 from the start: the key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def demo_simulator(secrets_dir: Path) -> Starlette:
    """The simulated Alipay gateway for every demo branch (any app_id, the demo app key)."""
    ensure_demo_keys(secrets_dir)
    return create_app(
        apps={},
        alipay_private_key=(secrets_dir / PLATFORM_PRIVATE_KEY_FILE).read_text(),
        any_app_key=(secrets_dir / APP_PUBLIC_KEY_FILE).read_text(),
    )
