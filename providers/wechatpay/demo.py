"""Demo keys and the demo simulator, so ``make run`` pays end to end on loopback.

:func:`ensure_demo_keys` writes (once, mode 0600) the merchant key pair, the
simulated platform key pair and an APIv3 key under the secrets directory; a
demo branch refers to them from plugins.toml as ``{ file = ".data/secrets/..." }``
together with the ``DEMO_*`` ids below. :func:`demo_simulator` builds the
simulator from the same files; ``make run`` serves it on ``DEMO_PORT``.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from api.plugin import load_private_key, load_public_key
from providers.wechatpay.simulator import WECHAT_REDELIVERY_DELAYS, Merchant, create_app

DEMO_PORT = 8011
DEMO_MCHID = "1900000109"
DEMO_APPID = "wxd678efh567hg6787"
DEMO_CERT_SERIAL_NO = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
DEMO_PLATFORM_PUBLIC_KEY_ID = "PUB_KEY_ID_0119000001092025112500000000"

MERCHANT_KEY_FILE = "wechatpay_merchant_key.pem"
MERCHANT_PUBLIC_FILE = "wechatpay_merchant_public.pem"
PLATFORM_KEY_FILE = "wechatpay_platform_key.pem"
PLATFORM_PUBLIC_FILE = "wechatpay_platform_public.pem"
APIV3_KEY_FILE = "wechatpay_apiv3.key"


def _write_secret(path: Path, content: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def _key_pair(secrets_dir: Path, private_name: str, public_name: str) -> None:
    private_path = secrets_dir / private_name
    if not private_path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_secret(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    public_path = secrets_dir / public_name
    if not public_path.exists():
        key = load_private_key(private_path.read_text())
        _write_secret(
            public_path,
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create whatever demo key file is missing; existing files are left alone."""
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _key_pair(secrets_dir, MERCHANT_KEY_FILE, MERCHANT_PUBLIC_FILE)
    _key_pair(secrets_dir, PLATFORM_KEY_FILE, PLATFORM_PUBLIC_FILE)
    apiv3_path = secrets_dir / APIV3_KEY_FILE
    if not apiv3_path.exists():
        alphabet = string.ascii_letters + string.digits
        _write_secret(apiv3_path, "".join(secrets.choice(alphabet) for _ in range(32)).encode())


def demo_simulator(secrets_dir: Path) -> Starlette:
    """The simulator for the demo merchant, keyed from the files in ``secrets_dir``."""
    merchant = Merchant(
        mchid=DEMO_MCHID,
        appid=DEMO_APPID,
        public_key=load_public_key((secrets_dir / MERCHANT_PUBLIC_FILE).read_text()),
        cert_serial_no=DEMO_CERT_SERIAL_NO,
        apiv3_key=(secrets_dir / APIV3_KEY_FILE).read_text().strip().encode(),
    )
    return create_app(
        merchants=[merchant],
        platform_private_key=load_private_key((secrets_dir / PLATFORM_KEY_FILE).read_text()),
        platform_public_key_id=DEMO_PLATFORM_PUBLIC_KEY_ID,
        redelivery_delays=WECHAT_REDELIVERY_DELAYS,
    )
