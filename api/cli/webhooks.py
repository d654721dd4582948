"""The ``branchpay webhooks list|deliveries|replay`` commands, for whoever runs the service.

They talk to the store as the other admin commands do (``BRANCHPAY_MONGODB_URI``,
or the embedded store of a running ``make run``, or one started for the
command), but with the service's store timeouts, so a store that does not
answer is reported within seconds. The OS user sees every endpoint of every
branch; no signing secret and no URL query (it may carry a token) is printed.

``replay`` only marks deliveries due; a running service sends them on its next
poll (``BRANCHPAY_WEBHOOK_POLL_SECONDS``). Refused input is reported on stderr
as ``error [CODE]: message`` with exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import getpass
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import PyMongoError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from api.dev import devdb
from api.domain.problems import UserErrorCode
from api.domain.text import BRANCH_CODE, quoted
from api.domain.webhooks import DeliveryStatus
from api.settings import Settings
from api.store import Store, StoreTimeouts
from api.store.audit import AuditAction
from api.store.outage import is_store_outage

Document = dict[str, Any]
REFUSED = 2
DEFAULT_LIMIT = 20
MAX_LIMIT = 500
ID_SHOWN = 100  # characters of an unknown id repeated in a message


class WebhookCliCode(enum.StrEnum):
    """Every code these commands report, spelled as the API spells the same refusal.

    The last two are ``extensions.code`` values (api/schema/errors.py, not imported
    here: it builds the schema); tests/cli/test_webhooks.py holds the spellings together.
    """

    WEBHOOK_ENDPOINT_NOT_FOUND = UserErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND.value
    WEBHOOK_EVENT_NOT_FOUND = UserErrorCode.WEBHOOK_EVENT_NOT_FOUND.value
    UNKNOWN_BRANCH = UserErrorCode.UNKNOWN_BRANCH.value  # a --branch that is no branch code
    BAD_USER_INPUT = "BAD_USER_INPUT"  # --limit out of range
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # unreachable, or no answer in time


class Refused(Exception):
    def __init__(self, code: WebhookCliCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def webhooks(args: argparse.Namespace) -> int:
    from api.cli import store_uri

    err = Console(stderr=True)
    settings = Settings()
    try:
        _check_arguments(args)
        with store_uri(settings, reuse_running=True) as uri:
            return asyncio.run(_run(settings, uri, args))
    except Refused as refusal:
        _say(err, f"error [{refusal.code}]: {refusal}")
        return REFUSED
    except devdb.EmbeddedStoreError as error:
        _say(err, f"error [{WebhookCliCode.STORE_UNAVAILABLE}]: {error}")
        return REFUSED


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad arguments before the store is even reached."""
    branch = getattr(args, "branch", None)
    if branch is not None and BRANCH_CODE.problem(branch, "--branch") is not None:
        raise Refused(WebhookCliCode.UNKNOWN_BRANCH, f"no branch {quoted(branch, BRANCH_CODE)}")
    limit = getattr(args, "limit", None)
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise Refused(
            WebhookCliCode.BAD_USER_INPUT,
            f"--limit must be between 1 and {MAX_LIMIT}, not {limit}",
        )


async def _run(settings: Settings, uri: str, args: argparse.Namespace) -> int:
    timeouts = StoreTimeouts(
        server_selection_seconds=settings.store_server_selection_timeout_seconds,
        connect_seconds=settings.store_connect_timeout_seconds,
        socket_seconds=settings.store_socket_timeout_seconds,
    )
    durability: Document = {"journal": True} if settings.store_journal else {}
    store = Store.connect(uri, settings.database, timeouts, **durability)
    try:
        if args.webhooks_command == "list":
            return await _list(store, args.branch)
        if args.webhooks_command == "deliveries":
            limit = DEFAULT_LIMIT if args.limit is None else args.limit
            return await _deliveries(store, args.endpoint_id, failed=args.failed, limit=limit)
        return await _replay(store, args.event_id)
    except PyMongoError as error:
        if not is_store_outage(error):
            raise
        # Not the URI: it may hold the store's password.
        raise Refused(
            WebhookCliCode.STORE_UNAVAILABLE,
            f"the store did not answer in time ({type(error).__name__}); is it running, and "
            "is BRANCHPAY_MONGODB_URI right?",
        ) from None
    finally:
        await store.close()


