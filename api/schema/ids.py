"""Opaque global IDs (``Type:key`` in base64) and pagination cursors."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from bson.errors import InvalidId

from api.domain.text import GLOBAL_ID, ORDERS_CURSOR, TextLimit
from api.schema.errors import bad_input
from api.store.orders import Position

NODE_TYPES = ("Order", "Offering", "Payment")
CURSOR_PREFIX = "o1"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _b64encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _b64decode(value: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def to_global_id(type_name: str, key: str) -> str:
    return _b64encode(f"{type_name}:{key}")


def from_global_id(value: str) -> tuple[str, str]:
    """The (type, key) of a global ID; BAD_USER_INPUT when it is not one of ours."""
    decoded = _b64decode(value) if len(value) <= GLOBAL_ID.max_chars else None
    if decoded is None or ":" not in decoded:
        raise bad_input(f"malformed ID {value[:80]!r}")
    type_name, key = decoded.split(":", 1)
    if type_name not in NODE_TYPES or not key:
        raise bad_input(f"malformed ID {value[:80]!r}")
    return type_name, key


def object_id_of(value: str, expected_type: str) -> ObjectId:
    type_name, key = from_global_id(value)
    if type_name != expected_type:
        raise bad_input(f"ID {value[:80]!r} is a {type_name}, not an {expected_type}")
    try:
        return ObjectId(key)
    except InvalidId:
        raise bad_input(f"malformed ID {value[:80]!r}") from None


def encode_cursor(position: Position) -> str:
    millis = (position.created_at - EPOCH) // timedelta(milliseconds=1)
    return _b64encode(f"{CURSOR_PREFIX}:{millis}:{position.order_id}")


def decode_cursor(value: str) -> Position:
    decoded = _b64decode(value) if len(value) <= ORDERS_CURSOR.max_chars else None
    parts = decoded.split(":") if decoded else []
    if len(parts) != 3 or parts[0] != CURSOR_PREFIX or not parts[1].isdigit():
        raise bad_input("malformed cursor: pass an endCursor or edge cursor returned by orders")
    try:
        order_id = ObjectId(parts[2])
        created_at = EPOCH + timedelta(milliseconds=int(parts[1]))
    except (InvalidId, ValueError, OverflowError, OSError):
        raise bad_input(
            "malformed cursor: pass an endCursor or edge cursor returned by orders"
        ) from None
    return Position(created_at, order_id)


def object_id_cursor(after: str | None, limit: TextLimit, source: str) -> ObjectId | None:
    """The ObjectId an ``endCursor`` of ``source`` holds; BAD_USER_INPUT for anything else."""
    if after is None:
        return None
    try:
        if limit.problem(after, "after") is not None:
            raise InvalidId(after)
        return ObjectId(after)
    except InvalidId:
        raise bad_input(f"malformed cursor: pass endCursor from {source}") from None
