"""The demo branch's UnionPay set-up: key files and the simulator on loopback.

The plugin's ``demo_gateways`` hook hands :data:`DEMO` to ``make run``, which
calls :func:`ensure_demo_keys` and serves :func:`demo_simulator` on loopback; a
demo branch's plugins.toml points at the files (see the README). The files are
made with mode 0600 and never committed.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from api.plugin import DemoGateway, load_private_key, write_secret
from providers.unionpay import message, pki
from providers.unionpay.simulator import create_app

DEMO_MER_ID = "777290058110048"
# The demo branches' merchants (merId), as in the shipped plugins.toml: each its own
# bill, all signing with the one demo merchant certificate.
DEMO_MER_IDS = {"yn": DEMO_MER_ID, "he": "777290058110049"}

MERCHANT_KEY = "unionpay_sign_cert_private_key.pem"
MERCHANT_CERT = "unionpay_sign_cert.pem"
MIDDLE_CERT = "unionpay_middle_cert.pem"
ROOT_CERT = "unionpay_root_cert.pem"
PLATFORM_KEY = "unionpay_simulator_sign_key.pem"
PLATFORM_CERT = "unionpay_simulator_sign_cert.pem"
FILES = (MERCHANT_KEY, MERCHANT_CERT, MIDDLE_CERT, ROOT_CERT, PLATFORM_KEY, PLATFORM_CERT)


def ensure_demo_keys(secrets_dir: Path) -> None:
    """Create the demo's certificates and keys unless all of them are there.

    They belong together (one chain), so a partial set is removed and made
    again whole.
    """
    if all((secrets_dir / name).is_file() for name in FILES):
        return
    for name in FILES:
        (secrets_dir / name).unlink(missing_ok=True)
    chain = pki.issue_chain()
    texts = {
        MERCHANT_KEY: pki.key_pem(chain.merchant_key),
        MERCHANT_CERT: pki.cert_pem(chain.merchant_cert),
        MIDDLE_CERT: pki.cert_pem(chain.middle_cert),
        ROOT_CERT: pki.cert_pem(chain.root_cert),
        PLATFORM_KEY: pki.key_pem(chain.platform_key),
        PLATFORM_CERT: pki.cert_pem(chain.platform_cert),
    }
    for name, text in texts.items():
        write_secret(secrets_dir / name, text)


def demo_simulator(secrets_dir: Path) -> Starlette:
    """The simulator, signing as the demo's stand-in UnionPay, knowing the demo merchants."""

    def read(name: str) -> str:
        return (secrets_dir / name).read_text(encoding="ascii")

    return create_app(
        sign_key=load_private_key(read(PLATFORM_KEY)),
        sign_cert=message.load_certificate(read(PLATFORM_CERT)),
        merchants=dict.fromkeys(
            DEMO_MER_IDS.values(), message.load_certificate(read(MERCHANT_CERT))
        ),
    )


DEMO = DemoGateway("unionpay", ensure_demo_keys, demo_simulator)
