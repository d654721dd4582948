"""The settings a branch gives the WeChat Pay (API v3) provider in plugins.toml.

Keys arrive as PEM text (the config loader resolves ``{ file = ... }`` and
``{ env = ... }`` before validation). Secret fields are ``SecretStr`` and the
model hides input values in validation errors, so neither ``repr()`` nor an
error message ever shows a key.
"""

from __future__ import annotations

import re

from cryptography import x509
from pydantic import Field, SecretStr, field_validator, model_validator

from api.plugin import GatewaySettings, load_private_key, load_public_key

PRODUCTION_GATEWAY = "https://api.mch.weixin.qq.com"

_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


class WechatpaySettings(GatewaySettings):
    """One branch's WeChat Pay merchant account (direct, or partner mode with ``sub_mchid``)."""

    mchid: str = Field(pattern=r"^[0-9]{1,32}$", description="merchant id (商户号)")
    appid: str = Field(
        pattern=r"^[0-9A-Za-z_]{1,32}$",
        description="the AppID bound to the merchant (official account, mini program or app)",
    )
    private_key: SecretStr = Field(description="merchant API private key, PEM (apiclient_key.pem)")
    cert_serial_no: str = Field(
        pattern=r"^[0-9A-Fa-f]{1,64}$", description="serial number of the merchant API certificate"
    )
    apiv3_key: SecretStr = Field(description="APIv3 key: 32 characters, decrypts callbacks")
    platform_public_key: str = Field(description="WeChat Pay platform public key, PEM")
    platform_public_key_id: str = Field(
        pattern=r"^[0-9A-Za-z_]{1,64}$", description="its id, e.g. PUB_KEY_ID_0112..."
    )
    platform_certificates: str | None = Field(
        default=None,
        description=(
            "WeChat Pay platform certificates, PEM (one or more), for a merchant still "
            "switching from certificates to the public key; each verifies what names its serial"
        ),
    )
    sub_mchid: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,32}$",
        description=(
            "partner (服务商) mode: the sub-merchant (特约商户) id; mchid and appid are then "
            "the service provider's (sp_mchid, sp_appid)"
        ),
    )
    sub_appid: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Za-z_]{1,32}$",
        description="partner mode: the sub-merchant's own AppID, when its payers use it",
    )
    gateway: str = Field(default=PRODUCTION_GATEWAY, description="API host, no trailing slash")
    backoff_seconds: float = Field(
        default=0.5, ge=0, le=30, description="first pause between tries; doubles each time"
    )

    @field_validator("private_key")
    @classmethod
    def _private_key_parses(cls, value: SecretStr) -> SecretStr:
        load_private_key(value.get_secret_value())
        return value

    @field_validator("apiv3_key")
    @classmethod
    def _apiv3_key_is_32_bytes(cls, value: SecretStr) -> SecretStr:
        # A key file usually ends in a newline; the key itself never has whitespace.
        value = SecretStr(value.get_secret_value().strip())
        if len(value.get_secret_value().encode()) != 32:
            raise ValueError("must be exactly 32 bytes (the APIv3 key set in the merchant console)")
        return value

    @field_validator("platform_public_key")
    @classmethod
    def _platform_key_parses(cls, value: str) -> str:
        load_public_key(value)
        return value

    @field_validator("platform_certificates")
    @classmethod
    def _certificates_parse(cls, value: str | None) -> str | None:
        if value is not None:
            platform_certificates(value)
        return value

    @model_validator(mode="after")
    def _sub_appid_needs_sub_mchid(self) -> WechatpaySettings:
        if self.sub_appid is not None and self.sub_mchid is None:
            raise ValueError("sub_appid is a partner-mode setting: give sub_mchid too")
        return self

    @field_validator("gateway")
    @classmethod
    def _gateway_is_a_base_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not _URL.match(value):
            raise ValueError("must be an http(s) base URL such as https://api.mch.weixin.qq.com")
        return value


def platform_certificates(pem: str) -> list[x509.Certificate]:
    """The certificates in ``pem``; ValueError when there is none or one does not parse."""
    try:
        found = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise ValueError("must be PEM X.509 certificates (the platform certificates)") from None
    return found


def certificate_serial(certificate: x509.Certificate) -> str:
    """The serial as WeChat Pay writes it in Wechatpay-Serial: uppercase hex."""
    return format(certificate.serial_number, "X")
