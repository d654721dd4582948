"""WeChat Pay API v3 signatures and callback encryption, shared by adapter and simulator.

- Requests: ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`` signed
  SHA256withRSA (PKCS#1 v1.5) with the merchant key, sent as
  ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",
  signature="..",timestamp="..",serial_no=".."``.
- Responses and callbacks: ``TIMESTAMP\\nNONCE\\nBODY\\n`` signed with the
  platform key, sent in the ``Wechatpay-Timestamp/-Nonce/-Signature/-Serial``
  headers.
- Callback ``resource``: AEAD_AES_256_GCM with the 32-byte APIv3 key, a
  12-character nonce and ``associated_data``; the 16-byte tag is appended to
  the ciphertext before base64.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
AEAD_ALGORITHM = "AEAD_AES_256_GCM"
MAX_CLOCK_SKEW_SECONDS = 300

_AUTH_PARAM = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*(?:,|$)')


def new_nonce() -> str:
    """A 32-character random string, as WeChat Pay's own SDKs send."""
    return secrets.token_hex(16).upper()


def request_message(
    method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    head = f"{method.upper()}\n{path_and_query}\n{timestamp}\n{nonce}\n".encode()
    return head + body + b"\n"


def response_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def sign(private_key: RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(private_key.sign(message, PKCS1v15(), SHA256())).decode()


def verify(public_key: RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, message, PKCS1v15(), SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def authorization(mchid: str, serial_no: str, timestamp: str, nonce: str, signature: str) -> str:
    return (
        f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial_no}"'
    )


def parse_authorization(header: str) -> dict[str, str] | None:
    """The parameters of an Authorization header, or None when it is not ours."""
    schema, _, rest = header.partition(" ")
    if schema != SCHEMA:
        return None
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _AUTH_PARAM.match(rest, position)
        if match is None:
            return None
        params[match.group(1)] = match.group(2)
        position = match.end()
    return params


def encrypt_resource(
    apiv3_key: bytes, plaintext: bytes, *, nonce: str, associated_data: str
) -> str:
    sealed = AESGCM(apiv3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return base64.b64encode(sealed).decode()


def decrypt_resource(
    apiv3_key: bytes, ciphertext: str, *, nonce: str, associated_data: str
) -> bytes | None:
    """The plaintext, or None when the ciphertext is not authentic under this key."""
    try:
        sealed = base64.b64decode(ciphertext, validate=True)
        return AESGCM(apiv3_key).decrypt(nonce.encode(), sealed, associated_data.encode())
    except (InvalidTag, binascii.Error, ValueError):
        return None
