"""The secret policy of plugins.toml: ``{ env }``/``{ file }`` settings, and redaction.

A setting may be given as ``{ env = "NAME" }`` (the environment variable's
value) or ``{ file = "path" }`` (the file's content; a relative path resolves
against the directory of plugins.toml). Trailing line breaks of a text file are
dropped; a ``SecretBytes`` setting gets the file's exact bytes. A secret
setting (annotated ``SecretStr``/``SecretBytes``, or with
``json_schema_extra={"secret": True}``) must be given this way, never inline,
and its value never appears in a message (:func:`redact`).
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic.fields import FieldInfo

INLINE_SECRET = "secret must be given as { env = ... } or { file = ... }, never inline"

# Short secrets (a PIN, "1234") would make redaction match ordinary words.
_MIN_REDACTED_LENGTH = 4
_REDACTED_RUN = 8


class UnresolvedReference(Exception):
    """A ``{ env }``/``{ file }`` setting gave no value; the message says why (never a value)."""


def is_reference(value: Any) -> bool:
    """Whether a raw setting is a ``{ env = ... }`` or ``{ file = ... }`` reference."""
    return isinstance(value, dict) and bool(value) and set(value) <= {"env", "file"}


def resolve_reference(
    key: str, reference: dict[str, Any], *, base: Path, as_bytes: bool
) -> str | bytes:
    """The value a reference names; a relative file resolves against ``base``.

    Raises :class:`UnresolvedReference` with the reason, prefixed by ``key``.
    """
    if len(reference) != 1:
        raise UnresolvedReference(
            f"{key}: give either {{ env = ... }} or {{ file = ... }}, not both"
        )
    ((kind, target),) = reference.items()
    if not isinstance(target, str) or not target:
        raise UnresolvedReference(f"{key}: {kind} must be a non-empty string")
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise UnresolvedReference(f"{key}: environment variable {target} is not set")
        if not value:
            raise UnresolvedReference(f"{key}: environment variable {target} is empty")
        return value.encode("utf-8") if as_bytes else value
    file = Path(target).expanduser()
    if not file.is_absolute():
        file = base / file
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise UnresolvedReference(
            f"{key}: file {target} cannot be read ({exc.strerror or exc})"
        ) from None
    if as_bytes:
        return content
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise UnresolvedReference(f"{key}: file {target} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise UnresolvedReference(f"{key}: file {target} is empty")
    return text


def is_secret_field(field: FieldInfo) -> bool:
    """A settings field whose value must come from { env } or { file } and never be shown."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("secret") is True:
        return True
    return _mentions_secret_type(field.annotation)


def wants_bytes(field: FieldInfo) -> bool:
    """Whether the field takes bytes (a ``{ file }`` then gives the file's exact bytes)."""
    annotation = field.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(
            isinstance(arg, type) and issubclass(arg, SecretBytes | bytes)
            for arg in typing.get_args(annotation)
        )
    return isinstance(annotation, type) and issubclass(annotation, SecretBytes | bytes)


def secret_values(settings: BaseModel) -> list[str]:
    """The plain text of every secret setting, to keep it out of messages."""
    values: list[str] = []
    for name, field in type(settings).model_fields.items():
        if not is_secret_field(field):
            continue
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr | SecretBytes):
            value = value.get_secret_value()
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            values.append(value)
    return values


def redact(message: str, secrets: list[str]) -> str:
    """``message``, or a neutral one when it would reveal any part of ``secrets``.

    A validator may quote the start of a bad key in its message, so any run of
    :data:`_REDACTED_RUN` characters of a secret counts, not only the whole. PEM
    armour lines ("-----BEGIN PRIVATE KEY-----") are public and do not count.
    """
    for whole in secrets:
        secret = "\n".join(
            line for line in whole.splitlines() if not line.startswith("-----")
        ).strip()
        run = min(len(secret), _REDACTED_RUN)
        if run < _MIN_REDACTED_LENGTH:
            continue
        if any(secret[i : i + run] in message for i in range(len(secret) - run + 1)):
            return "invalid value (details withheld: they would reveal a secret)"
    return message


def _mentions_secret_type(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SecretStr | SecretBytes):
        return True
    return any(_mentions_secret_type(arg) for arg in typing.get_args(annotation))
