"""A branch's Alipay settings, validated from its table in plugins.toml.

Keys and certificates arrive as text: the config loader resolves
``{ file = ... }`` or ``{ env = ... }`` to the PEM (or, for keys, the bare
base64 that Alipay's key tool and console print) before validation. A branch
uses public-key mode (``alipay_public_key``) or public-key certificate mode
(``app_cert``, ``alipay_cert``, ``alipay_root_cert``), one of the two.

Every key and certificate is parsed here so a bad one fails at config load,
and validation errors never echo the input
(``hide_input_in_errors``), so a key can never leak into an error message.
"""

from __future__ import annotations

from typing import Self

from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field, SecretStr, field_validator, model_validator

from api.plugin import GatewaySettings, KeyFormatError, load_private_key, load_public_key
from providers.alipay.certs import CertificateError, load_certificate, load_certificates

PRODUCTION_GATEWAY = "https://openapi.alipay.com/gateway.do"
SANDBOX_GATEWAY = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"


class AlipaySettings(GatewaySettings):
    """Settings of the ``alipay`` provider for one branch."""

    app_id: str = Field(pattern=r"^[0-9A-Za-z]{1,32}$", description="APPID of the Alipay app")
    private_key: SecretStr = Field(description="the app's RSA2 private key (application key)")
    alipay_public_key: str | None = Field(
        default=None,
        description=(
            "public-key mode: Alipay's public key shown beside the app's key in the console"
        ),
    )
    app_cert: str | None = Field(
        default=None,
        description="certificate mode: the app public key certificate (appCertPublicKey_*.crt)",
    )
    alipay_cert: str | None = Field(
        default=None,
        description=(
            "certificate mode: the Alipay public key certificate (alipayCertPublicKey_RSA2.crt)"
        ),
    )
    alipay_root_cert: str | None = Field(
        default=None,
        description="certificate mode: Alipay's root certificate file (alipayRootCert.crt)",
    )
    seller_id: str | None = Field(
        default=None,
        pattern=r"^2088[0-9]{12}$",
        description="the merchant PID; when set, notifications for another seller are rejected",
    )
    gateway: str = Field(default=PRODUCTION_GATEWAY, description="OpenAPI gateway URL")
    # Third-party app authorization (第三方应用授权): app_id, key and certificates are the
    # service provider's (ISV's) app; these two name the merchant's app that authorized it.
    auth_app_id: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Za-z]{1,32}$",
        description=(
            "ISV mode: APPID of the merchant's app that authorized app_id; notifications "
            "for another are kept aside"
        ),
    )
    app_auth_token: SecretStr | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="ISV mode: the app_auth_token alipay.open.auth.token.app gave for auth_app_id",
    )

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
    def _public_key_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                load_public_key(value)
            except KeyFormatError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("app_cert", "alipay_cert")
    @classmethod
    def _certificate_holds_an_rsa_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                certificate = load_certificate(value)
            except CertificateError as exc:
                raise ValueError(str(exc)) from None
            if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
                raise ValueError("the certificate's key is not RSA (RSA2 needs RSA)")
        return value

    @field_validator("alipay_root_cert")
    @classmethod
    def _root_certificates_parse(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                load_certificates(value)
            except CertificateError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _authorization_is_whole(self) -> Self:
        if (self.auth_app_id is None) != (self.app_auth_token is None):
            raise ValueError(
                "third-party app authorization needs both auth_app_id and app_auth_token"
            )
        return self

    @model_validator(mode="after")
    def _one_key_mode(self) -> Self:
        certs = {"app_cert": self.app_cert, "alipay_cert": self.alipay_cert}
        certs["alipay_root_cert"] = self.alipay_root_cert
        given = [name for name, value in certs.items() if value is not None]
        if self.alipay_public_key is not None and given:
            raise ValueError(
                "give alipay_public_key (public-key mode) or app_cert, alipay_cert and "
                "alipay_root_cert (certificate mode), not both"
            )
        if self.alipay_public_key is None and len(given) < len(certs):
            missing = ", ".join(name for name in certs if name not in given)
            raise ValueError(
                f"give alipay_public_key (public-key mode), or for certificate mode {missing}"
            )
        if self.app_cert is not None:
            app_key = load_certificate(self.app_cert).public_key()
            own = load_private_key(self.private_key.get_secret_value()).public_key()
            if not isinstance(app_key, rsa.RSAPublicKey) or (
                app_key.public_numbers() != own.public_numbers()
            ):
                raise ValueError("app_cert is not the certificate of private_key's public key")
        return self

    @property
    def certificate_mode(self) -> bool:
        """True when the app signs in public-key certificate mode (公钥证书)."""
        return self.app_cert is not None
