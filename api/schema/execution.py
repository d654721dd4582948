"""An execution context that completes plain fields without graphql-core's per-field machinery.

A page of 50 orders resolves about 2,000 fields, and most of them are *basic*
Strawberry fields (an attribute read: no resolver, no arguments, no field
extension). graphql-core executes every one of them the same way: a resolve
info, the resolver call through Strawberry's wrapper, an awaitable check,
and the type dispatch of ``complete_value``. That machinery was most of the
API's CPU per page (docs/performance.md).

``LeafFastPathExecutionContext`` plans each grouped field set once per
operation (graphql-core memoises the set per parent type, so the 50 orders of
a page share one plan) and completes the basic fields it can in one step:

- a scalar or enum: the attribute, through the type's own output coercion;
- an object: the attribute, checked with the type's ``is_type_of`` when it
  has one, then graphql-core's own ``collect_and_execute_subfields`` for its
  selection;
- a list of non-null objects: the same for each item, with graphql-core's
  item paths, and the items' awaitables gathered as graphql-core gathers them.

Everything else goes through graphql-core untouched: fields with a resolver,
arguments, field extensions or directives, abstract types, nullable list
items, and any value the fast path cannot finish (``None`` in a non-null
field, a coercion that fails, something that is not a list). Such a field is
executed again the ordinary way, so its errors, their paths and null
propagation are graphql-core's own; a basic field's resolver is an attribute
read, so reading it twice changes nothing. Errors raised *inside* an object
the fast path started are handled with graphql-core's ``handle_field_error``,
the step ``execute_field`` would take. A resolve middleware (a schema
extension with ``resolve``) switches the fast path off, since it must see
every field.

``tests/schema/test_execution.py`` compares whole responses, errors
included, with and without the fast path.
"""

from __future__ import annotations

import enum
from asyncio import iscoroutine
from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import Any, NamedTuple, cast

from graphql import (
    GraphQLBoolean,
    GraphQLField,
    GraphQLID,
    GraphQLInt,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    Undefined,
    is_leaf_type,
)
from graphql.execution.collect_fields import FieldDetailsList, GroupedFieldSet
from graphql.pyutils import AwaitableOrValue, Path
from graphql.pyutils.gather_with_cancel import gather_with_cancel
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import CustomGraphQLEnumType, GraphQLCoreConverter
from strawberry.types.field import StrawberryField

__all__ = ["LeafFastPathExecutionContext"]


class _Kind(enum.Enum):
    LEAF = "leaf"
    OBJECT = "object"
    OBJECT_LIST = "object list"


class _Fast(NamedTuple):
    """How the fast path completes one field."""

    name: str
    field_details_list: FieldDetailsList
    kind: _Kind
    read: Callable[[Any], Any]
    return_type: GraphQLOutputType
    # Nullable field: None completes as None. Non-null: graphql-core reports it.
    nullable: bool
    # LEAF: the type's output coercion. OBJECT and OBJECT_LIST: unused.
    coerce: Callable[[Any], Any] | None
    # OBJECT and OBJECT_LIST: the object type the selection runs on.
    object_type: GraphQLObjectType | None
    field_def: GraphQLField | None = None


class _Plan(NamedTuple):
    """One grouped field set, split into what the fast path completes and what it hands on."""

    order: tuple[str, ...]
    # (response name, read, coerce, nullable, the whole entry): unpacked in the
    # loop, which runs for every field of every object.
    fast: tuple[tuple[str, Callable[[Any], Any], Callable[[Any], Any] | None, bool, _Fast], ...]
    # What graphql-core executes, in query order; None when everything is fast.
    rest: GroupedFieldSet | None
    # Kept so the id() the plan is cached under cannot be reused in this execution.
    source_set: GroupedFieldSet


def _typename(parent_type: GraphQLObjectType, response_name: str, fdl: FieldDetailsList) -> _Fast:
    name = parent_type.name
    return _Fast(
        response_name, fdl, _Kind.LEAF, lambda _source: name, parent_type, False, str, None
    )


def _fast_field(
    parent_type: GraphQLObjectType,
    response_name: str,
    fdl: FieldDetailsList,
    field_def: GraphQLField,
) -> _Fast | None:
    """The fast completion of a field, or None when it must go through graphql-core."""
    node = fdl[0].node
    if node.name.value == "__typename":
        return _typename(parent_type, response_name, fdl)
    definition = field_def.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if not isinstance(definition, StrawberryField) or field_def.args:
        return None
    # A basic field has no resolver and no field extensions: Strawberry itself
    # resolves it as default_resolver(source, python_name).
    if not definition.is_basic_field or definition.default_resolver is not getattr:
        return None
    # Directives left after collection (@stream, @defer, custom ones) keep the long way.
    if any(details.node.directives for details in fdl):
        return None
    return_type = field_def.type
    nullable = not isinstance(return_type, GraphQLNonNull)
    inner = return_type if nullable else return_type.of_type  # type: ignore[union-attr]
    read = attrgetter(definition.python_name)
    if is_leaf_type(inner):
        return _Fast(
            response_name,
            fdl,
            _Kind.LEAF,
            read,
            return_type,
            nullable,
            _fast_coercion(inner),
            None,
        )
    if isinstance(inner, GraphQLObjectType):
        return _Fast(
            response_name, fdl, _Kind.OBJECT, read, return_type, nullable, None, inner, field_def
        )
    if isinstance(inner, GraphQLList) and isinstance(inner.of_type, GraphQLNonNull):
        item = inner.of_type.of_type
        if isinstance(item, GraphQLObjectType):
            return _Fast(
                response_name,
                fdl,
                _Kind.OBJECT_LIST,
                read,
                return_type,
                nullable,
                None,
                item,
                field_def,
            )
    return None


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_COERCIONS: dict[GraphQLLeafType, Callable[[Any], Any]] = {}


