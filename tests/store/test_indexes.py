"""The required indexes are shard-ready, and docs/deployment.md shards exactly what they allow."""

from __future__ import annotations

import json
import re
from pathlib import Path

from api.store.database import INDEXES
from api.store.indexes import IndexSpec, differences, required_specs

DEPLOYMENT = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
SHARD = re.compile(r'sh\.shardCollection\("branchpay\.(\w+)", (\{[^}]*\}), true\)')
CREATE = re.compile(r"db\.(\w+)\.createIndex\((\{[^}]*\}), \{unique: true, name: \"(\w+)\"\}\)")
UNSHARDED = re.compile(r"^\| `(\w+)`(?:, `(\w+)`)? \| ", re.MULTILINE)


def _key(js: str) -> tuple[tuple[str, int], ...]:
    """``{branch: 1, _id: 1}`` as the pairs of an index key."""
    pairs = json.loads(re.sub(r"(\w+):", r'"\1":', js))
    return tuple(pairs.items())


def _unique() -> dict[str, list[IndexSpec]]:
    return {
        collection: [spec for spec in specs if dict(spec.options).get("unique")]
        for collection, specs in required_specs(INDEXES).items()
    }


def _sharded() -> dict[str, tuple[tuple[str, int], ...]]:
    text = DEPLOYMENT.read_text()
    return {collection: _key(key) for collection, key in SHARD.findall(text)}


def test_every_unique_index_of_a_sharded_collection_starts_with_its_shard_key() -> None:
    sharded = _sharded()
    assert sharded, "docs/deployment.md shards no collection"
    for collection, key in sharded.items():
        assert key[0] == ("branch", 1), (collection, key)
        unique = _unique().get(collection, [])
        assert unique, f"{collection} is sharded on a unique key but has no unique index"
        for spec in unique:
            assert spec.key[: len(key)] == key, (collection, spec)


def test_a_unique_index_not_starting_with_branch_is_only_on_an_unsharded_collection() -> None:
    sharded = _sharded()
    section = DEPLOYMENT.read_text().split("stay **unsharded**", 1)[1].split("### Shard keys")[0]
    unsharded = {name for pair in UNSHARDED.findall(section) for name in pair if name}
    for collection, specs in _unique().items():
        for spec in specs:
            if spec.key[0][0] != "branch":
                assert collection in unsharded and collection not in sharded, (collection, spec)


def test_the_documented_create_index_commands_are_the_required_indexes() -> None:
    required = {
        (collection, spec.name): spec for collection, specs in _unique().items() for spec in specs
    }
    documented = CREATE.findall(DEPLOYMENT.read_text())
    assert {(collection, name) for collection, _, name in documented} == {
        key for key in required if key[0] in _sharded()
    }
    for collection, key, name in documented:
        assert required[collection, name].key == _key(key), (collection, name)


def test_another_direction_is_a_wrong_key_and_the_same_pairs_reordered_a_wrong_order() -> None:
    required = {"orders": [IndexSpec.of({"name": "i", "key": {"a": 1, "b": -1}})]}

    def problem(key: dict[str, int], **options: object) -> list[str]:
        present = {"orders": [IndexSpec.of({"name": "i", "key": key, **options})]}
        return [d.problem.value for d in differences(required, present)]

    assert problem({"a": 1, "b": -1}) == []
    assert problem({"a": 1.0, "b": -1.0}) == []  # as some servers list directions
    assert problem({"b": -1, "a": 1}) == ["wrong key order"]
    assert problem({"a": 1, "b": 1}) == ["wrong key"]
    assert problem({"a": 1, "b": -1}, sparse=True) == ["wrong options"]
    assert problem({"a": 1, "b": -1}, unique=False, sparse=False) == []
