"""The indexes a store has against those the service requires (``INDEXES``).

``branchpay db check`` prints what :func:`differences` finds. An index is
matched by name; for a matched index its key (fields, order and directions)
and the options that change what it enforces or keeps (``unique``,
``sparse``, ``partialFilterExpression``, ``expireAfterSeconds``) must be
equal. Every collection of the database is looked at, so an index left on a
collection the service no longer indexes is reported too; ``_id_`` is the
server's own and never reported.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

Document = dict[str, Any]
SERVER_INDEX = "_id_"
OPTIONS = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds")


class Problem(enum.StrEnum):
    MISSING = "missing"
    EXTRA = "extra"
    KEY_ORDER = "wrong key order"
    KEY = "wrong key"
    OPTIONS = "wrong options"


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """An index as far as the check compares it."""

    name: str
    key: tuple[tuple[str, Any], ...]
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> IndexSpec:
        """From ``IndexModel.document`` or a ``listIndexes`` entry; defaults left out."""
        key = tuple((field, _direction(value)) for field, value in document["key"].items())
        # ``is``, not ``in``: a TTL of 0 seconds is an option, though 0 == False.
        options = tuple(
            (option, _plain(document[option]))
            for option in OPTIONS
            if document.get(option) is not None and document.get(option) is not False
        )
        return cls(str(document["name"]), key, options)

    def describe(self) -> str:
        fields = ", ".join(f"{field}: {direction}" for field, direction in self.key)
        options = "".join(f", {option}: {value}" for option, value in self.options)
        return f"{{{fields}}}{options}"

    def as_json(self) -> Document:
        return {"key": [[field, direction] for field, direction in self.key], **dict(self.options)}


@dataclass(frozen=True, slots=True)
class Difference:
    collection: str
    index: str
    problem: Problem
    required: IndexSpec | None
    present: IndexSpec | None

    def as_json(self) -> Document:
        return {
            "collection": self.collection,
            "index": self.index,
            "problem": self.problem.value,
            "required": self.required.as_json() if self.required else None,
            "present": self.present.as_json() if self.present else None,
        }


def _direction(value: Any) -> Any:
    # The server may hand back 1.0 for 1; a text or hashed index keeps its string.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _direction(value)


def required_specs(indexes: Mapping[str, Iterable[IndexModel]]) -> dict[str, list[IndexSpec]]:
    return {
        collection: [IndexSpec.of(model.document) for model in models]
        for collection, models in indexes.items()
    }


async def present_specs(db: AsyncDatabase[Document]) -> dict[str, list[IndexSpec]]:
    """Every collection's indexes but ``_id_``, as the server lists them."""
    present: dict[str, list[IndexSpec]] = {}
    for collection in sorted(await db.list_collection_names()):
        if collection.startswith("system."):
            continue
        listed = await (await db[collection].list_indexes()).to_list()
        present[collection] = [
            IndexSpec.of(index) for index in listed if index["name"] != SERVER_INDEX
        ]
    return present


def differences(
    required: Mapping[str, list[IndexSpec]], present: Mapping[str, list[IndexSpec]]
) -> list[Difference]:
    """What differs, collection by collection in name order, then index by index."""
    found: list[Difference] = []
    for collection in sorted({*required, *present}):
        wanted = {spec.name: spec for spec in required.get(collection, [])}
        have = {spec.name: spec for spec in present.get(collection, [])}
        for name in sorted({*wanted, *have}):
            want, got = wanted.get(name), have.get(name)
            problem = _compare(want, got)
            if problem is not None:
                found.append(Difference(collection, name, problem, want, got))
    return found


def _compare(want: IndexSpec | None, got: IndexSpec | None) -> Problem | None:
    if got is None:
        return Problem.MISSING
    if want is None:
        return Problem.EXTRA
    if want.key != got.key:
        return Problem.KEY_ORDER if sorted(want.key) == sorted(got.key) else Problem.KEY
    if want.options != got.options:
        return Problem.OPTIONS
    return None
