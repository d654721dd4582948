"""What a provider plugin adds to ``branchpay serve --demo`` (``make run``): its demo gateway.

A plugin implements the ``demo_gateways`` hook (see :mod:`api.plugins.hookspecs`)
and returns one :class:`DemoGateway` per provider. The demo creates each one's
keys under the secrets directory, serves its simulator on loopback and writes
the simulator's URL to ``<secrets>/<provider>.gateway``, which a demo branch in
plugins.toml reads with ``gateway = { file = ".data/secrets/<provider>.gateway" }``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp


@dataclass(frozen=True, slots=True)
class DemoGateway:
    """One provider's demo: its keys, its simulator and where its gateway URL goes."""

    provider: str  # the provider's ``name``; the URL goes to ``<secrets>/<provider>.gateway``
    ensure_keys: Callable[[Path], None]  # create the demo key files under the secrets dir, once
    simulator: Callable[[Path], ASGIApp]  # the simulator, keyed from those files
    path: str = ""  # what the adapter's ``gateway`` adds to the simulator's URL, e.g. "/gateway.do"

    def gateway_file(self, secrets_dir: Path) -> Path:
        return secrets_dir / f"{self.provider}.gateway"

    def write_gateway(self, secrets_dir: Path, base_url: str) -> Path:
        """Record the running simulator's URL for plugins.toml (replaced atomically)."""
        path = self.gateway_file(secrets_dir)
        handle, temporary = tempfile.mkstemp(dir=secrets_dir, prefix=f".{self.provider}.")
        with os.fdopen(handle, "w") as out:
            out.write(base_url.rstrip("/") + self.path + "\n")
        os.replace(temporary, path)
        return path


def write_secret(path: Path, content: str | bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``content``; False, untouched, if it exists.

    The file is never readable by others, not even for a moment (it is created
    0600), and an existing file is never overwritten: a demo key once made stays.
    The parent directory is created (0700) if missing.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    data = content.encode() if isinstance(content, str) else content
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    return True
