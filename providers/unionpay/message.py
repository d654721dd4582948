"""UnionPay ACP 5.1.0 messages: canonical form, signMethod 01 signatures, certificates.

Both sides of the wire use this module: the adapter signs requests with the
merchant's signing key and verifies UnionPay's answers and notifications; the
simulator does the opposite with the platform's key.

signMethod 01 (version 5.1.0): the fields except ``signature``, sorted by name,
joined as ``k=v&k=v``; the SHA-256 digest of that string as lower-case hex;
SHA256withRSA (PKCS#1 v1.5) over the hex string; base64.

UnionPay's answers and notifications carry the certificate they were signed
with (``signPubKeyCert``). It is trusted only when it chains to the configured
middle and root certificates, is within its validity period, and names
UnionPay as its owner (the third ``@``-separated part of its CN).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from api.plugin import BEIJING, from_beijing, to_beijing

VERSION = "5.1.0"
SIGN_METHOD_RSA = "01"
CURRENCY_CNY = "156"
# The owner UnionPay's production signing certificates name; the test
# environment's certificates name TEST_CERT_OWNER instead.
UNIONPAY_CERT_OWNER = "中国银联股份有限公司"
TEST_CERT_OWNER = "00040000:SIGN"
# Transaction times (txnTime, payTimeout) are Beijing time without a zone.
TIME_FORMAT = "%Y%m%d%H%M%S"


class SignatureInvalid(Exception):
    """A message or certificate failed verification; the text names what failed."""


def canonical(fields: Mapping[str, str]) -> str:
    """The string signMethod 01 signs: every field but ``signature``, sorted."""
    return "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "signature")


def _digest_hex(fields: Mapping[str, str]) -> bytes:
    return hashlib.sha256(canonical(fields).encode("utf-8")).hexdigest().encode("ascii")


def sign(fields: Mapping[str, str], key: rsa.RSAPrivateKey) -> str:
    """The base64 ``signature`` of ``fields`` under signMethod 01."""
    raw = key.sign(_digest_hex(fields), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode("ascii")


def canonical_digest(
    fields: Mapping[str, str], streamed: Mapping[str, Callable[[], Iterable[bytes]]]
) -> bytes:
    """:func:`_digest_hex` of ``fields`` plus fields too large to hold, read in chunks.

    ``streamed`` maps a field's name to a function giving its UTF-8 value in
    chunks (e.g. a file transfer's ``fileContent`` spooled to disk).
    """
    digest = hashlib.sha256()
    names = sorted(k for k in {*fields, *streamed} if k != "signature")
    for index, name in enumerate(names):
        digest.update(("&" if index else "").encode() + f"{name}=".encode())
        if name in streamed:
            for chunk in streamed[name]():
                digest.update(chunk)
        else:
            digest.update(fields[name].encode("utf-8"))
    return digest.hexdigest().encode("ascii")


def verify(
    fields: Mapping[str, str], public_key: rsa.RSAPublicKey, *, digest_hex: bytes | None = None
) -> None:
    """Raise :class:`SignatureInvalid` unless ``fields['signature']`` is genuine.

    ``digest_hex``: the message's digest computed already (see
    :func:`canonical_digest`), for a message with a field not held in memory.
    """
    encoded = fields.get("signature")
    if not encoded:
        raise SignatureInvalid("signature missing")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("signature is not base64") from None
    try:
        public_key.verify(
            raw, digest_hex or _digest_hex(fields), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise SignatureInvalid("signature does not match the message") from None


def cert_id(cert: x509.Certificate) -> str:
    """The ``certId`` naming a signing certificate: its serial number in decimal."""
    return str(cert.serial_number)


def load_certificate(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SignatureInvalid("not a PEM X.509 certificate") from None


def cert_owner(cert: x509.Certificate) -> str:
    """The owner named in a UnionPay certificate: the third ``@`` part of its CN."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return ""
    parts = str(names[0].value).split("@")
    return parts[2] if len(parts) > 2 else ""


