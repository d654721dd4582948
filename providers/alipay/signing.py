"""Alipay RSA2 signatures: the string to sign and SHA256withRSA (keys load with api.plugin).

One module shared by the adapter (signs requests, verifies responses and
notifications) and the simulator (verifies requests, signs responses and
notifications), so both sides build the signed string the same way Alipay
publishes it:

- a request is signed over every parameter except ``sign`` (``sign_type``
  included), empty values left out, sorted by key in ASCII order, joined as
  ``k=v`` with ``&`` and the raw (not URL-encoded) values;
- a notification is verified over every parameter except ``sign`` *and*
  ``sign_type``, sorted the same way;
- a gateway response is signed over the raw JSON text of its
  ``<method_with_underscores>_response`` member, byte for byte as sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def request_string(params: Mapping[str, str]) -> str:
    """The string Alipay signs for a request: all but ``sign``, empties dropped."""
    return _join((k, v) for k, v in params.items() if k != "sign" and v != "")


def notification_string(params: Mapping[str, str]) -> str:
    """The string Alipay signs for a notification: all but ``sign`` and ``sign_type``."""
    return _join((k, v) for k, v in params.items() if k not in ("sign", "sign_type"))


def _join(items: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(items))


def sign(private_key: rsa.RSAPrivateKey, message: str) -> str:
    """SHA256withRSA (PKCS#1 v1.5) over the UTF-8 message, base64 encoded."""
    signature = private_key.sign(message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify(public_key: rsa.RSAPublicKey, message: str, signature: str) -> bool:
    """True only when ``signature`` is a valid RSA2 signature of ``message``."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(raw, message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def response_members(text: str) -> dict[str, str]:
    """The raw JSON text of each top-level member of a gateway response.

    Alipay signs the response member exactly as it is written in the body, so
    re-serialising the parsed JSON would not reproduce the signed bytes; this
    walks the top-level object with the JSON decoder and keeps each value's
    original text. Raises ``ValueError`` on anything but a JSON object.
    """
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError("response is not a JSON object")
    pos = _skip_ws(text, pos + 1)
    if text[pos : pos + 1] == "}":
        return members
    while True:
        key, pos = decoder.raw_decode(text, pos)
        if not isinstance(key, str):
            raise ValueError("response member name is not a string")
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] != ":":
            raise ValueError("malformed response object")
        start = _skip_ws(text, pos + 1)
        _, end = decoder.raw_decode(text, start)
        if key in members:
            raise ValueError("duplicate response member")
        members[key] = text[start:end]
        pos = _skip_ws(text, end)
        if text[pos : pos + 1] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if text[pos : pos + 1] == "}" and _skip_ws(text, pos + 1) == len(text):
            return members
        raise ValueError("malformed response object")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
