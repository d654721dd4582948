"""The Starlette application: GraphQL, health, notifications, and the background tasks.

``create_app(settings)`` builds everything from settings; the store client,
the plugin registry and the background tasks live for the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pluggy
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from api.config.branches import BranchView, ProviderView, provider_view
from api.config.live import ChangeKind, ConfigChange, ProviderRegistry
from api.domain.pii import PiiVault
from api.domain.webhooks import RetryPolicy
from api.plugins.contract import NotificationReply, NotificationRequest
from api.plugins.manager import ENTRY_POINT_GROUP, load_plugin_manager, notify
from api.schema import build_schema
from api.schema.context import Services
from api.schema.event_view import EventView
from api.services.bills import BillReconciliation, BillSettings
from api.services.budget import SharedBudget
from api.services.config_edits import ConfigEdits
from api.services.gauges import StoreGauges
from api.services.jobs import ClusterJob
from api.services.notifications import Notifications
from api.services.orders import OrderService
from api.services.outbound import OutboundPolicy
from api.services.payments import CounterTiming, PaymentService
from api.services.webhooks import WebhookService, WebhookSettings
from api.settings import Settings
from api.store import Store, StoreTimeouts
from api.store.audit import AuditAction
from api.store.cancellation import raise_if_cancelled
from api.store.changes import ALL_OPERATIONS, ChangeHub, Watched
from api.store.marks import COLLECTION as MARKS_COLLECTION
from api.store.marks import StoreMarks
from api.store.outage import is_store_outage, report_store_outage
from api.telemetry import metrics
from api.telemetry.optional import load_tracing
from api.web.admin import admin_page
from api.web.body_limit import BodyLimit
from api.web.demo import DemoStorefront
from api.web.gate import ApiKeyGate
from api.web.graphiql import GraphiQLPage
from api.web.graphql import GraphQLApp
from api.web.last_resort import LastResort
from api.web.metrics import MetricsEndpoint
from api.web.pages import VendorFiles, asset_routes
from api.web.request_id import RequestId
from api.web.store_deadline import StoreDeadline
from api.web.websocket import OpenSockets

if TYPE_CHECKING:
    from api.telemetry.traces import Tracing

log = logging.getLogger("branchpay")

BILL_CHECK_SECONDS = 60.0


def branch_views(registry: ProviderRegistry) -> Mapping[str, BranchView]:
    views: dict[str, BranchView] = {}
    for code, branch in registry.config.branches.items():
        providers: list[ProviderView] = [provider_view(p) for p in registry.enabled(code)]
        views[code] = BranchView(
            code=code,
            name=branch.name,
            province=branch.province,
            operator=branch.operator,
            providers=tuple(providers),
        )
    return views


async def _every(interval: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
    store_down = False
    while True:
        try:
            await job()
            if store_down:
                log.warning("background job %s: the store answers again", name)
                store_down = False
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if is_store_outage(error):
                # One line when the outage starts, not one a run (the revocation
                # check runs twice a second), and no traceback: the store is down.
                if not store_down:
                    report_store_outage(error, f"background job {name}")
                store_down = True
            else:
                log.exception("background job %s failed; retrying in %.0f s", name, interval)
        # A cancellation can be lost inside the job (api/store/cancellation.py), as
        # PyMongo's connection set-up did at a shutdown right after start-up. Honour
        # it here, or the app's shutdown waits for this loop for ever.
        raise_if_cancelled()
        await asyncio.sleep(interval)


async def _audit_changes(store: Store, path: Path, changes: list[ConfigChange]) -> None:
    """Record what a reload of plugins.toml applied: each process records what it applied."""
    actor = f"config-reload@{socket.gethostname()}:{os.getpid()}"
    for change in changes:
        action = {
            ChangeKind.PROVIDER_ENABLED: AuditAction.PROVIDER_ENABLED,
            ChangeKind.PROVIDER_DISABLED: AuditAction.PROVIDER_DISABLED,
        }.get(change.kind, AuditAction.CONFIG_CHANGED)
        detail: dict[str, Any] = {"file": str(path), "change": change.kind.value}
        if change.fields:
            detail["fields"] = list(change.fields)
        await store.audit.record(
            actor, action, change.provider or change.branch, detail, branch=change.branch
        )


def webhook_settings(settings: Settings) -> WebhookSettings:
    return WebhookSettings(
        retry=RetryPolicy(scale=settings.webhook_retry_scale),
        outbound=OutboundPolicy(
            allow_loopback=settings.webhooks_allow_loopback,
            connect_timeout=settings.webhook_connect_timeout_seconds,
            total_timeout=settings.webhook_timeout_seconds,
        ),
        lease=timedelta(seconds=settings.webhook_lease_seconds),
    )


def bill_settings(settings: Settings) -> BillSettings:
    return BillSettings(
        tolerance=timedelta(seconds=settings.bill_tolerance_seconds),
        stale_days=settings.discrepancy_stale_days,
        daily=settings.bill_reconcile,
        daily_at=settings.bill_reconcile_time,
    )


def _emit(plugins: pluggy.PluginManager, hook: str, order: Mapping[str, Any]) -> None:
    notify(plugins, hook, order=order)


def _reply(reply: NotificationReply) -> Response:
    return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)


def tune_garbage_collector() -> None:
    """Collect less often, and never rescan what start-up built (docs/performance.md).

    A page of 50 orders allocates thousands of short-lived objects, so the
    default threshold (700 allocations) ran the youngest generation many
    times per request, and older generations rescanned every module, the
    schema and the plugin registry. Frozen, those are left alone; cycles are
    still collected, only in larger batches. Opt-in (BRANCHPAY_GC_TUNING): in
    the bench it saved about 7 % of the CPU of a page of orders, and the API's
    memory crept 8.8 % over a 10-minute soak where Python's defaults stay flat.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)