async def _list(store: Store, branch: str | None) -> int:
    endpoints = await store.webhooks.endpoints_of(None if branch is None else [branch])
    scope = f"branch {branch}" if branch else "all branches"
    out = Console()
    _say(out, f"webhook endpoints of {scope}: {len(endpoints)}")
    if not endpoints:
        return 0
    table = Table()
    for column in ("id", "url", "events", "branches", "state", "failing since", "owner key"):
        table.add_column(column)
    for endpoint in endpoints:
        state = (
            "enabled"
            if endpoint.get("enabled")
            else f"disabled: {endpoint.get('disabledReason') or 'no reason recorded'}"
        )
        table.add_row(
            Text(endpoint["_id"]),
            Text(_shown_url(endpoint.get("url", ""))),
            Text("\n".join(endpoint.get("events", []))),
            Text(", ".join(endpoint.get("branches", []))),
            Text(state),
            Text(_time(endpoint.get("failingSince"))),
            Text(endpoint.get("ownerKey", "")),
        )
    out.print(table)
    return 0


async def _deliveries(store: Store, endpoint_id: str, *, failed: bool, limit: int) -> int:
    endpoint = await store.webhooks.endpoint(endpoint_id)
    if endpoint is None:
        raise Refused(
            WebhookCliCode.WEBHOOK_ENDPOINT_NOT_FOUND,
            f"no webhook endpoint {_shown_id(endpoint_id)}",
        )
    status = DeliveryStatus.FAILED if failed else None
    docs = await store.webhooks.page(endpoint_id, status=status, before=None, limit=limit + 1)
    more = len(docs) > limit
    docs = docs[:limit]
    which = "FAILED deliveries" if failed else "deliveries"
    out = Console()
    _say(
        out,
        f"{which} of {endpoint_id} ({_shown_url(endpoint.get('url', ''))}), newest first: "
        f"{len(docs)}" + (f" (more exist: raise --limit, up to {MAX_LIMIT})" if more else ""),
    )
    if not docs:
        return 0
    table = Table()
    for column in ("id", "event", "type", "status", "tries", "next attempt", "last try"):
        table.add_column(column)
    for doc in docs:
        pending = doc.get("status") == DeliveryStatus.PENDING.value
        table.add_row(
            Text(doc["_id"]),
            Text(doc.get("eventId", "")),
            Text(doc.get("type", "")),
            Text(doc.get("status", "")),
            Text(str(doc.get("tries", 0))),
            Text(_time(doc.get("nextAttemptAt")) if pending else ""),
            Text(_last_try(doc.get("attempts") or [])),
        )
    out.print(table)
    return 0


async def _replay(store: Store, event_id: str) -> int:
    event = await store.webhooks.event(event_id)
    if event is None:
        raise Refused(
            WebhookCliCode.WEBHOOK_EVENT_NOT_FOUND, f"no webhook event {_shown_id(event_id)}"
        )
    endpoints: dict[str, Document] = {}
    for delivery in await store.webhooks.deliveries_of_event(event_id):
        endpoint = await store.webhooks.endpoint(delivery["endpointId"])
        if endpoint is not None:
            endpoints[endpoint["_id"]] = endpoint
    if not endpoints:
        # A delivery to a deleted endpoint would only be failed again by the worker.
        raise Refused(
            WebhookCliCode.WEBHOOK_EVENT_NOT_FOUND,
            f"webhook event {event_id} has no delivery to an endpoint that still exists; "
            "nothing replayed",
        )
    targets = sorted(endpoints)
    # Audited first: a replay the log does not show is worse than a logged one that failed.
    await store.audit.record(
        getpass.getuser(),
        AuditAction.WEBHOOK_EVENT_REPLAYED,
        event_id,
        {"type": event.get("type"), "endpoints": targets},
        branch=event.get("branch"),
    )
    count = await store.webhooks.send_again(
        {"eventId": event_id, "endpointId": {"$in": targets}}, datetime.now(UTC)
    )
    out = Console()
    _say(
        out,
        f"replayed webhook event {event_id} ({event.get('type')}, branch {event.get('branch')}): "
        f"{count} {'delivery' if count == 1 else 'deliveries'} due again, to "
        f"{', '.join(targets)}; a running branchpay sends them on its next poll",
    )
    paused = sorted(i for i, e in endpoints.items() if not e.get("enabled"))
    if paused:
        _say(
            out,
            f"note: disabled, so their deliveries wait until enabled again: {', '.join(paused)}",
        )
    return 0


def _say(console: Console, line: str) -> None:
    # Ids and URLs are data: [brackets] in them must not be read as rich markup.
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _last_try(attempts: list[Mapping[str, Any]]) -> str:
    if not attempts:
        return ""
    last = attempts[-1]
    status = last.get("status")
    parts = [f"HTTP {status}" if status is not None else "no answer"]
    if last.get("error"):
        parts.append(str(last["error"]))
    parts.append(f"{float(last.get('latencyMs', 0.0)):.0f} ms")
    return ", ".join(parts)


def _shown_url(url: str) -> str:
    """The URL without its query or fragment: a token in them must not reach a terminal."""
    return url.split("?", 1)[0].split("#", 1)[0]


def _shown_id(value: str) -> str:
    return repr(value[:ID_SHOWN]) + ("..." if len(value) > ID_SHOWN else "")


def _time(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
