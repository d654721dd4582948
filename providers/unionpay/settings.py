"""The settings a branch gives the UnionPay (ACP 5.1.0 online gateway) provider in plugins.toml.

Names follow the gateway's own SDK configuration (``acpsdk.signCert``,
``acpsdk.middleCert``, ``acpsdk.rootCert``, ``acpsdk.ifValidateCNName``,
``merId``). Certificates and keys arrive as PEM text (the config loader
resolves ``{ file = ... }`` and ``{ env = ... }`` before validation). The
signing key is a ``SecretStr`` and the model hides input values in validation
errors, so neither ``repr()`` nor an error message ever shows it.
"""

from __future__ import annotations

from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pydantic import Field, SecretStr, field_validator, model_validator

from api.plugin import GatewaySettings, load_private_key
from providers.unionpay import message

PRODUCTION_GATEWAY = "https://gateway.95516.com"
TEST_GATEWAY = "https://gateway.test.95516.com"
# The file transfer interface (对账文件下载): POST to the origin's root path.
PRODUCTION_FILE_TRANSFER = "https://filedownload.95516.com"
TEST_FILE_TRANSFER = "https://filedownload.test.95516.com"


def load_cert(pem: str) -> x509.Certificate:
    try:
        return message.load_certificate(pem)
    except message.SignatureInvalid:
        raise ValueError("is not a PEM X.509 certificate") from None


class UnionpaySettings(GatewaySettings):
    """One branch's UnionPay merchant (商户直连接入, accessType 0)."""

    mer_id: str = Field(
        pattern=r"^[0-9A-Za-z]{15}$", description="merId, the 15-character 商户代码"
    )
    sign_cert: str = Field(
        description="the merchant signing certificate, PEM (the certificate inside the .pfx); "
        "its serial number is the certId sent with every request"
    )
    sign_cert_private_key: SecretStr = Field(
        description="the private key of the signing certificate, PEM without a password"
    )
    middle_cert: str = Field(description="UnionPay's middle certificate, PEM (acp_prod_middle.cer)")
    root_cert: str = Field(description="UnionPay's root certificate, PEM (acp_prod_root.cer)")
    validate_cn_name: bool = Field(
        default=True,
        description="require the owner 中国银联股份有限公司 in signPubKeyCert; false also "
        "accepts the test environment's 00040000:SIGN",
    )
    gateway: str = Field(
        default=PRODUCTION_GATEWAY,
        pattern=r"^https?://[^\s/?#]+$",
        description="gateway origin, no path, no trailing slash",
    )
    backoff_seconds: float = Field(
        default=0.5, ge=0, le=30, description="first pause between tries; doubles each time"
    )
    file_transfer: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/?#]+$",
        description="file transfer (对账文件下载) origin, no path, no trailing slash; default "
        "https://filedownload.95516.com, or https://filedownload.test.95516.com when gateway "
        "is the test gateway",
    )

    @property
    def file_transfer_url(self) -> str:
        """Where the file transfer request goes: the origin's root path."""
        origin = self.file_transfer or (
            TEST_FILE_TRANSFER if self.gateway == TEST_GATEWAY else PRODUCTION_FILE_TRANSFER
        )
        return origin + "/"

    @field_validator("sign_cert_private_key")
    @classmethod
    def _sign_key_parses(cls, value: SecretStr) -> SecretStr:
        load_private_key(value.get_secret_value())
        return value

    @field_validator("sign_cert", "middle_cert", "root_cert")
    @classmethod
    def _cert_parses(cls, value: str) -> str:
        load_cert(value)
        return value

    @model_validator(mode="after")
    def _key_belongs_to_cert(self) -> Self:
        public = load_cert(self.sign_cert).public_key()
        key = load_private_key(self.sign_cert_private_key.get_secret_value())
        if not isinstance(public, RSAPublicKey) or public.public_numbers() != (
            key.public_key().public_numbers()
        ):
            raise ValueError("sign_cert_private_key does not belong to sign_cert")
        return self
