"""API keys: random, shown once, stored only as a hash, carrying a role and branches.

A key reads ``bp_<id>_<secret>``. The id finds the stored record; the secret
is compared by its SHA-256 in constant time (a 256-bit random secret needs no
slow hash). Revoking sets ``revokedAt``; every request reads the record, so a
revocation takes effect at once in every process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from api.domain.principal import Principal, Role

Document = dict[str, Any]
KEY_FORMAT = re.compile(r"^bp_([a-f0-9]{12})_([A-Za-z0-9_\-]{43})$")
NAME_FORMAT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class KeyAdminError(ValueError):
    """A key could not be created or revoked; the message says why."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(name: str, role: Role, branches: Sequence[str], *, by: str) -> tuple[Document, str]:
    """A fresh key and the record to store for it (which holds only the secret's hash)."""
    if not NAME_FORMAT.fullmatch(name):
        raise KeyAdminError("a key name is 1 to 64 of letters, digits, '_', '.', '-'")
    if role is not Role.OPS and not branches:
        raise KeyAdminError(f"a {role.value} key needs at least one --branch")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    record: Document = {
        "_id": key_id,
        "name": name,
        "role": role.value,
        "branches": sorted(set(branches)),
        "secretHash": _digest(secret),
        "createdAt": datetime.now(UTC),
        "createdBy": by,
        "revokedAt": None,
    }
    return record, f"bp_{key_id}_{secret}"


def bearer_token(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header value."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KeyRing:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection

    async def create(
        self, name: str, role: Role, branches: Sequence[str], *, by: str
    ) -> tuple[Document, str]:
        """Store a new key; returns the record and the key itself (shown once, never stored)."""
        record, key = new_key(name, role, branches, by=by)
        try:
            await self.collection.insert_one(record)
        except DuplicateKeyError:
            raise KeyAdminError(f"a key named {name!r} exists already") from None
        return record, key

    async def revoke(self, name: str) -> Document:
        record = await self.collection.find_one_and_update(
            {"name": name, "revokedAt": None}, {"$set": {"revokedAt": datetime.now(UTC)}}
        )
        if record is None:
            raise KeyAdminError(f"no active key named {name!r}")
        return record

    async def revoked_among(self, names: Sequence[str]) -> set[str]:
        """Which of these keys are revoked (or gone)."""
        active = self.collection.find(
            {"name": {"$in": list(names)}, "revokedAt": None}, projection={"name": 1}
        )
        return set(names) - {record["name"] async for record in active}

    async def authenticate(self, presented: str) -> Principal | None:
        match = KEY_FORMAT.fullmatch(presented)
        if match is None:
            return None
        record = await self.collection.find_one({"_id": match.group(1)})
        if record is None or record.get("revokedAt") is not None:
            return None
        if not hmac.compare_digest(record["secretHash"], _digest(match.group(2))):
            return None
        return Principal(record["name"], Role(record["role"]), frozenset(record["branches"]))

    async def principal_of(self, name: str) -> Principal | None:
        """The key named ``name`` as a principal, or None when it is revoked or gone."""
        record = await self.collection.find_one({"name": name, "revokedAt": None})
        if record is None:
            return None
        return Principal(record["name"], Role(record["role"]), frozenset(record["branches"]))
