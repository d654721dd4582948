"""Scenario (w): partner webhooks from the API process of (c) and (d) to a loopback receiver.

One API process, the one (c) and (d) ran on (same scratch database, same
simulator), and the bench's partner receiver (``bench.receiver``) in a
process of its own. The bench's key registers its endpoints for the six
branches over GraphQL, as a partner would.

1. **Deliveries.** An endpoint for ``order.created``; (c) runs again for
   ``--warmup`` and ``--duration`` at ``--concurrency``, so every order it
   creates is one delivery. Counted: the deliveries that arrived within (c)'s
   measured window (per second, and their lag from the write, the event's
   ``timestamp``, to the arrival), beside (c)'s own rate and CPU per request
   against (c) without the endpoint just before on the same process (the
   window's CPU is (c)'s and the webhooks' together, so it is not split).
   Orders created but not delivered when the generator is done are the
   backlog; it drains with nothing else running, for at most three times
   the load's warm-up and window (and 60 s), and that drain's rate and CPU
   per delivery are the process delivering alone.
2. **Latency.** That endpoint deleted, a new one for ``order.paid``; round
   trips of ``scenarios.webhook_round_trip`` at ``--webhook-concurrency``
   time, from the moment the simulator's notification is sent to
   ``/notify``, the ``orderEvents`` subscription's PAID and the receiver's
   ``order.paid`` for the same order. Their ratio is of the same flows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from pymongo import MongoClient

from api.services.webhooks import WebhookSettings
from api.settings import Settings
from bench import percentiles, receiver
from bench.loadgen import MAX_DRAIN_SECONDS, REQUEST_TIMEOUT, Measurement, Outcome
from bench.percentiles import Latencies
from bench.procstat import cpu_seconds
from bench.report import Ratio, Run
from bench.scenarios import Scenario, Spec
from bench.server import ApiProcess
from bench.synthetic import BRANCHES

LOAD_EVENT = "order.created"
PAID_EVENT = "order.paid"
DRAIN_POLL_SECONDS = 0.1

CREATE_ENDPOINT = (
    "mutation BenchWebhook($input: CreateWebhookEndpointInput!) {"
    " createWebhookEndpoint(input: $input) { endpoint { id events } secret"
    " userErrors { field message code } } }"
)
DELETE_ENDPOINT = (
    "mutation BenchWebhookDelete($input: WebhookEndpointIdInput!) {"
    " deleteWebhookEndpoint(input: $input) { deletedId userErrors { field message code } } }"
)

# A row of the run, measured and added (bench.run._measure).
MeasureRow = Callable[[str, Spec], Measurement]


def _mutation(spec: Spec, query: str, variables: dict[str, Any], field: str) -> dict[str, Any]:
    with httpx.Client(
        base_url=spec.base_url, headers=dict(spec.headers), timeout=REQUEST_TIMEOUT
    ) as client:
        answer = client.post("/graphql", json={"query": query, "variables": variables})
    payload = answer.json()
    result = (payload.get("data") or {}).get(field)
    if answer.status_code != 200 or payload.get("errors") or not result or result["userErrors"]:
        raise RuntimeError(f"{field}: {answer.status_code} {payload}")
    return dict(result)


def register_endpoint(spec: Spec, receiver_url: str, events: list[str]) -> str:
    """An endpoint of the bench's key for every branch, at the receiver; its id."""
    created = _mutation(
        spec,
        CREATE_ENDPOINT,
        {
            "input": {
                "url": f"{receiver_url}{receiver.HOOK_PATH}",
                "events": events,
                "branches": list(BRANCHES),
                "description": "make bench, scenario (w)",
            }
        },
        "createWebhookEndpoint",
    )
    return str(created["endpoint"]["id"])


def delete_endpoint(spec: Spec, endpoint_id: str) -> None:
    _mutation(spec, DELETE_ENDPOINT, {"input": {"id": endpoint_id}}, "deleteWebhookEndpoint")


def _orders(spec: Spec) -> int:
    client: MongoClient[dict[str, Any]] = MongoClient(spec.mongodb_uri)
    with client:
        return client[spec.database]["orders"].count_documents({})


def deliveries_in(
    deliveries: list[receiver.Delivery], kind: str, window: tuple[float, float]
) -> tuple[int, Latencies]:
    """How many ``kind`` deliveries arrived after ``window[0]`` up to ``window[1]``, and their lags.

    The lag runs from the write (the event's ``timestamp``) to the arrival.
    """
    start, end = window
    lags = [
        wall - written
        for at, wall, got, _order, written in deliveries
        if got == kind and start < at <= end
    ]
    return len(lags), Latencies.of(lags)


@dataclass(frozen=True, slots=True)
class Drain:
    """The backlog left when the load stopped, delivered with nothing else running."""

    backlog: int
    left: int  # not delivered within the bound
    # From the last arrival before the drain (or its start) to the last arrival in it,
    # in perf_counter seconds: what arrived in it is the drain's.
    window: tuple[float, float]
    api_cpu: float

    def as_json(self) -> dict[str, Any]:
        return {
            "backlog": self.backlog,
            "left": self.left,
            "seconds": self.window[1] - self.window[0],
            "apiCpuSeconds": self.api_cpu,
        }


