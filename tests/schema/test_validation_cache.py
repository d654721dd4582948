"""A repeated operation is validated once, and the request limits still hold when cached.

The bench's profile showed graphql-core validating every request although
ValidationCache was on: the depth and alias limiters were rebuilt per request
with new rule classes, and the cache keys on them.
"""

from __future__ import annotations

import uuid

from strawberry.extensions.validation_cache import _get_validate_cache

from api.schema import build_schema
from api.settings import Settings

CACHE_SIZE = 256  # the ValidationCache maxsize in api/schema/__init__.py


async def test_a_repeated_operation_is_validated_once() -> None:
    schema = build_schema(Settings())
    query = f"query Repeated{uuid.uuid4().hex} {{ __typename }}"
    cache = _get_validate_cache(CACHE_SIZE)
    before = cache.cache_info()
    for _ in range(3):
        result = await schema.execute(query)
        assert result.errors is None
    after = cache.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)


async def test_limits_hold_for_cached_validations() -> None:
    schema = build_schema(Settings(max_query_depth=2, max_aliases=2))
    too_deep = "query { orders { edges { node { id } } } }"
    too_many_aliases = "query { a: __typename b: __typename c: __typename }"
    for _ in range(2):
        deep = await schema.execute(too_deep)
        assert deep.errors and "depth is 4; at most 2" in deep.errors[0].message
        aliased = await schema.execute(too_many_aliases)
        assert aliased.errors and "aliases is 3; at most 2" in aliased.errors[0].message