def _fast_coercion(leaf: GraphQLLeafType) -> Callable[[Any], Any]:
    """The type's output coercion with its commonest input answered first; the same results.

    graphql-core returns a ``str`` as is for String and ID, an ``int`` within
    32 bits for Int and a ``bool`` for Boolean; Strawberry names an enum member
    by scanning the type's values. Anything else goes to the type's own coercion.
    """
    known = _COERCIONS.get(leaf)
    if known is not None:
        return known
    coerce = leaf.coerce_output_value
    fast: Callable[[Any], Any] = coerce
    if leaf is GraphQLString or leaf is GraphQLID:
        fast = lambda value: value if type(value) is str else coerce(value)  # noqa: E731
    elif leaf is GraphQLInt:
        fast = lambda value: (  # noqa: E731
            value if type(value) is int and _INT_MIN <= value <= _INT_MAX else coerce(value)
        )
    elif leaf is GraphQLBoolean:
        fast = lambda value: value if type(value) is bool else coerce(value)  # noqa: E731
    elif isinstance(leaf, CustomGraphQLEnumType):
        names: dict[Any, str] = {
            member: name
            for member in cast("type[enum.Enum]", leaf.wrapped_cls)
            for name, value in reversed(leaf.values.items())
            if member.value == value.value
        }
        members = leaf.wrapped_cls
        fast = lambda value: (  # noqa: E731
            names[value] if type(value) is members and value in names else coerce(value)
        )
    _COERCIONS[leaf] = fast
    return fast


class LeafFastPathExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context with plain fields completed in one step each."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plans: dict[tuple[GraphQLObjectType, int], _Plan | None] = {}
        manager = self.middleware_manager
        # A resolve middleware must see every field; then nothing is fast.
        self._fast = manager is None or not manager.middlewares

    def _plan(
        self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet
    ) -> _Plan | None:
        key = (parent_type, id(grouped_field_set))
        try:
            return self._plans[key]
        except KeyError:
            pass
        fast: list[_Fast] = []
        rest: GroupedFieldSet = {}
        for response_name, fdl in grouped_field_set.items():
            field_def = self.schema.get_field(parent_type, fdl[0].node.name.value)
            entry = _fast_field(parent_type, response_name, fdl, field_def) if field_def else None
            if entry is None:
                rest[response_name] = fdl
            else:
                fast.append(entry)
        plan = None
        if fast:
            steps = tuple((f.name, f.read, f.coerce, f.nullable, f) for f in fast)
            plan = _Plan(tuple(grouped_field_set), steps, rest or None, grouped_field_set)
        self._plans[key] = plan
        return plan

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        plan = None
        # position_context is set only under @defer; that keeps graphql-core's way.
        if self._fast and position_context is None:
            plan = self._plan(parent_type, grouped_field_set)
        if plan is None:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        done: dict[str, Any] = {}
        pending: dict[str, Awaitable[Any]] = {}
        slow: GroupedFieldSet | None = plan.rest
        try:
            for name, read, coerce, nullable, fast in plan.fast:
                try:
                    value = read(source_value)
                    if value is None:
                        if nullable:
                            done[name] = None
                            continue
                    elif coerce is not None:  # a leaf
                        coerced = coerce(value)
                        if coerced is not None and coerced is not Undefined:
                            done[name] = coerced
                            continue
                        value = None
                except Exception:  # graphql-core reads it again and reports
                    value = None
                if value is not None and self._object(
                    fast, parent_type, path, value, done, pending
                ):
                    continue
                # Not trivially complete: graphql-core runs this field, with its errors.
                slow = dict(slow or {})
                slow[fast.name] = fast.field_details_list
            others: AwaitableOrValue[dict[str, Any]] = {}
            if slow:
                if slow is not plan.rest:
                    slow = {name: slow[name] for name in plan.order if name in slow}
                others = super().execute_fields(parent_type, source_value, path, slow, None)
        except Exception:
            if pending:
                self.settle_in_background(list(pending.values()))
            raise
        if not pending and not self.is_awaitable(others):
            if not others:
                return done  # every field fast, so already in query order
            return _merged(plan.order, done, others)  # type: ignore[arg-type]
        return self._merged_later(plan.order, done, pending, others)

    def _object(
        self,
        fast: _Fast,
        parent_type: GraphQLObjectType,
        path: Path | None,
        value: Any,
        done: dict[str, Any],
        pending: dict[str, Awaitable[Any]],
    ) -> bool:
        """Complete an object or a list of objects; False hands the field to graphql-core."""
        object_type = fast.object_type
        assert object_type is not None
        if fast.kind is _Kind.OBJECT_LIST and (
            type(value) not in (list, tuple) or any(item is None for item in value)
        ):
            return False
        field_path = Path(path, fast.name, parent_type.name)
        fdl = fast.field_details_list
        if object_type.is_type_of is not None and not self._is_type_of(
            fast, parent_type, field_path, value
        ):
            return False
        completed: AwaitableOrValue[Any]
        try:
            if fast.kind is _Kind.OBJECT:
                completed = self._subfields(object_type, fdl, field_path, value)
            else:
                completed = self._object_list(object_type, fdl, field_path, value)
        except Exception as error:
            self.handle_field_error(error, fast.return_type, fdl, field_path)
            done[fast.name] = None
            return True
        if self.is_awaitable(completed):
            pending[fast.name] = self._settled(completed, fast.return_type, fdl, field_path)
        else:
            done[fast.name] = completed
        return True

    def _subfields(
        self, object_type: GraphQLObjectType, fdl: FieldDetailsList, path: Path, value: Any
    ) -> AwaitableOrValue[dict[str, Any]]:
        """``collect_and_execute_subfields``, two calls shorter when nothing is deferred."""
        grouped_field_set, new_defer_usages, _forbidden = self.collect_subfields(object_type, fdl)
        if new_defer_usages:
            return self.execute_collected_subfields(
                object_type, value, path, grouped_field_set, new_defer_usages, None
            )
        return self.execute_fields(object_type, value, path, grouped_field_set, None)

    def _is_type_of(
        self, fast: _Fast, parent_type: GraphQLObjectType, path: Path, value: Any
    ) -> bool:
        """Whether the type's ``is_type_of`` accepts the value (every item of a list) at once.

        Anything else (False, an awaitable, an error) hands the field to
        graphql-core, which asks again and reports what it finds.
        """
        assert fast.object_type is not None and fast.field_def is not None
        is_type_of = fast.object_type.is_type_of
        assert is_type_of is not None
        info = self.build_resolve_info(
            fast.field_def, [details.node for details in fast.field_details_list], parent_type, path
        )
        for item in value if fast.kind is _Kind.OBJECT_LIST else (value,):
            try:
                accepted = is_type_of(item, info)
            except Exception:
                return False
            if accepted is not True:
                if iscoroutine(accepted):
                    accepted.close()
                return False
        return True

    def _object_list(
        self, object_type: GraphQLObjectType, fdl: FieldDetailsList, path: Path, items: Any
    ) -> AwaitableOrValue[list[Any]]:
        """A list of non-null objects, its items completed as ``complete_iterable_value`` does."""
        completed: list[Any] = []
        awaiting: list[int] = []
        try:
            for index, item in enumerate(items):
                result = self._subfields(object_type, fdl, path.add_key(index, None), item)
                if self.is_awaitable(result):
                    awaiting.append(index)
                completed.append(result)
        except Exception:
            if awaiting:
                self.settle_in_background([completed[index] for index in awaiting])
            raise
        if not awaiting:
            return completed

        async def gathered() -> list[Any]:
            results = await gather_with_cancel(*(completed[index] for index in awaiting))
            for index, result in zip(awaiting, results, strict=True):
                completed[index] = result
            return completed

        return gathered()

    async def _settled(
        self,
        awaitable: Awaitable[Any],
        return_type: GraphQLOutputType,
        fdl: FieldDetailsList,
        path: Path,
    ) -> Any:
        """An awaited field, its error handled as ``execute_field`` handles it."""
        try:
            return await awaitable
        except Exception as error:
            self.handle_field_error(error, return_type, fdl, path)
            return None

    async def _merged_later(
        self,
        order: tuple[str, ...],
        done: dict[str, Any],
        pending: dict[str, Awaitable[Any]],
        others: AwaitableOrValue[dict[str, Any]],
    ) -> dict[str, Any]:
        names = list(pending)
        awaitables = list(pending.values())
        if self.is_awaitable(others):
            awaitables.append(others)
        results = await gather_with_cancel(*awaitables)
        done.update(zip(names, results, strict=False))
        if self.is_awaitable(others):
            others = results[-1]
        return _merged(order, done, others)  # type: ignore[arg-type]


def _merged(order: tuple[str, ...], done: dict[str, Any], others: dict[str, Any]) -> dict[str, Any]:
    """The response object in the query's field order."""
    return {
        name: done[name] if name in done else others[name]
        for name in order
        if name in done or name in others
    }
