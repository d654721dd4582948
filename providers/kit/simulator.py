"""The machinery every gateway simulator repeats, so a simulator keeps only its wire format.

- :class:`Notifier` delivers notifications: to loopback targets only
  (127.0.0.0/8, ``::1``, ``localhost``), signed anew for every try by a callback
  the simulator gives, with bounded retries after the given delays, in the
  foreground or as background tasks a test can :meth:`~Notifier.drain`, and
  records every delivery in :attr:`~Notifier.log`.
- :class:`FaultQueue` holds injected faults (the next N calls of an operation,
  or of every operation, answer 500, stall, lose the answer, ...); the
  simulator decides what each fault kind does on its wire.
- :func:`pay_page` and :func:`page` render the payer's page and result pages.
- :func:`read_fields` reads a control request's parameters, JSON or form.
- :func:`control_routes` are the test controls every simulator shares, under
  the simulator's own prefix: ``GET {prefix}/deliveries`` (every delivery, with
  each try's status), ``GET {prefix}/faults`` (the faults still pending) and
  ``DELETE {prefix}/faults`` (clear them). A simulator lists its own routes
  first: where it already answers a path and method, its route wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "DEFAULT_OUTCOMES",
    "Delivery",
    "Fault",
    "FaultQueue",
    "Notifier",
    "Signer",
    "control_routes",
    "is_loopback_url",
    "page",
    "pay_page",
    "read_fields",
]

logger = logging.getLogger("branchpay.providers.kit.simulator")

NOT_LOOPBACK = "not sent: not a loopback URL"

# Called before every try: the headers and body to send (signed at that moment).
Signer = Callable[[], tuple[dict[str, str], bytes]]


def is_loopback_url(url: str) -> bool:
    """True only for an http(s) URL whose host is 127.0.0.0/8, ``::1`` or ``localhost``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _accepted_2xx(response: httpx.Response) -> bool:
    return 200 <= response.status_code < 300


