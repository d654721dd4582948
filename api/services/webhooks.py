"""Partner webhooks: endpoints a key manages, events taken out of the outboxes, signed deliveries.

Three jobs, each safe in N processes at once:

- **Endpoints** (``create`` ... ``retry``): managed by a partner, branch_admin or
  ops key for the branches it sees. An endpoint is managed by the key that
  created it and by every other key of the same role that sees all of the
  endpoint's branches (ops: every endpoint). Its deliveries show the data as
  its owner key sees it; a revoked owner pauses the endpoint until another
  managing key enables it again (and so becomes its owner).
- **Taking events out** (``dispatch``): an order's or payment's write pushed its
  event onto the document's ``outbox`` (api/store). Each event is stored once
  (``webhook_events``, by its id), one delivery per subscribed endpoint is
  created under ``{eventId}:{endpointId}`` (so two processes create it once), and
  only then is the entry pulled from the outbox: a crash anywhere leaves work
  that the next sweep finishes without doubling anything.
- **Delivering** (``deliver_due``): a worker claims a due delivery with a lease,
  signs it (Standard Webhooks: ``webhook-id`` is the event id, the same on every
  try), sends it through :mod:`api.services.outbound`, and records the try.
  2xx ends it; timeouts, connection errors, 429 and 5xx are tried again on
  :data:`~api.domain.webhooks.RETRY_SCHEDULE`; any other answer ends it FAILED.
  An endpoint whose tries all failed for three days is disabled and audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from api.domain.pii import PiiVault
from api.domain.principal import Permission, Principal
from api.domain.problems import Problem, UserErrorCode
from api.domain.text import BRANCH_CODE, WEBHOOK_DESCRIPTION, WEBHOOK_URL, quoted
from api.domain.webhooks import (
    DISABLE_AFTER,
    ROTATION_OVERLAP,
    DeliveryStatus,
    RetryPolicy,
    WebhookEventType,
    is_success,
    new_secret,
    signature_header,
)
from api.services.outbound import (
    OutboundClient,
    OutboundPolicy,
    OutboundResult,
    RefusalCode,
    TargetRefused,
    check_target,
)
from api.store import Store
from api.store.audit import AuditAction
from api.store.webhooks import Outbox
from api.telemetry import spans

Document = dict[str, Any]
log = logging.getLogger("branchpay.webhooks")

# An event's ``data`` as ``principal``'s GraphQL would show it: ``order`` (with its
# payments), and ``payment`` / ``refund`` for their events; None if it cannot see them.
Render = Callable[[Principal, Mapping[str, Any]], Awaitable[Document | None]]

RESPONSE_KEPT = 1024  # bytes of a receiver's answer kept on each try
SECRET_CONTEXT = "webhook signing secret"
MAX_ENDPOINTS_PER_BRANCH = 20
UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    lease: timedelta = timedelta(seconds=60)  # longer than a try may take (total timeout 15 s)
    # The sweep takes out events this old; fresher ones are taken out by the process
    # that wrote them, right after the write (``kick``).
    sweep_after: timedelta = timedelta(seconds=10)
    paused_recheck: timedelta = timedelta(minutes=5)
    concurrency: int = 8  # tries in flight per process


@dataclass(slots=True)
class EndpointResult:
    endpoint: Document | None = None
    secret: str | None = None  # shown once: on create and on rotate
    problems: list[Problem] = field(default_factory=list)


def _problem(path: str, message: str, code: UserErrorCode) -> Problem:
    return Problem((path,), message, code)


NOT_FOUND = "no webhook endpoint with that id"
PAUSED_REASON = "paused: the owner key was revoked"


class WebhookService:
    def __init__(
        self,
        store: Store,
        *,
        vault: PiiVault,
        render: Render,
        branch_exists: Callable[[str], bool],
        settings: WebhookSettings | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.vault = vault
        self.render = render
        self.branch_exists = branch_exists
        self.settings = settings or WebhookSettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.outbound = OutboundClient(self.settings.outbound)
        self._kicked: set[asyncio.Task[Any]] = set()
        # Documents this process is taking events out of right now: the sweep leaves them.
        self._taking: set[ObjectId] = set()
        self._wakeup = asyncio.Event()

    async def aclose(self) -> None:
        for task in list(self._kicked):
            task.cancel()
        await self.outbound.aclose()

    # --- who may manage what ---------------------------------------------------------

    @staticmethod
    def manages(principal: Principal, endpoint: Mapping[str, Any]) -> bool:
        if principal.may(Permission.ALL_BRANCHES):
            return True
        if endpoint.get("ownerKey") == principal.name:
            return True
        return endpoint.get("ownerRole") == principal.role.value and all(
            principal.sees_branch(code) for code in endpoint.get("branches", [])
        )

    async def _managed(self, principal: Principal, endpoint_id: str) -> Document | None:
        endpoint = await self.store.webhooks.endpoint(endpoint_id) if endpoint_id else None
        if endpoint is None or not self.manages(principal, endpoint):
            return None
        return endpoint

    # --- checks ---------------------------------------------------------------------------

    async def _check_url(self, url: str) -> Problem | None:
        if (why := WEBHOOK_URL.problem(url, "url")) is not None:
            return _problem("url", why, UserErrorCode.WEBHOOK_URL_INVALID)
        try:
            await asyncio.wait_for(
                check_target(url, self.settings.outbound), self.settings.outbound.connect_timeout
            )
        except TargetRefused as refused:
            code = (
                UserErrorCode.WEBHOOK_TARGET_FORBIDDEN
                if refused.code is RefusalCode.TARGET_FORBIDDEN
                else UserErrorCode.WEBHOOK_URL_INVALID
            )
            return _problem("url", refused.message, code)
        except TimeoutError:
            return _problem(
                "url", "the URL's host did not resolve in time", UserErrorCode.WEBHOOK_URL_INVALID
            )
        return None

    @staticmethod
    def _check_events(events: Sequence[str]) -> tuple[list[str], list[Problem]]:
        known = {kind.value for kind in WebhookEventType}
        problems = [
            _problem(
                "events",
                f"no event type {name[:60]!r}; see docs/webhooks.md",
                UserErrorCode.UNKNOWN_EVENT_TYPE,
            )
            for name in events
            if name not in known
        ]
        if not events:
            problems.append(
                _problem("events", "name at least one event type", UserErrorCode.NO_EVENT_TYPES)
            )
        return sorted(set(events) & known), problems

    def _check_branches(self, principal: Principal, branches: Sequence[str]) -> list[Problem]:
        problems = [
            _problem(
                "branches", f"no branch {quoted(code, BRANCH_CODE)}", UserErrorCode.UNKNOWN_BRANCH
            )
            for code in branches
            if not (self.branch_exists(code) and principal.sees_branch(code))
        ]
        if not branches:
            problems.append(
                _problem("branches", "name at least one branch", UserErrorCode.UNKNOWN_BRANCH)
            )
        return problems

    async def _check_room(self, branches: Sequence[str], endpoint_id: str | None) -> list[Problem]:
        """A branch takes at most MAX_ENDPOINTS_PER_BRANCH endpoints (a delivery each per event)."""
        existing = await self.store.webhooks.endpoints_of(list(branches))
        return [
            _problem(
                "branches",
                f"branch {code!r} has {MAX_ENDPOINTS_PER_BRANCH} webhook endpoints already",
                UserErrorCode.TOO_MANY_WEBHOOK_ENDPOINTS,
            )
            for code in sorted(set(branches))
            if sum(1 for e in existing if code in e["branches"] and e["_id"] != endpoint_id)
            >= MAX_ENDPOINTS_PER_BRANCH
        ]

    @staticmethod
    def _check_description(description: str | None) -> list[Problem]:
        if description is None:
            return []
        why = WEBHOOK_DESCRIPTION.problem(description, "description")
        return (
            [] if why is None else [_problem("description", why, UserErrorCode.INVALID_DESCRIPTION)]
        )

    # --- endpoints ---------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        *,
        url: str,
        events: Sequence[str],
        branches: Sequence[str],
        description: str | None = None,
    ) -> EndpointResult:
        """A new endpoint and its signing secret (returned once, never again)."""
        chosen, problems = self._check_events(events)
        problems += self._check_branches(principal, branches)
        problems += self._check_description(description)
        if not problems:
            problems += await self._check_room(branches, None)
        if (bad_url := await self._check_url(url)) is not None:
            problems.insert(0, bad_url)
        if problems:
            return EndpointResult(problems=problems)
        now = self.clock()
        secret = new_secret()
        endpoint: Document = {
            "_id": f"we_{ObjectId()}",
            "url": url,
            "events": chosen,
            "branches": sorted(set(branches)),
            "description": description or "",
            "enabled": True,
            "disabledReason": None,
            "pausedReason": None,
            "ownerKey": principal.name,
            "ownerRole": principal.role.value,
            "secrets": [self._sealed(secret, now)],
            "failingSince": None,
            "createdAt": now,
            "updatedAt": now,
        }
        await self.store.webhooks.insert_endpoint(endpoint)
        await self._audit(
            principal, AuditAction.WEBHOOK_ENDPOINT_CREATED, endpoint, {"events": chosen}
        )
        return EndpointResult(endpoint=endpoint, secret=secret)

    async def update(
        self,
        principal: Principal,
        endpoint_id: str,
        *,
        url: str = UNSET,
        events: Sequence[str] = UNSET,
        branches: Sequence[str] = UNSET,
        enabled: bool = UNSET,
        description: str | None = UNSET,
    ) -> EndpointResult:
        endpoint = await self._managed(principal, endpoint_id)
        if endpoint is None:
            return EndpointResult(
                problems=[_problem("id", NOT_FOUND, UserErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND)]
            )
        problems: list[Problem] = []
        changes: Document = {}
        if url is not UNSET:
            if (bad_url := await self._check_url(url)) is not None:
                problems.append(bad_url)
            changes["url"] = url
        if events is not UNSET:
            chosen, more = self._check_events(events)
            problems += more
            changes["events"] = chosen
        owner = await self.store.keys.principal_of(endpoint["ownerKey"])
        takes_over = owner is None and enabled is True
        if owner is None and enabled is True and principal.role.value != endpoint["ownerRole"]:
            problems.append(
                _problem(
                    "enabled",
                    f"its owner key is revoked: a {endpoint['ownerRole']} key must take it over",
                    UserErrorCode.WEBHOOK_OWNER_REVOKED,
                )
            )
        if branches is not UNSET:
            problems += self._check_branches(principal, branches)
            # Deliveries show the data as the owner sees it: it must see every branch.
            viewer = principal if takes_over or owner is None else owner
            problems += [
                _problem(
                    "branches",
                    f"the endpoint's owner key {endpoint['ownerKey']!r} does not see {code!r}",
                    UserErrorCode.UNKNOWN_BRANCH,
                )
                for code in branches
                if principal.sees_branch(code) and not viewer.sees_branch(code)
            ]
            problems += await self._check_room(branches, endpoint_id)
            changes["branches"] = sorted(set(branches))
        if description is not UNSET:
            problems += self._check_description(description)
            changes["description"] = description or ""
        if enabled is not UNSET:
            changes["enabled"] = enabled
            if enabled:
                changes |= {"disabledReason": None, "failingSince": None, "pausedReason": None}
                if takes_over:
                    # A paused endpoint's new owner: its data is now shown as this key sees it.
                    changes |= {"ownerKey": principal.name, "ownerRole": principal.role.value}
            else:
                changes["disabledReason"] = f"disabled by {principal.name}"
        if problems:
            return EndpointResult(problems=problems)
        now = self.clock()
        updated = await self.store.webhooks.update_endpoint(
            endpoint_id, {"$set": {**changes, "updatedAt": now}}
        )
        if updated is None:
            return EndpointResult(
                problems=[_problem("id", NOT_FOUND, UserErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND)]
            )
        if enabled is True:
            if takes_over:  # before they are due: none goes out as the old owner saw it
                await self.store.webhooks.forget_bodies(endpoint_id)
            await self.store.webhooks.wake(endpoint_id, now)
            self._wakeup.set()
        await self._audit(
            principal, AuditAction.WEBHOOK_ENDPOINT_UPDATED, updated, {"changed": sorted(changes)}
        )
        return EndpointResult(endpoint=updated)

    async def rotate(self, principal: Principal, endpoint_id: str) -> EndpointResult:
        """A new secret; the ones before keep signing beside it for 24 hours."""
        endpoint = await self._managed(principal, endpoint_id)
        if endpoint is None:
            return EndpointResult(
                problems=[_problem("id", NOT_FOUND, UserErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND)]
            )
        now = self.clock()
        secret = new_secret()
        kept = [
            {**s, "expiresAt": s.get("expiresAt") or now + ROTATION_OVERLAP}
            for s in endpoint["secrets"]
            if s.get("expiresAt") is None or s["expiresAt"] > now
        ]
        updated = await self.store.webhooks.update_endpoint(
            endpoint_id,
            {"$set": {"secrets": [self._sealed(secret, now), *kept], "updatedAt": now}},
        )
        if updated is None:
            return EndpointResult(
                problems=[_problem("id", NOT_FOUND, UserErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND)]
            )
        await self._audit(principal, AuditAction.WEBHOOK_SECRET_ROTATED, updated, {})
        return EndpointResult(endpoint=updated, secret=secret)

    async def delete(self, principal: Principal, endpoint_id: str) -> EndpointResult:
        endpoint = await self._managed(principal, endpoint_id)
        if endpoint is None:
            return EndpointResult(
                problems=[_problem("id", NOT_FOUND, UserErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND)]
            )
        now = self.clock()
        deleted = await self.store.webhooks.update_endpoint(
            endpoint_id, {"$set": {"deleted": True, "enabled": False, "updatedAt": now}}
        )
        if deleted is not None:
            await self._audit(principal, AuditAction.WEBHOOK_ENDPOINT_DELETED, deleted, {})
        return EndpointResult(endpoint=deleted or endpoint)

    async def endpoints(
        self, principal: Principal, branches: Sequence[str] | None = None
    ) -> list[Document]:
        """The endpoints ``principal`` manages, of ``branches`` (None: all it sees)."""
        scope = principal.scope(branches)
        found = await self.store.webhooks.endpoints_of(scope)
        return [e for e in found if self.manages(principal, e)]

    async def endpoint(self, principal: Principal, endpoint_id: str) -> Document | None:
        return await self._managed(principal, endpoint_id)

    async def deliveries(
        self,
        principal: Principal,
        endpoint_id: str,
        *,
        status: DeliveryStatus | None,
        first: int,
        before: ObjectId | None,
    ) -> list[Document] | None:
        """Up to ``first`` deliveries of a managed endpoint, newest first; None if not managed."""
        if await self._managed(principal, endpoint_id) is None:
            return None
        return await self.store.webhooks.page(
            endpoint_id, status=status, before=before, limit=first
        )

    async def replay(self, principal: Principal, event_id: str) -> tuple[int, list[Problem]]:
        """Send the event again (same id) to every endpoint ``principal`` manages that had it."""
        event = await self.store.webhooks.event(event_id) if event_id else None
        if event is None or not principal.sees_branch(event["branch"]):
            return 0, [
                _problem(
                    "eventId",
                    "no webhook event with that id",
                    UserErrorCode.WEBHOOK_EVENT_NOT_FOUND,
                )
            ]
        managed = [
            d["endpointId"]
            for d in await self.store.webhooks.deliveries_of_event(event_id)
            if (e := await self.store.webhooks.endpoint(d["endpointId"]))
            and self.manages(principal, e)
        ]
        if not managed:
            return 0, [
                _problem(
                    "eventId",
                    "no webhook event with that id",
                    UserErrorCode.WEBHOOK_EVENT_NOT_FOUND,
                )
            ]
        await self.store.audit.record(
            principal.name,
            AuditAction.WEBHOOK_EVENT_REPLAYED,
            event_id,
            {"endpoints": managed, "type": event["type"]},
            branch=event["branch"],
        )
        count = await self.store.webhooks.send_again(
            {"eventId": event_id, "endpointId": {"$in": managed}}, self.clock()
        )
        self._wakeup.set()
        return count, []

    async def retry_deliveries(
        self, principal: Principal, endpoint_id: str, since: datetime
    ) -> tuple[int, list[Problem]]:
        """Send again every FAILED delivery of the endpoint created since ``since``."""
        endpoint = await self._managed(principal, endpoint_id)
        if endpoint is None:
            return 0, [_problem("endpointId", NOT_FOUND, UserErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND)]
        await self._audit(
            principal, AuditAction.WEBHOOK_DELIVERIES_RETRIED, endpoint, {"since": _iso(since)}
        )
        count = await self.store.webhooks.send_again(
            {
                "endpointId": endpoint_id,
                "status": DeliveryStatus.FAILED.value,
                "createdAt": {"$gte": since},
            },
            self.clock(),
        )
        self._wakeup.set()
        return count, []

    def _sealed(self, secret: str, now: datetime) -> Document:
        return {
            "secret": self.vault.encrypt(secret, SECRET_CONTEXT),
            "createdAt": now,
            "expiresAt": None,
        }

    def secrets_in_force(self, endpoint: Mapping[str, Any], now: datetime) -> list[str]:
        return [
            self.vault.decrypt(s["secret"], SECRET_CONTEXT)
            for s in endpoint.get("secrets", [])
            if s.get("expiresAt") is None or s["expiresAt"] > now
        ]

    async def _audit(
        self,
        principal: Principal | None,
        action: AuditAction,
        endpoint: Mapping[str, Any],
        detail: Document,
    ) -> None:
        branches = endpoint.get("branches") or [None]
        await self.store.audit.record(
            principal.name if principal else "branchpay",
            action,
            endpoint["_id"],
            {"url": _safe_url(endpoint.get("url", "")), **detail},
            branch=branches[0] if len(branches) == 1 else None,
        )

    # --- taking events out of the outboxes ------------------------------------------------

    def kick(self, kind: str, doc_id: ObjectId) -> None:
        """Take out the events a write just left on an order or payment, in the background."""
        # A context of its own: not the request's store deadline, which may end first.
        task = asyncio.get_running_loop().create_task(
            self._dispatch_one(kind, doc_id), context=contextvars.Context()
        )
        self._kicked.add(task)
        task.add_done_callback(self._kicked.discard)

    async def _dispatch_one(self, kind: str, doc_id: ObjectId) -> None:
        outbox = self._outbox(kind)
        self._taking.add(doc_id)
        try:
            doc = await outbox.holding(doc_id)
            if doc is not None:
                await self._take_out(kind, outbox, doc)
        except Exception:
            # The sweep finds what is left; nothing is lost.
            log.warning(
                "taking out the webhook events of %s %s failed; the sweep retries",
                kind,
                doc_id,
                exc_info=True,
            )
        finally:
            self._taking.discard(doc_id)

    def _outbox(self, kind: str) -> Outbox:
        return self.store.order_outbox if kind == "order" else self.store.payment_outbox

    async def dispatch(self, limit: int = 100) -> int:
        """Take out the events older than ``sweep_after`` from every outbox; how many."""
        before = self.clock() - self.settings.sweep_after
        taken = 0
        for kind in ("order", "payment"):
            outbox = self._outbox(kind)
            for doc in await outbox.due(before, limit):
                if doc["_id"] not in self._taking:  # this process is at it already
                    taken += await self._take_out(kind, outbox, doc)
        return taken

    async def _take_out(self, kind: str, outbox: Outbox, doc: Document) -> int:
        order_id = doc["_id"] if kind == "order" else doc["orderId"]
        taken = 0
        for entry in list(doc.get("outbox", [])):
            event: Document = {
                "_id": entry["id"],
                "type": entry["type"],
                "at": entry["at"],
                "branch": doc["branch"],
                "orderId": order_id,
            }
            if kind == "payment":
                event["paymentId"] = doc["_id"]
            if entry.get("refund"):
                event["refund"] = entry["refund"]
            endpoints = await self.store.webhooks.subscribed(event["branch"], event["type"])
            if endpoints:  # an event nobody takes is not kept
                await self.store.webhooks.record_event(event)
            for endpoint in endpoints:
                if await self._create_delivery(event, endpoint):
                    self._wakeup.set()  # the delivery loop sends it now, not at its next poll
            await outbox.take_out(doc["_id"], entry["id"])
            taken += 1
        return taken

    async def _create_delivery(self, event: Document, endpoint: Document) -> bool:
        """Create the event's delivery to the endpoint unless it exists; True when created."""
        delivery_id = f"{event['_id']}:{endpoint['_id']}"
        if await self.store.webhooks.delivery(delivery_id, event["branch"]) is not None:
            return False
        now = self.clock()
        owner = await self.store.keys.principal_of(endpoint["ownerKey"])
        body = await self._body(event, owner) if owner is not None else None
        delivery: Document = {
            "_id": delivery_id,
            "seq": ObjectId(),
            "eventId": event["_id"],
            "endpointId": endpoint["_id"],
            "type": event["type"],
            "branch": event["branch"],
            "body": body,
            "status": DeliveryStatus.PENDING.value,
            "tries": 0,
            "round": 0,
            "nextAttemptAt": now,
            "leaseToken": None,
            "attempts": [],
            "createdAt": now,
            "updatedAt": now,
        }
        return await self.store.webhooks.insert_delivery(delivery)

    async def _body(self, event: Mapping[str, Any], owner: Principal) -> str | None:
        """The event as JSON, with the order as ``owner`` sees it; None if it may not."""
        if not owner.sees_branch(event["branch"]):
            return None
        # Read before the data, so the data is never older than the version it carries.
        stored = await self.store.orders.get(event["orderId"], {"version": 1})
        payments = await self.store.payments.of_order(event["orderId"])
        version = int((stored or {}).get("version", 0)) + sum(
            int(p.get("version", 0)) for p in payments
        )
        data = await self.render(owner, event)
        if data is None:
            return None
        return json.dumps(
            {
                "id": event["_id"],
                "type": event["type"],
                "timestamp": _iso(event["at"]),
                "branch": event["branch"],
                "version": version,
                "data": data,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    # --- delivering --------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when work may have arrived in this process, or after ``timeout`` s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()

    async def work_once(self, poll: float) -> None:
        """One pass of a process's delivery loop: deliver what is due, then wait for more.

        The sweep of the outboxes (:meth:`dispatch`) runs in a loop of its own, so a
        slow sweep never holds deliveries back.
        """
        try:
            await self.deliver_due()
        except Exception:
            # The store (most likely) failed: try again after a poll, not at once, or
            # the workers' claims would crowd out the requests' own store calls.
            await asyncio.sleep(poll)
            raise
        await self.wait_for_work(poll)

    async def deliver_due(self, limit: int = 100) -> int:
        """Claim due deliveries one by one and send them, ``concurrency`` tries at a time;
        how many were tried.

        One claim at a time, on purpose: during a store outage, many concurrent server
        selections in one process have hung requests past their deadline (PyMongo on
        Python 3.11, tests/flows/test_store_outages.py).
        """
        tried = 0
        running: set[asyncio.Task[bool]] = set()
        try:
            while tried + len(running) < limit:
                if len(running) >= self.settings.concurrency:
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    tried += sum(1 for t in done if not t.cancelled() and t.result())
                    continue
                claimed = await self.store.webhooks.claim(self.clock(), self.settings.lease)
                if claimed is None:
                    break
                running.add(asyncio.create_task(self._try(claimed)))
            if running:
                done, _ = await asyncio.wait(running)
                tried += sum(1 for t in done if not t.cancelled() and t.result())
        finally:
            for task in running:
                task.cancel()
        return tried

    async def _try(self, claimed: Document) -> bool:
        """Send a claimed delivery once, as a ``webhook delivery`` span (docs/operations.md)."""
        with spans.span(
            "webhook delivery",
            delivery_id=str(claimed["_id"]),
            event_id=claimed.get("eventId"),
            endpoint_id=str(claimed["endpointId"]),
            branch=claimed.get("branch"),
            round=claimed.get("round", 0),
        ):
            return await self._try_claimed(claimed)

    async def _try_claimed(self, claimed: Document) -> bool:
        now = self.clock()
        endpoint = await self.store.webhooks.endpoint(claimed["endpointId"])
        if endpoint is None:  # deleted: nothing will be sent
            return await self._give_up(claimed, "endpoint deleted", now)
        if not endpoint.get("enabled"):  # sent again only by retryWebhookDeliveries
            return await self._give_up(claimed, "endpoint disabled", now)
        owner = await self.store.keys.principal_of(endpoint["ownerKey"])
        if owner is None:  # paused: its deliveries wait for a key that takes it over
            if await self.store.webhooks.pause(endpoint["_id"], PAUSED_REASON, now):
                await self._audit(
                    None,
                    AuditAction.WEBHOOK_ENDPOINT_PAUSED,
                    endpoint,
                    {"reason": "owner key revoked"},
                )
            await self.store.webhooks.postpone(claimed, now + self.settings.paused_recheck)
            return False
        body = claimed.get("body")
        if body is None:  # the owner could not see the order when it was created
            body = await self._body(await self._event_of(claimed), owner)
            if body is None:
                return await self._give_up(claimed, "not visible to the endpoint's key", now)
            await self.store.webhooks.set_body(claimed["_id"], body)
        result = await self._send(endpoint, claimed["eventId"], body.encode())
        return await self._record(claimed, endpoint, result)

    async def _give_up(self, claimed: Document, why: str, now: datetime) -> bool:
        """End a claimed delivery FAILED without sending it; False: nothing was tried."""
        spans.note(delivery_status=DeliveryStatus.FAILED.value, failure=why)
        attempt = {"at": now, "status": None, "latencyMs": 0, "response": "", "error": why}
        await self.store.webhooks.finish_try(
            claimed, attempt, {"status": DeliveryStatus.FAILED.value}, now
        )
        return False

    async def _event_of(self, delivery: Mapping[str, Any]) -> Document:
        event = await self.store.webhooks.event(delivery["eventId"], delivery["branch"])
        if event is None:
            raise LookupError(f"webhook event {delivery['eventId']} is missing")
        return event

    async def _send(
        self, endpoint: Mapping[str, Any], event_id: str, body: bytes
    ) -> OutboundResult:
        now = self.clock()
        timestamp = int(now.timestamp())
        headers = {
            "content-type": "application/json",
            "user-agent": "branchpay-webhooks/1",
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                self.secrets_in_force(endpoint, now), event_id, timestamp, body
            ),
        }
        return await self.outbound.post(endpoint["url"], headers, body)

    async def _record(self, claimed: Document, endpoint: Document, result: OutboundResult) -> bool:
        now = self.clock()
        attempt = {
            "at": now,
            "status": result.status,
            "latencyMs": round(result.latency_ms, 1),
            "response": result.body[:RESPONSE_KEPT].decode("utf-8", "replace"),
            "error": result.error,
        }
        fields: Document
        if is_success(result.status):
            fields = {"status": DeliveryStatus.SUCCEEDED.value, "nextAttemptAt": None}
        else:
            retry_at = (
                self.settings.retry.next_try(int(claimed.get("round", 0)) + 1, now, self.rng)
                if result.retryable
                else None
            )
            fields = (
                {"status": DeliveryStatus.FAILED.value, "nextAttemptAt": None}
                if retry_at is None
                else {"nextAttemptAt": retry_at}
            )
        spans.note(
            response_status=result.status,
            failure=result.error,
            delivery_status=fields.get("status", DeliveryStatus.PENDING.value),
        )
        if not await self.store.webhooks.finish_try(claimed, attempt, fields, now):
            log.warning("delivery %s: lease lost before its try was recorded", claimed["_id"])
            return True
        if is_success(result.status):
            await self.store.webhooks.succeeding(endpoint["_id"])
        else:
            await self._note_failure(endpoint, now)
        return True

    async def _note_failure(self, endpoint: Document, now: datetime) -> None:
        current = await self.store.webhooks.failing(endpoint["_id"], now)
        since = (current or {}).get("failingSince")
        if since is None or now - since < DISABLE_AFTER:
            return
        reason = f"every delivery failed since {_iso(since)}"
        if await self.store.webhooks.disable(endpoint["_id"], reason, now):
            log.warning("webhook endpoint %s disabled: %s", endpoint["_id"], reason)
            await self._audit(
                None, AuditAction.WEBHOOK_ENDPOINT_DISABLED, endpoint, {"reason": reason}
            )


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _safe_url(url: str) -> str:
    """The URL without its query (which may carry a token) for the audit log."""
    return url.split("?", 1)[0][:200]
