"""The sandbox's demo set-up for ``make run``: a shared secret file and the simulator.

``api.dev.demo`` calls :func:`ensure_demo_keys` and :func:`demo_simulator`.

A demo branch refers to the secret in plugins.toml as
``secret = { file = ".data/secrets/sandbox.key" }`` and to the simulator as
``gateway = "http://127.0.0.1:8009"``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from starlette.applications import Starlette

from providers.sandbox.simulator import create_app

DEMO_PORT = 8009
SECRET_FILE = "sandbox.key"


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create the shared secret file (mode 0600) unless it exists."""
    demo_secret_file(secrets_dir)


def demo_secret_file(secrets_dir: Path) -> Path:
    """The shared secret's path, creating the file (mode 0600) if missing."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    path = secrets_dir / SECRET_FILE
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path


def demo_simulator(secrets_dir: Path) -> Starlette:
    """The simulator keyed with the demo secret (created if missing)."""
    secret = demo_secret_file(secrets_dir).read_bytes().strip()
    return create_app(secret)