@dataclass
class Delivery:
    """One delivery of a notification: every try's status (``None``: no answer or not sent)."""

    url: str
    ref: str  # the simulator's name for what was sent (a notification id, an order number)
    statuses: list[int | None] = field(default_factory=list)
    reply: str = ""  # the last answer's first 200 characters, or why nothing was sent
    accepted: bool = False

    @property
    def status(self) -> int | None:
        return self.statuses[-1] if self.statuses else None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Notifier:
    """Sends a simulator's notifications, with bounded retries, to loopback targets only.

    ``retry_delays`` are the pauses before the second, third, ... try (so at most
    ``len(retry_delays) + 1`` tries); ``accept`` says which answer ends them (default: any 2xx).
    """

    MAX_TRIES = 20

    def __init__(
        self,
        *,
        retry_delays: Sequence[float] = (),
        accept: Callable[[httpx.Response], bool] = _accepted_2xx,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if len(retry_delays) + 1 > self.MAX_TRIES:
            raise ValueError(f"at most {self.MAX_TRIES} tries")
        if any(d < 0 for d in retry_delays):
            raise ValueError("retry delays must not be negative")
        self.retry_delays = tuple(retry_delays)
        self.accept = accept
        self.timeout = timeout
        self.transport = transport
        self.log: list[Delivery] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _try(
        self, client: httpx.AsyncClient, url: str, sign: Signer
    ) -> tuple[int | None, str, bool]:
        headers, body = sign()
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            logger.info("notification to %s failed: %s", url, type(exc).__name__)
            return None, type(exc).__name__, False
        return response.status_code, response.text[:200], self.accept(response)

    async def deliver(
        self,
        url: str,
        sign: Signer,
        *,
        ref: str = "",
        retry_delays: Sequence[float] | None = None,
        delay: float = 0.0,
    ) -> Delivery:
        """Send now (after ``delay`` s), trying again after each of the delays until accepted.

        A target that is not loopback is never contacted: the delivery is logged
        with no status and the reply ``"not sent: not a loopback URL"``.
        """
        delays = self.retry_delays if retry_delays is None else tuple(retry_delays)
        if len(delays) + 1 > self.MAX_TRIES:
            raise ValueError(f"at most {self.MAX_TRIES} tries")
        delivery = Delivery(url=url, ref=ref)
        if delay:
            await asyncio.sleep(delay)
        if not is_loopback_url(url):
            delivery.statuses.append(None)
            delivery.reply = NOT_LOOPBACK
            logger.warning("notification %s to %s refused: not a loopback URL", ref, url)
            self.log.append(delivery)
            return delivery
        async with httpx.AsyncClient(timeout=self.timeout, transport=self.transport) as client:
            for pause in (None, *delays):
                if pause is not None:
                    await asyncio.sleep(pause)
                status, delivery.reply, delivery.accepted = await self._try(client, url, sign)
                delivery.statuses.append(status)
                if delivery.accepted:
                    break
        self.log.append(delivery)
        logger.info("notification %s to %s: %s", ref, url, delivery.statuses)
        return delivery

    def in_background(self, url: str, sign: Signer, **options: Any) -> asyncio.Task[Delivery]:
        """:meth:`deliver` as a task; :meth:`drain` awaits it, :meth:`aclose` cancels it."""
        task = asyncio.get_running_loop().create_task(self.deliver(url, sign, **options))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def later(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run other simulator work (e.g. a batch of deliveries) as a tracked background task."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until every background delivery has finished (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the background deliveries still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """A Starlette lifespan that cancels what is still being delivered at shutdown."""
        try:
            yield
        finally:
            await self.aclose()


@dataclass
class Fault:
    """An injected fault for the next ``remaining`` calls of ``target`` (``None``: any call).

    ``kind`` means what the simulator makes of it on its wire; ``seconds`` is a
    stall and ``status`` an HTTP status, for the kinds that use them.
    ``prefix=True`` matches every operation that starts with ``target``.
    """

    kind: str
    remaining: int = 1
    target: str | None = None
    seconds: float = 0.0
    status: int | None = None
    prefix: bool = False

    def matches(self, operation: str) -> bool:
        if self.target is None:
            return True
        return operation.startswith(self.target) if self.prefix else operation == self.target


class FaultQueue:
    """Faults in the order they were injected; the first that matches a call is used."""

    def __init__(self, *, one_per_target: bool = False) -> None:
        # one_per_target: a new fault for a target replaces the one pending for it.
        self.one_per_target = one_per_target
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> int:
        fault.remaining = max(fault.remaining, 1)  # a fault applies to one call at least
        if self.one_per_target:
            self._faults = [f for f in self._faults if f.target != fault.target]
        self._faults.append(fault)
        return len(self._faults)

    def peek(self, operation: str, kinds: Iterable[str] | None = None) -> Fault | None:
        wanted = None if kinds is None else frozenset(kinds)
        for fault in self._faults:
            if fault.matches(operation) and (wanted is None or fault.kind in wanted):
                return fault
        return None

    def take(self, operation: str, kinds: Iterable[str] | None = None) -> Fault | None:
        """The fault for this call, counted as used; ``None`` when no fault applies."""
        fault = self.peek(operation, kinds)
        if fault is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
        return fault

    @property
    def pending(self) -> list[Fault]:
        """The faults not used up yet, in order (a copy)."""
        return list(self._faults)

    def clear(self) -> None:
        self._faults.clear()

    def __len__(self) -> int:
        return len(self._faults)

    def __bool__(self) -> bool:
        return bool(self._faults)


def control_routes(prefix: str, *, notifier: Notifier, faults: FaultQueue) -> list[Route]:
    """The shared test controls under ``prefix`` (``/control``, ``/_control``, ...)."""

    async def deliveries(request: Request) -> Response:
        return JSONResponse([delivery.as_json() for delivery in notifier.log])

    async def pending_faults(request: Request) -> Response:
        if request.method == "DELETE":
            faults.clear()
        return JSONResponse({"pending_faults": [asdict(fault) for fault in faults.pending]})

    return [
        Route(f"{prefix}/deliveries", deliveries, methods=["GET"]),
        Route(f"{prefix}/faults", pending_faults, methods=["GET", "DELETE"]),
    ]


async def read_fields(request: Request) -> dict[str, Any]:
    """A control request's parameters: its JSON object, or its form / query fields."""
    body = await request.body()
    fields: dict[str, Any] = dict(request.query_params)
    if not body:
        return fields
    if "json" in request.headers.get("content-type", ""):
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("the body is not a JSON object")
        return fields | data
    return fields | dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


DEFAULT_OUTCOMES: tuple[tuple[str, str], ...] = (
    ("success", "Pay"),
    ("fail", "Fail"),
    ("close", "Cancel"),
)


def page(title: str, content: str = "", *, lang: str = "en", heading: str | None = None) -> str:
    """A minimal HTML page; ``content`` is HTML the caller has escaped."""
    return (
        f'<!doctype html><html lang="{html.escape(lang)}"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(heading or title)}</h1>{content}</body></html>"
    )


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def pay_page(
    title: str,
    *,
    lines: Sequence[str],
    amount_fen: int,
    action: str | None = None,
    outcomes: Sequence[tuple[str, str]] = DEFAULT_OUTCOMES,
    settled: str | None = None,
    lang: str = "en",
    heading: str | None = None,
    amount_label: str = "Amount:",
) -> str:
    """The payer's page: the ``lines`` (plain text), the amount, and one button per outcome.

    The buttons post ``outcome=<value>`` to ``action`` (default: the page's own
    URL); when ``settled`` names the attempt's state, it is shown instead of them.
    """
    text = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line)
    text += f"<p>{html.escape(amount_label)} &yen;{yuan(amount_fen)}</p>"
    if settled is not None:
        controls = f"<p>This payment is {html.escape(settled)}.</p>"
    else:
        buttons = "".join(
            f'<button name="outcome" value="{html.escape(value)}">{html.escape(label)}</button> '
            for value, label in outcomes
        )
        target = f' action="{html.escape(action)}"' if action is not None else ""
        controls = f'<form method="post"{target}>{buttons}</form>'
    return page(title, text + controls, lang=lang, heading=heading)
