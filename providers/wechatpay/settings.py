"""The settings a branch gives the WeChat Pay (API v3) provider in plugins.toml.

Keys arrive as PEM text (the config loader resolves ``{ file = ... }`` and
``{ env = ... }`` before validation). Secret fields are ``SecretStr`` and the
model hides input values in validation errors, so neither ``repr()`` nor an
error message ever shows a key.
"""

from __future__ import annotations

import re

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

PRODUCTION_GATEWAY = "https://api.mch.weixin.qq.com"

_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


def load_merchant_key(pem: str) -> RSAPrivateKey:
    """Parse the merchant's API private key (apiclient_key.pem, PKCS#8 or PKCS#1)."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        # The parser's own message may quote key material: never pass it on.
        raise ValueError("is not a PEM private key without a password") from None
    if not isinstance(key, RSAPrivateKey) or key.key_size < 2048:
        raise ValueError("must be an RSA private key of at least 2048 bits")
    return key


def load_platform_key(pem: str) -> RSAPublicKey:
    """Parse the WeChat Pay platform public key (pub_key.pem from the merchant console)."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError("is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey) or key.key_size < 2048:
        raise ValueError("must be an RSA public key of at least 2048 bits")
    return key


class WechatpaySettings(BaseModel):
    """One branch's WeChat Pay merchant account (direct merchant mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

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
    gateway: str = Field(default=PRODUCTION_GATEWAY, description="API host, no trailing slash")
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    max_attempts: int = Field(
        default=3, ge=1, le=6, description="tries of a call WeChat Pay documents as repeatable"
    )
    backoff_seconds: float = Field(
        default=0.5, ge=0, le=30, description="first pause between tries; doubles each time"
    )

    @field_validator("private_key")
    @classmethod
    def _private_key_parses(cls, value: SecretStr) -> SecretStr:
        load_merchant_key(value.get_secret_value())
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
        load_platform_key(value)
        return value

    @field_validator("gateway")
    @classmethod
    def _gateway_is_a_base_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not _URL.match(value):
            raise ValueError("must be an http(s) base URL such as https://api.mch.weixin.qq.com")
        return value
