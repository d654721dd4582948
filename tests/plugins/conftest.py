"""Tiny provider plugins and plugins.toml builders for the plugin runtime's tests.

The providers here are defined by the tests themselves and registered on a
plugin manager the test builds, so the runtime is tested without depending on
any real adapter. ``cardpay`` checks its private key really is a PEM key (keys
are generated per run with cryptography); ``wallet`` marks a plain ``str``
field secret through ``json_schema_extra``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pluggy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, Field, SecretBytes, SecretStr, field_validator

from api.plugins import hookimpl
from api.plugins.contract import PaymentMethod, Provider
from api.plugins.manager import installed_providers, new_plugin_manager


class Limits(BaseModel):
    max_fen: int = Field(default=100_000, gt=0)


class CardSettings(BaseModel):
    merchant_id: str = Field(pattern=r"^[0-9]{6}$")
    gateway: str
    private_key: SecretStr
    limits: Limits = Limits()

    @field_validator("private_key")
    @classmethod
    def _is_pem_key(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        try:
            serialization.load_pem_private_key(text.encode(), password=None)
        except ValueError:
            # Deliberately careless: quotes the key, which the loader must never show.
            raise ValueError(f"not a PEM private key: {text[:40]}") from None
        return value


class CardPay(Provider):
    name = "cardpay"
    display_name = "Card Pay"
    methods = (PaymentMethod.PAGE, PaymentMethod.QR_CODE)
    Settings = CardSettings


class WalletSettings(BaseModel):
    app_id: str
    signing_key: str = Field(json_schema_extra={"secret": True})
    certificate: SecretBytes | None = None
    region: str = "cn"


class WalletPay(Provider):
    name = "wallet"
    display_name = "Wallet"
    methods = (PaymentMethod.WAP,)
    Settings = WalletSettings


class DemoPlugin:
    @hookimpl
    def register_providers(self) -> list[type[Provider]]:
        return [CardPay, WalletPay]


@pytest.fixture
def pm() -> pluggy.PluginManager:
    manager = new_plugin_manager()
    manager.register(DemoPlugin(), name="demo")
    return manager


@pytest.fixture
def providers(pm: pluggy.PluginManager) -> dict[str, type[Provider]]:
    return installed_providers(pm)


@pytest.fixture(scope="session")
def pem_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


VALID = """\
# Zhejiang prefers cards.
[branches.zj]
name = "China Mobile Zhejiang"
province = "Zhejiang"
operator = "China Mobile"

[branches.zj.providers.cardpay]
enabled = true   # the branch's first choice
merchant_id = "100001"
gateway = "http://127.0.0.1:9/card"
private_key = { file = "secrets/card.pem" }

[branches.zj.providers.wallet]
enabled = false
app_id = "wallet-zj"
signing_key = { env = "BP_TEST_WALLET_KEY" }

[branches.bj]
name = "China Telecom Beijing"
province = "Beijing"
operator = "China Telecom"

[branches.bj.providers.wallet]
enabled = true
app_id = "wallet-bj"
signing_key = { env = "BP_TEST_WALLET_KEY" }

[branches.bj.providers.cardpay]
enabled = true
merchant_id = "100002"
gateway = "http://127.0.0.1:9/card"
private_key = { file = "secrets/card.pem" }
"""

WALLET_KEY = "wallet-signing-key-0123456789"


@pytest.fixture
def valid_text() -> str:
    """Two branches, each with both providers, in different orders; one disabled."""
    return VALID


@pytest.fixture
def wallet_key() -> str:
    return WALLET_KEY


@pytest.fixture
def config_dir(tmp_path: Path, pem_key: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the secrets VALID refers to (the env one set too)."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "card.pem").write_text(pem_key)
    monkeypatch.setenv("BP_TEST_WALLET_KEY", WALLET_KEY)
    return tmp_path


@pytest.fixture
def write_config(config_dir: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = config_dir / "plugins.toml"
        path.write_text(text)
        return path

    return write
