"""Demo keys and the demo simulator, so ``make run`` pays end to end on loopback.

:func:`ensure_demo_keys` writes (once, mode 0600) the merchant key pair, the
simulated platform key pair and an APIv3 key under the secrets directory; a
demo branch refers to them from plugins.toml as ``{ file = ".data/secrets/..." }``
together with the ``DEMO_*`` ids below: each demo branch is its own merchant
(:data:`DEMO_MCHIDS`, so one branch's bill holds only its own payments), all
sharing the demo keys and the app. :func:`demo_simulator` builds the
simulator from the same files; the plugin's ``demo_gateways`` hook hands
:data:`DEMO` to ``make run``.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path

from starlette.applications import Starlette

from api.plugin import (
    DemoGateway,
    load_private_key,
    load_public_key,
    new_private_key,
    private_key_pem,
    public_key_pem,
    write_secret,
)
from providers.wechatpay.simulator import WECHAT_REDELIVERY_DELAYS, Merchant, create_app

DEMO_MCHID = "1900000109"
# The demo branches' merchant ids (mchid), as in the shipped plugins.toml.
DEMO_MCHIDS = {"bj": DEMO_MCHID, "sc": "1900000110"}
DEMO_APPID = "wxd678efh567hg6787"
DEMO_CERT_SERIAL_NO = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
DEMO_PLATFORM_PUBLIC_KEY_ID = "PUB_KEY_ID_0119000001092025112500000000"

MERCHANT_KEY_FILE = "wechatpay_merchant_key.pem"
MERCHANT_PUBLIC_FILE = "wechatpay_merchant_public.pem"
PLATFORM_KEY_FILE = "wechatpay_platform_key.pem"
PLATFORM_PUBLIC_FILE = "wechatpay_platform_public.pem"
APIV3_KEY_FILE = "wechatpay_apiv3.key"


def _key_pair(secrets_dir: Path, private_name: str, public_name: str) -> None:
    private_path = secrets_dir / private_name
    if not private_path.exists():
        write_secret(private_path, private_key_pem(new_private_key()))
    key = load_private_key(private_path.read_text())
    write_secret(secrets_dir / public_name, public_key_pem(key.public_key()))


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create whatever demo key file is missing; existing files are left alone."""
    _key_pair(secrets_dir, MERCHANT_KEY_FILE, MERCHANT_PUBLIC_FILE)
    _key_pair(secrets_dir, PLATFORM_KEY_FILE, PLATFORM_PUBLIC_FILE)
    alphabet = string.ascii_letters + string.digits
    write_secret(secrets_dir / APIV3_KEY_FILE, "".join(secrets.choice(alphabet) for _ in range(32)))


def demo_simulator(secrets_dir: Path) -> Starlette:
    """The simulator for the demo merchants, keyed from the files in ``secrets_dir``."""
    public_key = load_public_key((secrets_dir / MERCHANT_PUBLIC_FILE).read_text())
    apiv3_key = (secrets_dir / APIV3_KEY_FILE).read_text().strip().encode()
    merchants = [
        Merchant(
            mchid=mchid,
            appid=DEMO_APPID,
            public_key=public_key,
            cert_serial_no=DEMO_CERT_SERIAL_NO,
            apiv3_key=apiv3_key,
        )
        for mchid in dict.fromkeys(DEMO_MCHIDS.values())
    ]
    return create_app(
        merchants=merchants,
        platform_private_key=load_private_key((secrets_dir / PLATFORM_KEY_FILE).read_text()),
        platform_public_key_id=DEMO_PLATFORM_PUBLIC_KEY_ID,
        redelivery_delays=WECHAT_REDELIVERY_DELAYS,
    )


DEMO = DemoGateway("wechatpay", ensure_demo_keys, demo_simulator)
