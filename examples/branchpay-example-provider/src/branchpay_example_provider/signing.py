"""Example Pay's signature: HMAC-SHA256 over the sorted ``key=value`` pairs.

Both API requests (JSON objects) and notifications (form fields) are signed the
same way: every field except ``sign`` with a non-empty value, sorted by key,
joined as ``k1=v1&k2=v2``, then HMAC-SHA256 with the merchant's API key, in hex.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def canonical(fields: Mapping[str, object]) -> bytes:
    pairs = sorted((k, str(v)) for k, v in fields.items() if k != "sign" and v not in (None, ""))
    return "&".join(f"{k}={v}" for k, v in pairs).encode()


def sign(key: bytes, fields: Mapping[str, object]) -> str:
    return hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()


def is_genuine(key: bytes, fields: Mapping[str, object]) -> bool:
    given = fields.get("sign")
    return isinstance(given, str) and hmac.compare_digest(sign(key, fields), given)
