"""Every Prometheus metric of branchpay, and the helpers that keep their labels bounded.

All metrics are defined here (prefix ``branchpay_``; docs/operations.md lists
them and tests/docs/test_operations_doc.py holds that table and this module
together). The layers record through :func:`recorder`, which is a no-op
recorder when the ``metrics`` setting is off (chosen once, by
:func:`configure`), so a process with metrics off records nothing.

Label values are bounded: an operation name is kept only when it is a GraphQL
name and one of the first ``OPERATION_NAMES_CAP`` seen by the process
(``anonymous`` for an operation without a name, ``other`` past the cap);
branches and providers only as configured codes (``unknown`` otherwise);
store commands from a fixed set (``other``); API key names up to a cap. Never
an order id, a phone number, a key secret or a URL.

``branchpay serve`` runs prometheus-client in multiprocess mode: it points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before this module is first
imported (api/cli/__init__.py), each worker writes its own files there and a
scrape reads them all (:func:`render`). Without that variable (the tests'
``create_app``) the default registry is used.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from pymongo import monitoring

MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

OPERATION_NAMES_CAP: Final = 100
KEY_NAMES_CAP: Final = 200
ANONYMOUS: Final = "anonymous"
OTHER: Final = "other"
UNKNOWN: Final = "unknown"
_GRAPHQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# The commands the store layer sends (PyMongo's command names); anything else is "other".
STORE_COMMANDS: Final = frozenset(
    {
        "find",
        "getMore",
        "insert",
        "update",
        "delete",
        "findAndModify",
        "aggregate",
        "count",
        "distinct",
        "createIndexes",
        "listIndexes",
        "dropIndexes",
        "listCollections",
        "killCursors",
        "ping",
        "hello",
        "isMaster",
        "endSessions",
        "commitTransaction",
        "abortTransaction",
        "bulkWrite",
    }
)
GATEWAY_OPERATIONS: Final = frozenset(
    {"create", "query", "refund", "close", "bill", "code_pay", "reverse"}
)
PAYMENT_METHODS: Final = frozenset({"PAGE", "WAP", "QR_CODE", "APP", "PAYMENT_CODE", "JSAPI"})

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_GATEWAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

GRAPHQL_REQUESTS = Counter(
    "branchpay_graphql_requests_total",
    "GraphQL operations executed, by operation type, name and outcome",
    ["type", "operation", "outcome"],
)
GRAPHQL_DURATION = Histogram(
    "branchpay_graphql_request_duration_seconds",
    "Time to execute a GraphQL operation (parse, validate, execute)",
    ["type", "operation"],
    buckets=_LATENCY_BUCKETS,
)
ORDERS = Counter(
    "branchpay_orders_total",
    "Orders created and order status changes, by branch",
    ["branch", "event"],
)
PAYMENT_ATTEMPTS = Counter(
    "branchpay_payment_attempts_total",
    "Payment attempts started and settled, by branch, provider and method",
    ["branch", "provider", "method", "event"],
)
REFUNDS = Counter(
    "branchpay_refunds_total",
    "Refunds started and settled, by branch, provider and method",
    ["branch", "provider", "method", "event"],
)
NOTIFICATIONS = Counter(
    "branchpay_notifications_total",
    "Platform notifications received, by provider and result",
    ["provider", "result"],
)
VERIFICATION_FAILURES = Counter(
    "branchpay_notification_verification_failures_total",
    "Notifications whose signature or content failed verification, by provider",
    ["provider"],
)
GATEWAY_CALLS = Counter(
    "branchpay_gateway_calls_total",
    "Calls to a payment platform (all tries of one call), by provider, operation and outcome",
    ["provider", "operation", "outcome"],
)
GATEWAY_DURATION = Histogram(
    "branchpay_gateway_call_duration_seconds",
    "Time of a call to a payment platform, its retries and back-off included",
    ["provider", "operation"],
    buckets=_GATEWAY_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter(
    "branchpay_webhook_deliveries_total",
    "Tries of webhook deliveries, by outcome",
    ["outcome"],
)
WEBHOOK_BACKLOG_AGE = Gauge(
    "branchpay_webhook_backlog_age_seconds",
    "How long the oldest due webhook delivery has waited (0: none due); sampled from the store",
    multiprocess_mode="livemax",
)
DISCREPANCIES_OPEN = Gauge(
    "branchpay_reconciliation_discrepancies_open",
    "Open bill reconciliation discrepancies, by kind; sampled from the store",
    ["kind"],
    multiprocess_mode="livemax",
)
RATE_LIMITED = Counter(
    "branchpay_rate_limited_requests_total",
    "Requests refused by a rate limit, by budget and API key name",
    ["budget", "key"],
)
SUBSCRIPTIONS_OPEN = Gauge(
    "branchpay_subscriptions_open",
    "orderEvents subscriptions open",
    multiprocess_mode="livesum",
)
CONFIG_RELOADS = Counter(
    "branchpay_config_reloads_total",
    "Loads of plugins.toml, by result (applied or refused)",
    ["result"],
)
CONFIG_AGE = Gauge(
    "branchpay_config_age_seconds",
    "Age of the plugins.toml configuration in force (the oldest among the processes)",
    multiprocess_mode="livemax",
)
STORE_COMMANDS_DURATION = Histogram(
    "branchpay_store_command_duration_seconds",
    "Time of a store command, from the driver's command monitoring, by command and outcome",
    ["command", "outcome"],
    buckets=_STORE_BUCKETS,
)
METRICS_SAMPLE_FAILURES = Counter(
    "branchpay_metrics_sample_failures_total",
    "Store samples of the gauges above that failed or timed out, by gauge",
    ["gauge"],
)

ALL_METRICS: Final = (
    GRAPHQL_REQUESTS,
    GRAPHQL_DURATION,
    ORDERS,
    PAYMENT_ATTEMPTS,
    REFUNDS,
    NOTIFICATIONS,
    VERIFICATION_FAILURES,
    GATEWAY_CALLS,
    GATEWAY_DURATION,
    WEBHOOK_DELIVERIES,
    WEBHOOK_BACKLOG_AGE,
    DISCREPANCIES_OPEN,
    RATE_LIMITED,
    SUBSCRIPTIONS_OPEN,
    CONFIG_RELOADS,
    CONFIG_AGE,
    STORE_COMMANDS_DURATION,
    METRICS_SAMPLE_FAILURES,
)


class _Names:
    """Label values kept as they are up to a cap of distinct ones, then ``other``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[str] = set()

    def bounded(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.cap:
            return OTHER
        self._seen.add(value)
        return value


_operations = _Names(OPERATION_NAMES_CAP)
_keys = _Names(KEY_NAMES_CAP)
_branches: frozenset[str] = frozenset()
_providers: frozenset[str] = frozenset()


def operation_label(name: str | None) -> str:
    """A GraphQL operation's name as a label: ``anonymous``, the name, or ``other``."""
    if not name:
        return ANONYMOUS
    if _GRAPHQL_NAME.fullmatch(name) is None:
        return OTHER
    return _operations.bounded(name)


def known_labels(*, branches: Iterable[str], providers: Iterable[str]) -> None:
    """The branch codes and provider names the configuration in force knows."""
    global _branches, _providers
    _branches = frozenset(branches) | _branches
    _providers = frozenset(providers) | _providers


def branch_label(code: object) -> str:
    return code if isinstance(code, str) and code in _branches else UNKNOWN


def provider_label(name: object) -> str:
    return name if isinstance(name, str) and name in _providers else UNKNOWN


def method_label(method: object) -> str:
    return method if isinstance(method, str) and method in PAYMENT_METHODS else UNKNOWN


def command_label(name: str) -> str:
    return name if name in STORE_COMMANDS else OTHER


def key_label(name: str | None) -> str:
    return _keys.bounded(name) if name else UNKNOWN


def gateway_operation_label(name: str) -> str:
    return name if name in GATEWAY_OPERATIONS else OTHER


@dataclass(frozen=True, slots=True)
class GatewayCall:
    """Which provider and operation the platform calls being made now belong to."""

    provider: str
    operation: str


_GATEWAY_CALL: ContextVar[GatewayCall | None] = ContextVar("branchpay_gateway_call", default=None)


@contextlib.contextmanager
def gateway_call(provider: str, operation: str) -> Iterator[None]:
    """Label the platform calls made inside (by ``call_gateway``): provider, operation."""
    token = _GATEWAY_CALL.set(GatewayCall(provider, operation))
    try:
        yield
    finally:
        _GATEWAY_CALL.reset(token)


class Recorder:
    """Records into the metrics above; every label goes through a bounding helper."""

    enabled = True

    def graphql_request(
        self, operation_type: str, name: str | None, outcome: str, seconds: float
    ) -> None:
        operation = operation_label(name)
        GRAPHQL_REQUESTS.labels(operation_type, operation, outcome).inc()
        GRAPHQL_DURATION.labels(operation_type, operation).observe(seconds)

    def order(self, branch: object, event: str) -> None:
        ORDERS.labels(branch_label(branch), event).inc()

    def attempt(self, payment: Mapping[str, object], event: str) -> None:
        PAYMENT_ATTEMPTS.labels(*_payment_labels(payment), event).inc()

    def refund(self, payment: Mapping[str, object], event: str) -> None:
        REFUNDS.labels(*_payment_labels(payment), event).inc()

    def notification(self, provider: str, result: str) -> None:
        label = provider_label(provider)
        NOTIFICATIONS.labels(label, result).inc()
        if result == "rejected_signature":
            VERIFICATION_FAILURES.labels(label).inc()

    def gateway(self, outcome: str, seconds: float) -> None:
        call = _GATEWAY_CALL.get()
        provider = provider_label(call.provider) if call else UNKNOWN
        operation = gateway_operation_label(call.operation) if call else OTHER
        GATEWAY_CALLS.labels(provider, operation, outcome).inc()
        GATEWAY_DURATION.labels(provider, operation).observe(seconds)

    def webhook_delivery(self, outcome: str) -> None:
        WEBHOOK_DELIVERIES.labels(outcome).inc()

    def rate_limited(self, budget: str, key: str | None) -> None:
        RATE_LIMITED.labels(budget, key_label(key)).inc()

    @contextlib.contextmanager
    def subscription(self) -> Iterator[None]:
        SUBSCRIPTIONS_OPEN.inc()
        try:
            yield
        finally:
            SUBSCRIPTIONS_OPEN.dec()

    def config_reload(self, result: str) -> None:
        CONFIG_RELOADS.labels(result).inc()

    def config_age(self, seconds: float) -> None:
        CONFIG_AGE.set(seconds)

    def webhook_backlog_age(self, seconds: float) -> None:
        WEBHOOK_BACKLOG_AGE.set(seconds)

    def discrepancies_open(self, by_kind: Mapping[str, int], kinds: Iterable[str]) -> None:
        for kind in kinds:
            DISCREPANCIES_OPEN.labels(kind).set(by_kind.get(kind, 0))

    def sample_failed(self, gauge: str) -> None:
        METRICS_SAMPLE_FAILURES.labels(gauge).inc()

    def store_command(self, command: str, outcome: str, seconds: float) -> None:
        STORE_COMMANDS_DURATION.labels(command_label(command), outcome).observe(seconds)


class NullRecorder(Recorder):
    """Metrics off: every record is a no-op."""

    enabled = False

    def graphql_request(
        self, operation_type: str, name: str | None, outcome: str, seconds: float
    ) -> None:
        pass

    def order(self, branch: object, event: str) -> None:
        pass

    def attempt(self, payment: Mapping[str, object], event: str) -> None:
        pass

    def refund(self, payment: Mapping[str, object], event: str) -> None:
        pass

    def notification(self, provider: str, result: str) -> None:
        pass

    def gateway(self, outcome: str, seconds: float) -> None:
        pass

    def webhook_delivery(self, outcome: str) -> None:
        pass

    def rate_limited(self, budget: str, key: str | None) -> None:
        pass

    @contextlib.contextmanager
    def subscription(self) -> Iterator[None]:
        yield

    def config_reload(self, result: str) -> None:
        pass

    def config_age(self, seconds: float) -> None:
        pass

    def webhook_backlog_age(self, seconds: float) -> None:
        pass

    def discrepancies_open(self, by_kind: Mapping[str, int], kinds: Iterable[str]) -> None:
        pass

    def sample_failed(self, gauge: str) -> None:
        pass

    def store_command(self, command: str, outcome: str, seconds: float) -> None:
        pass


def _payment_labels(payment: Mapping[str, object]) -> tuple[str, str, str]:
    return (
        branch_label(payment.get("branch")),
        provider_label(payment.get("provider")),
        method_label(payment.get("method")),
    )


_recorder: Recorder = Recorder()


def configure(enabled: bool) -> Recorder:
    """Choose the recorder of this process: the real one, or the no-op one with metrics off."""
    global _recorder
    _recorder = Recorder() if enabled else NullRecorder()
    return _recorder


def recorder() -> Recorder:
    return _recorder


class StoreCommands(monitoring.CommandListener):
    """PyMongo's command monitoring, timing each command by its (bounded) name."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        _recorder.store_command(event.command_name, "ok", event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        _recorder.store_command(event.command_name, "failed", event.duration_micros / 1e6)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_ENV) or None


def registry() -> CollectorRegistry:
    """What a scrape reads: every process's files in multiprocess mode, else this process."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    collected = CollectorRegistry()
    _multiprocess.MultiProcessCollector(collected, path=directory)  # type: ignore[no-untyped-call]
    return collected


def render() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(registry())


def mark_process_dead(pid: int) -> None:
    """Forget a worker's live gauges (subscriptions open, ...) once it has exited."""
    directory = multiprocess_dir()
    if directory is not None:
        _multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