def key_budget(settings: Settings) -> SharedBudget:
    """The API keys' query-cost budget, shared through the store by every process."""
    return SharedBudget(
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
        name="per-key",
        timeout=settings.rate_limit_store_timeout_seconds,
        fallback_seconds=settings.rate_limit_fallback_seconds,
    )


Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def traced(lifespan: Lifespan, tracing: Tracing) -> Lifespan:
    """The lifespan with tracing around it: on before the first client, flushed after the last."""

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        tracing.start()
        try:
            async with lifespan(app):
                yield
        finally:
            tracing.stop()

    return run


def create_app(
    settings: Settings | None = None,
    *,
    mongodb_uri: str | None = None,
    client_options: Mapping[str, Any] | None = None,
    gated_routes: Callable[[Callable[[], Services]], Sequence[BaseRoute]] | None = None,
    budget: SharedBudget | None = None,
) -> Starlette:
    """The ASGI app.

    ``client_options`` go to PyMongo's client (tests add command listeners); the
    client's timeouts come from the ``store_*`` settings, and ``client_options``
    win over them. A program embedding the app (``make bench``'s server) may
    add ``gated_routes``, served behind the API-key gate like /graphql, and
    give the keys' ``budget`` of its own.
    """
    settings = settings or Settings()
    uri = mongodb_uri or settings.mongodb_uri
    if uri is None:
        raise RuntimeError("no MongoDB URI: set BRANCHPAY_MONGODB_URI or use `branchpay serve`")
    vault = PiiVault(settings.pii_master_key())
    record = metrics.configure(settings.metrics)
    # Traces (extra `otel`): a missing extra or a bad endpoint stops start-up here.
    tracing = load_tracing(settings) if settings.otel_endpoint else None
    state: dict[str, Services] = {}
    budget = budget or key_budget(settings)
    failures = SharedBudget(
        settings.failed_auth_per_second,
        settings.failed_auth_burst,
        name="failed-auth",
        timeout=settings.rate_limit_store_timeout_seconds,
        fallback_seconds=settings.rate_limit_fallback_seconds,
    )
    sockets = OpenSockets(lambda: services().store.keys)

    def services() -> Services:
        return state["services"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        plugins = load_plugin_manager()
        async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as http:
            timeouts = StoreTimeouts(
                server_selection_seconds=settings.store_server_selection_timeout_seconds,
                connect_seconds=settings.store_connect_timeout_seconds,
                socket_seconds=settings.store_socket_timeout_seconds,
            )
            durability: dict[str, Any] = {"journal": True} if settings.store_journal else {}
            options = {**durability, **(client_options or {})}
            if record.enabled:
                # Store command latency by command name (driver command monitoring).
                listeners = list(options.get("event_listeners", ()))
                options["event_listeners"] = [*listeners, metrics.StoreCommands()]
            store = Store.connect(uri, settings.database, timeouts, **options)
            await store.ensure_indexes()
            # Every process on this store spends from the same buckets.
            budget.attach(store.rate_limits)
            failures.attach(store.rate_limits)
            changes = ChangeHub(
                store.db,
                {
                    # Status changes of the orders that subscriptions follow.
                    "orders": Watched(("update", "replace")),
                    # Every write to a key, for the keys cached in memory.
                    "api_keys": Watched(ALL_OPERATIONS),
                },
                timeout=settings.store_timeout_seconds,
                limit=settings.ws_subscription_queue_events,
            )
            store.keys.on_revoked = sockets.close_key
            marks = store.collection(MARKS_COLLECTION)
            registry = ProviderRegistry(
                settings.plugins_toml,
                plugins,
                http,
                entry_point_group=ENTRY_POINT_GROUP,
                marks=lambda provider: StoreMarks(marks, provider),
            )
            registry.load()
            registry.on_applied = partial(_audit_changes, store, settings.plugins_toml)
            payments = PaymentService(
                store,
                registry,
                base_url=lambda: settings.base_url,
                plugins=plugins,
                counter=CounterTiming(
                    poll_seconds=settings.counter_poll_seconds,
                    wait_seconds=settings.counter_wait_seconds,
                    reverse_retry_seconds=settings.counter_reverse_retry_seconds,
                ),
            )
            orders = OrderService(
                store,
                vault=vault,
                branch_exists=lambda code: registry.branch(code) is not None,
                ttl=timedelta(seconds=settings.order_ttl_seconds),
                on_event=partial(_emit, plugins),
                close_attempts=payments.close_open_attempts,
            )
            views: dict[str, Any] = {"generation": None, "views": {}}

            def current_branches() -> Mapping[str, BranchView]:
                generation = registry.status.generation
                if views["generation"] != generation:
                    views["views"] = branch_views(registry)
                    views["generation"] = generation
                return views["views"]  # type: ignore[no-any-return]

            services_now = Services(
                settings=settings,
                store=store,
                orders=orders,
                branches=current_branches,
                config_status=lambda: registry.status,
                vault=vault,
                changes=changes,
                payments=payments,
                budget=budget,
            )
            webhooks = WebhookService(
                store,
                vault=vault,
                render=EventView(schema, services_now),
                branch_exists=lambda code: registry.branch(code) is not None,
                settings=webhook_settings(settings),
            )
            services_now.webhooks = webhooks
            store.on_event_recorded(webhooks.kick)
            state["services"] = services_now
            app.state.registry = registry
            app.state.store = store
            # Their counters (BudgetCounters) are for a metrics endpoint to expose.
            app.state.budgets = {"per-key": budget, "failed-auth": failures}
            app.state.payments = payments
            app.state.notifications = Notifications(registry, payments)
            bills = BillReconciliation(store, registry, payments, settings=bill_settings(settings))
            app.state.bills = bills
            services_now.bills = bills
            services_now.config_edits = ConfigEdits(
                registry, store.audit, allowed=settings.config_editing
            )
            reconcile_min_age = timedelta(seconds=settings.reconcile_min_age_seconds)

            def once_per_cluster(
                name: str, every: float, sweep: Callable[[], Awaitable[Any]]
            ) -> asyncio.Task[None]:
                """Every process looks often; the one that takes the lease sweeps (jobs.py)."""
                job = ClusterJob(
                    store.leases,
                    name,
                    every=timedelta(seconds=every),
                    ttl=timedelta(seconds=settings.job_lease_seconds),
                )
                look = min(every, settings.job_lease_seconds) / 4
                return asyncio.create_task(_every(look, lambda: job.run(sweep), name), name=name)

            tasks = [
                asyncio.create_task(registry.watch(), name="config-watch"),
                asyncio.create_task(
                    _every(settings.key_recheck_interval_seconds, sockets.close_revoked, "revoked"),
                    name="revocation-watch",
                ),
                # Once per interval for the whole cluster, one process at a time.
                once_per_cluster("expiry", settings.expiry_interval_seconds, orders.expire_due),
                once_per_cluster(
                    "reconcile",
                    settings.reconcile_interval_seconds,
                    lambda: payments.reconcile_due(reconcile_min_age),
                ),
                # Every process takes due counter sales one by one (payments/counter.py).
                asyncio.create_task(
                    _every(
                        settings.counter_tick_seconds, payments.work_counter_sales, "counter-sales"
                    ),
                    name="counter-sales",
                ),
                # Every minute; past bill_reconcile_at the first process to take the lease
                # reconciles yesterday's bills, and NOT_READY days again later.
                asyncio.create_task(
                    _every(BILL_CHECK_SECONDS, bills.run_due, "bill-reconcile"),
                    name="bill-reconcile",
                ),
            ]
            if record.enabled:
                gauges = StoreGauges(
                    store,
                    lambda: registry.status.loaded_at,
                    timeout=settings.store_timeout_seconds,
                )
                tasks.append(asyncio.create_task(gauges.run(), name="metrics-gauges"))
            if settings.key_cache:
                tasks.append(
                    asyncio.create_task(
                        store.keys.follow(changes, ttl=settings.key_cache_ttl_seconds),
                        name="key-cache",
                    )
                )
            # Every process sweeps the outboxes for events a dead writer left behind.
            tasks.append(
                asyncio.create_task(
                    _every(settings.webhook_poll_seconds, webhooks.dispatch, "webhook-events"),
                    name="webhook-events",
                )
            )
            if settings.webhook_delivery:
                tasks.append(
                    asyncio.create_task(
                        # No pause but the wait inside: a wake-up is answered at once.
                        _every(
                            0.01,
                            lambda: webhooks.work_once(settings.webhook_poll_seconds),
                            "webhooks",
                        ),
                        name="webhooks",
                    )
                )
            if demo is not None:
                await demo.start(store.keys, list(registry.config.branches))
            if settings.gc_tuning:
                tune_garbage_collector()
            try:
                yield
            finally:
                if demo is not None:
                    await demo.stop(store.keys)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await changes.aclose()
                await sockets.aclose()
                store.on_event_recorded(None)
                budget.attach(None)
                failures.attach(None)
                await webhooks.aclose()
                await store.close()

    async def healthz(request: Request) -> Response:
        # The pid tells the workers of `branchpay serve --workers N` apart.
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    async def readyz(request: Request) -> Response:
        checks: dict[str, Any] = {}
        ready = True
        try:
            await asyncio.wait_for(request.app.state.store.ping(), timeout=2.0)
            checks["store"] = "ok"
        except Exception as error:  # any failure means not ready; the reason is not secret
            checks["store"] = f"unreachable: {type(error).__name__}"
            ready = False
        status = request.app.state.registry.status
        checks["config"] = {
            "ok": status.ok,
            "path": str(status.path),
            "loadedAt": status.loaded_at.isoformat(),
            "error": status.error,
        }
        # A rejected reload leaves the last good config serving, so the
        # process stays ready; the error is reported for the admin to see.
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def notification(request: Request) -> Response:
        """A platform's notification, translated to and from the notifications service."""
        incoming = NotificationRequest(
            method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query_params),
            body=await request.body(),
        )
        reply = await request.app.state.notifications.receive(
            request.path_params["provider"],
            request.path_params["branch"],
            incoming,
            request.path_params.get("account"),
        )
        return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)

    schema = build_schema(settings, tracing=tracing)
    # The partner storefront at /demo (api/web/demo.py), in demo mode only.
    demo = DemoStorefront(settings.demo_form_origins) if settings.demo_pages else None
    vendor = VendorFiles(settings.assets_dir)
    graphql = GraphQLApp(
        schema,
        services,
        settings=settings,
        failures=failures,
        sockets=sockets,
        ide_page=GraphiQLPage(vendor) if settings.graphiql else None,
    )
    routes: list[BaseRoute] = [
        # Every method reaches the view, so that one it refuses gets a JSON 405 too.
        Route("/graphql", graphql),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/notify/{provider}/{branch}", notification, methods=["POST"]),
        # A branch paying through a service-provider account: the account names the keys.
        Route("/notify/{provider}/{branch}/{account}", notification, methods=["POST"]),
        Route("/admin", admin_page, methods=["GET", "HEAD"]),
        # Behind its own bearer token, not the API keys (api/web/metrics.py).
        Route("/metrics", MetricsEndpoint(settings).answer, methods=["GET"]),
        *asset_routes(vendor),
        *(demo.routes() if demo is not None else []),
    ]
    extra = list(gated_routes(services)) if gated_routes is not None else []
    routes.extend(extra)
    app = Starlette(
        routes=routes, lifespan=lifespan if tracing is None else traced(lifespan, tracing)
    )
    app.add_middleware(
        ApiKeyGate,
        keys=lambda: app.state.store.keys,
        budget=budget,
        failures=failures,
        # A route's path up to its first parameter: /bench/order/{id} guards /bench/order/...
        prefixes=tuple(route.path.split("{")[0] for route in extra if isinstance(route, Route)),
    )
    # The gate reads a key it has not cached from the store, so it runs under the deadline too.
    app.add_middleware(StoreDeadline, seconds=settings.store_timeout_seconds)
    # An oversized body is refused before anything else.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    # Runs before all but the request id: whatever escapes is answered in JSON with a code.
    app.add_middleware(LastResort, retry_after_seconds=settings.store_retry_after_seconds)
    if tracing is not None:
        from api.web.tracing import RequestSpans

        # Around LastResort, so the span covers the answers it gives too; inside the
        # request id, so the span carries it.
        app.add_middleware(RequestSpans, tracer=tracing.tracer)
    # Outside even the last resort, so that its answers carry the request id too.
    app.add_middleware(RequestId)
    return app
