"""The sandbox's HMAC-SHA256 signatures, shared by the adapter and the simulator.

Every request to the simulator's API and every notification it sends carries

- ``X-Sandbox-Timestamp``: Unix seconds when it was signed;
- ``X-Sandbox-Signature``: lower-case hex HMAC-SHA256, with the branch's shared
  secret, over ``"<timestamp>." + payload``.

For a notification the payload is the body. For an API request it is
``"<METHOD> <path>\\n" + body`` (the path with its query string, if any), so a
signed GET cannot be replayed on another attempt's URL or another merchant's
bill. A timestamp more than five minutes away from now is refused, which bounds
replays of captured messages.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Sandbox-Timestamp"
SIGNATURE_HEADER = "X-Sandbox-Signature"
MAX_SKEW_SECONDS = 300


class SignatureInvalid(Exception):
    """Why a signed message was refused (never includes the secret or the signature)."""


def request_payload(method: str, path: str, body: bytes) -> bytes:
    return f"{method.upper()} {path}\n".encode() + body


def sign(secret: bytes, timestamp: int, payload: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, payload: bytes, *, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, payload),
    }


def verify(
    secret: bytes,
    timestamp: str | None,
    signature: str | None,
    payload: bytes,
    *,
    now: float | None = None,
) -> None:
    """Raise :class:`SignatureInvalid` unless the signature is genuine and fresh."""
    if not timestamp or not signature:
        raise SignatureInvalid("missing signature headers")
    try:
        signed_at = int(timestamp)
    except ValueError:
        raise SignatureInvalid("malformed timestamp") from None
    current = time.time() if now is None else now
    if abs(current - signed_at) > MAX_SKEW_SECONDS:
        raise SignatureInvalid("timestamp outside the five-minute window")
    expected = sign(secret, signed_at, payload)
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise SignatureInvalid("signature does not match")
