"""API keys: random, shown once, stored only as a hash, carrying a role and branches.

A key reads ``bp_<id>_<secret>``. The id finds the stored record; the secret
is compared by its SHA-256 in constant time (a 256-bit random secret needs no
slow hash). Revoking sets ``revokedAt``.

In the API, ``KeyRing.follow`` keeps the records of the keys it has seen in
memory, so a request with a known key reads nothing from the store, and learns
of every write to the keys from the process's change stream on ``api_keys``: a
revocation (or a deleted key) takes effect in every process as soon as its
stream delivers it, and ``on_revoked`` is told, to close the key's sockets.
While that stream is not running (the store is down, or cannot stream changes)
a record read from the store is trusted for ``ttl`` seconds only, so a revoked
key is never served longer than that. Unknown keys are not remembered: an
attacker guessing keys fills no memory (and the failed-authentication limit
bounds the reads). Without ``follow`` (the command-line tools) every call reads
the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from api.domain.principal import Principal, Role
from api.store.changes import (
    Backoff,
    ChangeHub,
    Opened,
    StoreOutage,
    StreamEnded,
    SubscriberTooSlow,
)

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


log = logging.getLogger("branchpay.keys")


@dataclass(frozen=True, slots=True)
class _Seen:
    """A key's record as read from the store, and when and under which stream it was read."""

    record: Document
    read_at: float
    epoch: int


class KeyRing:
    def __init__(
        self, collection: AsyncCollection[Document], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.collection = collection
        self.on_revoked: Callable[[str], None] | None = None
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._following = False
        self._ttl = 0.0
        # Bumped whenever the keys' stream opens or stops: a record read under an
        # earlier epoch may have missed a change, so only its time to live holds.
        self._epoch = 0
        self._live_epoch: int | None = None
        self._changes = 0  # changes the stream delivered
        # Per key id: the number of the last change delivered (ids of real keys only),
        # and how many reads of it are under way.
        self._last_change: dict[str, int] = {}
        self._reading: dict[str, int] = {}

    @property
    def live_epoch(self) -> int | None:
        """The epoch of the running keys' stream, or None while none runs."""
        return self._live_epoch

    async def follow(self, hub: ChangeHub, *, ttl: float) -> None:
        """Keep the keys seen in memory, true to the keys' change stream; runs until cancelled."""
        self._following, self._ttl = True, ttl
        delays = Backoff(1.0, 60.0)
        try:
            while True:
                try:
                    with hub.subscribe("api_keys") as changes:
                        while True:
                            self._apply(await changes.next())
                            delays.reset()
                except (SubscriberTooSlow, StreamEnded, PyMongoError) as error:
                    # A store without change streams, or a stream that broke: the
                    # records keep their time to live until it runs again.
                    log.warning("API keys are cached for %g s only: %s", ttl, error)
                self._stop_trusting()
                await asyncio.sleep(delays.next())
        finally:
            self._following = False
            self._stop_trusting()
            self._seen.clear()

    def _stop_trusting(self) -> None:
        self._epoch += 1
        self._live_epoch = None

    def _apply(self, item: Document | Opened | StoreOutage) -> None:
        if isinstance(item, Opened):
            self._epoch += 1
            self._live_epoch = self._epoch
            return
        if isinstance(item, StoreOutage):
            self._stop_trusting()
            return
        self._changes += 1
        key_id = item["documentKey"]["_id"]
        self._last_change[key_id] = self._changes
        record = item.get("fullDocument")
        gone = item["operationType"] == "delete" or record is None
        seen = self._seen.pop(key_id, None)
        if record is not None and (seen is not None or key_id in self._reading):
            # Looked up after the change: the record as it is now.
            self._seen[key_id] = _Seen(record, self._clock(), self._epoch)
        name = record.get("name") if record is not None else None
        if name is None and seen is not None:
            name = seen.record["name"]
        revoked = gone or (record or {}).get("revokedAt") is not None
        if name is not None and revoked and self.on_revoked is not None:
            self.on_revoked(name)

    def _trusted(self, seen: _Seen) -> bool:
        if self._live_epoch is not None and seen.epoch == self._live_epoch:
            return True
        return self._clock() - seen.read_at < self._ttl

    async def _record(self, key_id: str) -> Document | None:
        """The key's record: from memory when it may be trusted, else read (and remembered)."""
        if not self._following:
            return await self.collection.find_one({"_id": key_id})
        seen = self._seen.get(key_id)
        if seen is not None and self._trusted(seen):
            return seen.record
        epoch, changes, started = self._epoch, self._changes, self._clock()
        self._reading[key_id] = self._reading.get(key_id, 0) + 1
        try:
            record = await self.collection.find_one({"_id": key_id})
        finally:
            self._reading[key_id] -= 1
            if not self._reading[key_id]:
                del self._reading[key_id]
        if self._last_change.get(key_id, 0) > changes:
            # A change delivered during the read is newer than what was read.
            newer = self._seen.get(key_id)
            return newer.record if newer is not None else None
        if record is None:
            self._seen.pop(key_id, None)
        elif self._following:
            self._seen[key_id] = _Seen(record, started, epoch)
        return record

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
        self._seen.pop(record["_id"], None)
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
        record = await self._record(match.group(1))
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