def verify_platform_cert(
    cert: x509.Certificate,
    *,
    middle: x509.Certificate,
    root: x509.Certificate,
    validate_owner: bool,
    now: datetime | None = None,
) -> None:
    """Raise :class:`SignatureInvalid` unless ``cert`` is a UnionPay signing certificate."""
    moment = now or datetime.now(UTC)
    for which, c in (("signPubKeyCert", cert), ("middle certificate", middle)):
        if not c.not_valid_before_utc <= moment <= c.not_valid_after_utc:
            raise SignatureInvalid(f"{which} is outside its validity period")
    try:
        cert.verify_directly_issued_by(middle)
        middle.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise SignatureInvalid("signPubKeyCert does not chain to the configured root") from None
    owner = cert_owner(cert)
    allowed = {UNIONPAY_CERT_OWNER} if validate_owner else {UNIONPAY_CERT_OWNER, TEST_CERT_OWNER}
    if owner not in allowed:
        raise SignatureInvalid("signPubKeyCert is not owned by UnionPay")


def parse_response(text: str) -> dict[str, str]:
    """Parse a gateway answer: ``k=v&k=v``, not URL-encoded.

    Values may hold ``&`` inside ``{...}`` or ``[...]`` (reserved fields), so a
    plain split is wrong; keys end at the first ``=``.
    """
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    fields: dict[str, str] = {}
    key: str | None = None
    buf: list[str] = []
    closer = ""
    for ch in text:
        if key is None:
            if ch == "=":
                key, buf = "".join(buf), []
            else:
                buf.append(ch)
            continue
        if closer:
            if ch == closer:
                closer = ""
        elif ch == "{":
            closer = "}"
        elif ch == "[":
            closer = "]"
        if ch == "&" and not closer:
            fields[key] = "".join(buf)
            key, buf = None, []
        else:
            buf.append(ch)
    if key is not None:
        fields[key] = "".join(buf)
    elif buf:
        raise ValueError("answer ends with a field that has no '='")
    return fields


def format_response(fields: Mapping[str, str]) -> str:
    """The gateway's answer format, the inverse of :func:`parse_response`."""
    return "&".join(f"{k}={v}" for k, v in fields.items())


def auto_submit_form(action: str, fields: Mapping[str, str]) -> str:
    """An HTML page that posts ``fields`` to ``action`` as soon as a browser opens it."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>UnionPay</title></head>'
        '<body onload="document.forms[0].submit()">'
        f'<form method="post" action="{html.escape(action)}">{inputs}'
        '<noscript><button type="submit">Continue</button></noscript>'
        "</form></body></html>"
    )


def beijing_time(moment: datetime) -> str:
    """A UTC-aware moment as ``YYYYMMDDhhmmss`` Beijing time (txnTime, payTimeout)."""
    return to_beijing(moment, TIME_FORMAT)


def parse_beijing_time(text: str) -> datetime:
    """``YYYYMMDDhhmmss`` Beijing time as a UTC-aware datetime."""
    if len(text) != 14 or not text.isdigit():
        raise ValueError("not a YYYYMMDDhhmmss time")
    return from_beijing(text, TIME_FORMAT)


def settlement_day(txn_time: str) -> date:
    """The settlement day a txnTime falls in: UnionPay's day runs from 23:00 to 23:00 Beijing."""
    local = parse_beijing_time(txn_time).astimezone(BEIJING)
    return (local + timedelta(hours=1)).date()


def parse_fen(text: str) -> int:
    """``txnAmt``: a whole number of fen, 1 to 12 digits, no sign, no decimals."""
    if not (1 <= len(text) <= 12) or not text.isascii() or not text.isdigit():
        raise ValueError("txnAmt is not 1..12 digits of fen")
    return int(text)


def format_fen(amount_fen: int) -> str:
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
        raise TypeError("amount must be an int count of fen")
    if not 1 <= amount_fen <= 999_999_999_999:
        raise ValueError("txnAmt must be 1..999999999999 fen")
    return str(amount_fen)
