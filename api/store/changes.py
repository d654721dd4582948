"""One change stream per watched collection per process, fanned out to its subscribers.

``ChangeHub.subscribe(collection, key)`` registers a subscriber for the
changes of one document (``key`` is its ``_id``) or, with ``key=None``, of
every document. The collection's stream opens when its first subscriber
arrives and closes when its last one leaves, so a process with 1,000 live
``orderEvents`` holds one server-side cursor on ``orders``, not 1,000.

What a subscriber reads from its :class:`Subscription`, in order:

- :class:`Opened` once the stream runs (at once when it already does), and
  again after every reopening. ``gap`` says that changes may have been missed
  since the previous one (the stream could not resume), so state read
  before it must be read again;
- change events (``fullDocument`` looked up when the collection's
  operations ask for it);
- one :class:`StoreOutage` when the store stops answering, then nothing until
  the stream is open again.

After an outage the stream reopens from the resume token of the last change it
handed out (``resumeAfter``), so no change is lost or handed out twice; only
when the store cannot resume from it (its history is gone) does it open afresh
with ``gap=True``. Each subscriber has a bounded queue: one that falls
``limit`` changes behind is dropped and its next read raises
:class:`SubscriberTooSlow`, instead of the queue growing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from api.store.cancellation import raise_if_cancelled
from api.store.outage import is_store_outage

Document = dict[str, Any]
log = logging.getLogger("branchpay.store")

# Every kind of change a collection's stream may be asked for.
ALL_OPERATIONS = ("insert", "update", "replace", "delete")


@dataclass(frozen=True, slots=True)
class StoreOutage:
    """The store stopped answering and the feed is retrying; ``error`` is for the log only."""

    error: PyMongoError


@dataclass(frozen=True, slots=True)
class Opened:
    """The stream runs; ``gap``: changes since the previous Opened may be missing."""

    gap: bool


@dataclass(frozen=True, slots=True)
class Watched:
    """A collection the hub watches: which operations, and whether to look the document up."""

    operations: Sequence[str] = ("update", "replace")
    full_document: bool = True


class SubscriberTooSlow(Exception):
    """The subscriber fell more than ``limit`` changes behind and was dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} changes were waiting for this subscriber")
        self.limit = limit


class StreamEnded(Exception):
    """The stream cannot go on: the collection was dropped, or the store refuses streams."""


Item = Document | Opened | StoreOutage


class Backoff:
    """Delays between retries: doubling from ``first`` up to ``most``, each jittered.

    The jitter (a delay between half and all of the step) spreads the retries
    of many processes, so a store coming back is not met by all at once.
    """

    def __init__(self, first: float = 0.5, most: float = 5.0) -> None:
        self.first = first
        self.most = most
        self._step = first

    def next(self) -> float:
        step = self._step
        self._step = min(self._step * 2, self.most)
        return random.uniform(step / 2, step)

    def reset(self) -> None:
        self._step = self.first


class Subscription:
    """What one subscriber reads: its bounded queue of changes and stream events."""

    def __init__(self, feed: _Feed, key: Any, limit: int) -> None:
        self._feed = feed
        self.key = key
        self.limit = limit
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None

    def _push(self, item: Item) -> bool:
        """Queue ``item``; False when the subscriber is too far behind (and now failed)."""
        if self._failure is not None:
            return False
        last = self._items[-1] if self._items else None
        if isinstance(item, StoreOutage) and isinstance(last, StoreOutage):
            return True  # one is enough until the stream is open again
        if len(self._items) >= self.limit:
            self._fail(SubscriberTooSlow(self.limit))
            return False
        self._items.append(item)
        self._ready.set()
        return True

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        self._items.clear()  # the memory is given back now, not when the reader wakes
        self._ready.set()

    async def next(self) -> Item:
        """The next change or stream event; raises SubscriberTooSlow or StreamEnded."""
        while not self._items:
            if self._failure is not None:
                raise self._failure
            self._ready.clear()
            await self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self._items.popleft()


