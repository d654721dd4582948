"""A branch's Alipay settings, validated from its table in plugins.toml.

Keys arrive as text: the config loader resolves ``{ file = ... }`` or
``{ env = ... }`` to the PEM (or the bare base64 that Alipay's key tool and
console print) before validation. Every key is parsed here so a bad key fails
at config load, and validation errors never echo the input
(``hide_input_in_errors``), so a key can never leak into an error message.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from api.plugin import GatewaySettings, KeyFormatError, load_private_key, load_public_key

PRODUCTION_GATEWAY = "https://openapi.alipay.com/gateway.do"
SANDBOX_GATEWAY = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"


class AlipaySettings(GatewaySettings):
    """Settings of the ``alipay`` provider for one branch."""

    app_id: str = Field(pattern=r"^[0-9A-Za-z]{1,32}$", description="APPID of the Alipay app")
    private_key: SecretStr = Field(description="the app's RSA2 private key (application key)")
    alipay_public_key: str = Field(
        description="Alipay's public key shown beside the app's key in the console"
    )
    seller_id: str | None = Field(
        default=None,
        pattern=r"^2088[0-9]{12}$",
        description="the merchant PID; when set, notifications for another seller are rejected",
    )
    gateway: str = Field(default=PRODUCTION_GATEWAY, description="OpenAPI gateway URL")

    @field_validator("private_key")
    @classmethod
    def _private_key_parses(cls, value: SecretStr) -> SecretStr:
        try:
            load_private_key(value.get_secret_value())
        except KeyFormatError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("alipay_public_key")
    @classmethod
    def _public_key_parses(cls, value: str) -> str:
        try:
            load_public_key(value)
        except KeyFormatError as exc:
            raise ValueError(str(exc)) from None
        return value