def drain(receiver_url: str, kind: str, expected: int, api: ApiProcess, within: float) -> Drain:
    """Wait until ``expected`` deliveries of ``kind`` arrived, for at most ``within`` seconds."""
    started, cpu_from = time.perf_counter(), cpu_seconds(api.pid)
    first, before = receiver.count(receiver_url, kind)
    count, last = first, before
    while count < expected and time.perf_counter() - started < within:
        time.sleep(DRAIN_POLL_SECONDS)
        count, last = receiver.count(receiver_url, kind)
    waited = time.perf_counter() - started
    cpu = max(0.0, cpu_seconds(api.pid) - cpu_from - api.idle_cpu_rate * waited)
    # The rate runs to the last arrival, not to the poll that saw it; from the drain's
    # start, or from an arrival counted before it that came after that start.
    opened = max(started, before or started)
    ended = last if count > first and last is not None else started + waited
    return Drain(expected - first, max(0, expected - count), (opened, ended), cpu)


def _delivery_row(
    load: Measurement,
    deliveries: list[receiver.Delivery],
    window: tuple[float, float],
    server_cpu: float,
    *,
    cpu_shared: bool,
) -> Measurement:
    """The deliveries that arrived in ``window`` as a row: per second, lag from the write, CPU."""
    count, lags = deliveries_in(deliveries, LOAD_EVENT, window)
    outcome = Outcome(
        requests=count,
        censored=0,
        errors=0,
        failures={},
        answers={LOAD_EVENT: count},
        seconds=window[1] - window[0],
        p50=lags.percentile(0.50),
        p90=lags.percentile(0.90),
        p99=lags.percentile(0.99),
        max=lags.max,
        generator_cpu=0.0,
        window=window,
    )
    # In flight: the tries one process keeps going; measured: the window's length.
    spec = replace(
        load.spec,
        scenario=Scenario.WEBHOOK,
        concurrency=WebhookSettings().concurrency,
        duration=outcome.seconds,
    )
    return replace(load, spec=spec, outcome=outcome, server_cpu=server_cpu, cpu_shared=cpu_shared)


def webhook_scenario(
    run: Run,
    spec: Spec,
    api: ApiProcess,
    receiver_url: str,
    create_cpu_per_request: float,
    concurrency: int,
    measure_row: MeasureRow,
    log: Callable[[str], None],
) -> list[Ratio]:
    """Both parts of (w) on the API ``api``; rows go into ``run``, the ratios are returned."""
    spec = replace(spec, receiver_url=receiver_url)
    endpoint = register_endpoint(spec, receiver_url, [LOAD_EVENT])
    log(f"(w) endpoint {endpoint} for {LOAD_EVENT} of {len(BRANCHES)} branches at {receiver_url}")
    orders_before = _orders(spec)
    load = measure_row("graphql, webhook endpoint", replace(spec, scenario=Scenario.CREATE))
    created = _orders(spec) - orders_before
    # The window's CPU is (c)'s and the webhooks' together: none per delivery here.
    during = _delivery_row(
        load, receiver.received(receiver_url), load.outcome.window, load.server_cpu, cpu_shared=True
    )
    run.add(f"{LOAD_EVENT}, during (c) at {spec.concurrency} in flight", during)
    # The backlog drains at a fraction of the rate it built up at: a few times the load's time.
    within = min(3 * (spec.warmup + spec.duration), MAX_DRAIN_SECONDS)
    log(f"(w) {created:,} orders created; draining their deliveries for at most {within:.0f} s")
    drained = drain(receiver_url, LOAD_EVENT, created, api, within)
    after = _delivery_row(
        load, receiver.received(receiver_url), drained.window, drained.api_cpu, cpu_shared=False
    )
    log(
        f"(w) backlog {drained.backlog:,}: {after.outcome.requests:,} delivered in "
        f"{after.outcome.seconds:.1f} s, {drained.left:,} left"
    )
    if after.outcome.requests:
        run.add(f"{LOAD_EVENT} backlog, after (c)", after)

    # A new endpoint for the latency: what is left of the first one's ends FAILED (deleted).
    delete_endpoint(spec, endpoint)
    paid_endpoint = register_endpoint(spec, receiver_url, [PAID_EVENT])
    pay = measure_row(
        f"pay round trip, {concurrency} in flight",
        replace(spec, scenario=Scenario.WEBHOOK, concurrency=concurrency),
    )
    subscription = replace(pay, outcome=pay.outcome.part("subscription"), cpu_shared=True)
    webhook = replace(pay, outcome=pay.outcome.part("webhook"), cpu_shared=True)
    run.add("/notify to orderEvents PAID", subscription)
    run.add(f"/notify to {PAID_EVENT} received", webhook)

    run.extra["webhooks"] = {
        "endpoints": {LOAD_EVENT: endpoint, PAID_EVENT: paid_endpoint},
        "pollSeconds": Settings().webhook_poll_seconds,
        "deliveries": {
            "ordersCreated": created,
            "duringLoad": during.as_json(),
            "drain": {**drained.as_json(), "deliveries": after.as_json()},
        },
        "latency": {
            "concurrency": concurrency,
            "subscription": subscription.as_json(),
            "webhook": webhook.as_json(),
        },
    }
    ratios = [
        Ratio(
            f"(w) {LOAD_EVENT} deliveries/s / createOrder req/s (same window)",
            during.throughput / load.throughput if load.throughput else math.nan,
        ),
        Ratio(
            "(w) createOrder CPU/request with the endpoint / without",
            load.cpu_per_request / create_cpu_per_request if create_cpu_per_request else math.nan,
        ),
    ]
    for name, top, bottom in (
        ("p50", webhook.outcome.p50, subscription.outcome.p50),
        ("p99", webhook.outcome.p99, subscription.outcome.p99),
    ):
        value, bound = percentiles.ratio(top, bottom)
        ratios.append(Ratio(f"(w) {name} from /notify: webhook / orderEvents", value, bound=bound))
    return ratios
