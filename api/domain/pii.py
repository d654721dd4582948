"""Personal data: phone and ID card numbers masked on output, encrypted at rest.

A number is stored twice, neither in clear: an AES-256-GCM ciphertext (to show
it to the roles that may see it) and an HMAC-SHA256 (to find orders by number
without decrypting anything). Both keys derive from one PII key given in
settings (env or file), never from the repository.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12
VERSION = b"\x01"


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"branchpay pii " + purpose).derive(
        master
    )


class PiiVault:
    """Encrypts, decrypts and fingerprints personal data with keys derived from ``master``."""

    def __init__(self, master: bytes) -> None:
        if len(master) < 32:
            raise ValueError("the PII key must be at least 32 bytes")
        self._aead = AESGCM(_derive(master, b"encryption"))
        self._lookup_key = _derive(master, b"lookup")

    def encrypt(self, value: str, context: str) -> str:
        """``context`` (e.g. "phone") is bound to the ciphertext, so values can't be swapped."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), context.encode())
        return base64.b64encode(VERSION + nonce + sealed).decode()

    def decrypt(self, token: str, context: str) -> str:
        raw = base64.b64decode(token)
        if raw[:1] != VERSION:
            raise ValueError("unknown PII ciphertext version")
        nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
        return self._aead.decrypt(nonce, sealed, context.encode()).decode()

    def fingerprint(self, value: str, context: str) -> str:
        message = context.encode() + b"\x00" + value.encode()
        return hmac.new(self._lookup_key, message, hashlib.sha256).hexdigest()


def mask_phone(phone: str) -> str:
    """``13812345678`` -> ``138****5678``."""
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:] if len(phone) > 7 else "*" * len(phone)


def mask_id_card(number: str) -> str:
    """Keep the region (first 6) and the last character: ``330106**********1X``... of 18."""
    return (
        number[:6] + "*" * (len(number) - 7) + number[-1:] if len(number) > 7 else "*" * len(number)
    )


def protect_customer(vault: PiiVault, name: str, phone: str, id_card: str | None) -> dict[str, str]:
    """The stored form of a customer: masks for display, ciphertexts, lookup fingerprints."""
    stored = {
        "name": name,
        "phoneMasked": mask_phone(phone),
        "phoneCipher": vault.encrypt(phone, "phone"),
        "phoneDigest": vault.fingerprint(phone, "phone"),
    }
    if id_card is not None:
        stored |= {
            "idCardMasked": mask_id_card(id_card),
            "idCardCipher": vault.encrypt(id_card, "idCard"),
            "idCardDigest": vault.fingerprint(id_card, "idCard"),
        }
    return stored


def reveal_customer(
    vault: PiiVault, stored: dict[str, str], *, reveal: bool
) -> tuple[str, str | None]:
    """(phone, ID card number) as the caller may see them: clear, or masked."""
    if not reveal:
        return stored["phoneMasked"], stored.get("idCardMasked")
    id_card = stored.get("idCardCipher")
    return (
        vault.decrypt(stored["phoneCipher"], "phone"),
        vault.decrypt(id_card, "idCard") if id_card else None,
    )