class _Feed:
    """One collection's change stream and the subscribers it hands changes to."""

    def __init__(self, hub: ChangeHub, collection: str, watched: Watched) -> None:
        self.hub = hub
        self.collection = collection
        self.watched = watched
        self.by_key: dict[Any, set[Subscription]] = {}
        self.everyone: set[Subscription] = set()
        self.task: asyncio.Task[None] | None = None
        self.open = False
        self.outage: PyMongoError | None = None

    def subscribers(self) -> list[Subscription]:
        found = list(self.everyone)
        for subscribers in self.by_key.values():
            found.extend(subscribers)
        return found

    def add(self, subscription: Subscription) -> None:
        if subscription.key is None:
            self.everyone.add(subscription)
        else:
            self.by_key.setdefault(subscription.key, set()).add(subscription)
        if self.open:
            subscription._push(Opened(gap=False))
        elif self.outage is not None:
            subscription._push(StoreOutage(self.outage))
        if self.task is None:
            # A context of its own: the stream serves every subscriber, so its lines
            # carry no request id of the subscriber that happened to open it.
            self.task = asyncio.create_task(
                self._run(), name=f"changes-{self.collection}", context=contextvars.Context()
            )

    def remove(self, subscription: Subscription) -> None:
        if subscription.key is None:
            self.everyone.discard(subscription)
        else:
            subscribers = self.by_key.get(subscription.key)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self.by_key[subscription.key]
        if not self.everyone and not self.by_key and self.task is not None:
            # The last subscriber left: the stream closes (in its task's finally).
            # From inside the task itself (a subscriber dropped) the loop just ends,
            # so that the close is not cancelled too.
            if self.task is not asyncio.current_task():
                self.task.cancel()
            self._stopped()

    def _stopped(self) -> None:
        self.task = None
        self.open = False
        self.outage = None

    def _push(self, subscription: Subscription, item: Item) -> None:
        if not subscription._push(item):
            log.warning(
                "a subscriber of %s fell %d changes behind and was dropped",
                self.collection,
                subscription.limit,
            )
            self.remove(subscription)

    def _broadcast(self, item: Item) -> None:
        for subscription in self.subscribers():
            self._push(subscription, item)

    def _dispatch(self, change: Document) -> None:
        key = change.get("documentKey", {}).get("_id")
        for subscription in [*self.everyone, *self.by_key.get(key, ())]:
            self._push(subscription, change)

    def _end(self, error: BaseException) -> None:
        """Fail every subscriber with ``error``; the stream is not reopened."""
        subscribers = self.subscribers()
        self.everyone.clear()
        self.by_key.clear()
        self._stopped()
        for subscription in subscribers:
            subscription._fail(error)

    async def _run(self) -> None:
        me = asyncio.current_task()
        hub = self.hub
        timeout = hub.timeout
        collection = hub.db[self.collection]
        pipeline: list[Document] = [
            {"$match": {"operationType": {"$in": list(self.watched.operations)}}}
        ]
        options: dict[str, Any] = {
            # Each getMore waits at most this long on the server for a change,
            # well inside the deadline that tells a quiet stream from a stopped store.
            "max_await_time_ms": max(1, min(1000, round(timeout * 500))),
        }
        if self.watched.full_document:
            options["full_document"] = "updateLookup"
        delays = hub.backoff()
        token: Mapping[str, Any] | None = None
        opened_before = False
        while self.task is me:
            stream: AsyncChangeStream[Document] | None = None
            try:
                try:
                    stream = await _bounded(
                        collection.watch(pipeline, resume_after=token, **options), timeout
                    )
                    gap = opened_before and token is None
                except OperationFailure as error:
                    if token is None or is_store_outage(error):
                        raise
                    # The store no longer holds the history after the token: open afresh.
                    log.warning(
                        "the change stream on %s cannot resume (code %s); its subscribers "
                        "read their state again",
                        self.collection,
                        error.code,
                    )
                    token = None
                    stream = await _bounded(collection.watch(pipeline, **options), timeout)
                    gap = True
                opened_before = True
                self.open, self.outage = True, None
                delays.reset()
                token = stream.resume_token
                self._broadcast(Opened(gap=gap))
                while self.task is me:
                    if not stream.alive:
                        self._end(StreamEnded(f"the change stream on {self.collection} ended"))
                        return
                    change = await _bounded(stream.try_next(), timeout)
                    if change is not None:
                        self._dispatch(change)
                    token = stream.resume_token
            except PyMongoError as error:
                if self.task is not me:
                    return
                self.open = False
                if not is_store_outage(error):
                    log.warning(
                        "the change stream on %s failed: %s (code %s)",
                        self.collection,
                        type(error).__name__,
                        getattr(error, "code", None),
                    )
                    self._end(error)
                    return
                if self.outage is None:
                    self.outage = error
                    self._broadcast(StoreOutage(error))
                await asyncio.sleep(delays.next())
            finally:
                if stream is not None:
                    # Under a deadline too: closing sends killCursors, which would
                    # otherwise wait out a stopped store. A stream that cannot be
                    # closed dies with the store.
                    with contextlib.suppress(PyMongoError), pymongo.timeout(timeout):
                        await stream.close()


class ChangeHub:
    """The process's change streams: one per watched collection, shared by its subscribers."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        watched: Mapping[str, Watched],
        *,
        timeout: float = 4.0,
        limit: int = 100,
        backoff: type[Backoff] = Backoff,
    ) -> None:
        self.db = db
        self.timeout = timeout
        self.limit = limit
        self.backoff = backoff
        self._feeds = {name: _Feed(self, name, spec) for name, spec in watched.items()}

    @contextlib.contextmanager
    def subscribe(self, collection: str, key: Any = None) -> Iterator[Subscription]:
        """Changes of the document ``key`` of ``collection`` (None: of every document)."""
        feed = self._feeds[collection]
        subscription = Subscription(feed, key, self.limit)
        feed.add(subscription)
        try:
            yield subscription
        finally:
            feed.remove(subscription)

    def subscribers(self, collection: str) -> int:
        return len(self._feeds[collection].subscribers())

    async def aclose(self) -> None:
        """Close every stream (the app's shutdown)."""
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        for feed in self._feeds.values():
            feed._stopped()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _bounded(call: Any, timeout: float) -> Any:
    """A store call under a deadline of its own, that honours a cancellation it swallowed."""
    with pymongo.timeout(timeout):
        result = await call
    raise_if_cancelled()
    return result
