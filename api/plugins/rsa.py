"""RSA keys as the platforms hand them out: PEM, or the bare base64 their consoles print.

Alipay, WeChat Pay and UnionPay all sign with RSA 2048 (SHA256withRSA); each
adapter and simulator loads its keys here. A :class:`KeyFormatError` never
quotes the key, so a settings validator can pass its message on as it is.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

MIN_KEY_BITS = 2048


class KeyFormatError(ValueError):
    """A key could not be loaded; the message never quotes the key."""


def load_private_key(text: str, *, min_bits: int = MIN_KEY_BITS) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key from PEM (PKCS#1 or PKCS#8) or bare base64 DER."""
    data = text.strip()
    try:
        if data.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(data.encode("ascii"), password=None)
        else:
            key = serialization.load_der_private_key(_bare_base64(data), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise KeyFormatError("not a readable unencrypted RSA private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFormatError("not an RSA private key")
    _check_size(key.key_size, min_bits)
    return key


def load_public_key(text: str, *, min_bits: int = MIN_KEY_BITS) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (SubjectPublicKeyInfo) or bare base64 DER."""
    data = text.strip()
    try:
        if data.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(data.encode("ascii"))
        else:
            key = serialization.load_der_public_key(_bare_base64(data))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise KeyFormatError("not a readable RSA public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFormatError("not an RSA public key")
    _check_size(key.key_size, min_bits)
    return key


def new_private_key() -> rsa.RSAPrivateKey:
    """A fresh RSA 2048 key (for demo keys, simulators and tests)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    """PKCS#8 PEM text of ``key``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_key_pem(key: rsa.RSAPublicKey) -> str:
    """SubjectPublicKeyInfo PEM text of ``key``."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _check_size(bits: int, min_bits: int) -> None:
    if bits < min_bits:
        raise KeyFormatError(f"RSA key shorter than {min_bits} bits")


def _bare_base64(data: str) -> bytes:
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
