"""The order of a ``make bench`` run and its command line.

1. Start the embedded store under ``.data/bench`` (SecantusDB's Python server,
   or the executable ``--store-server`` names, in a directory of its own; or
   use ``--mongodb-uri``) and the sandbox simulator, and load one synthetic
   set per scale, reusing sets already loaded.
2. On the smallest set, with the API under ``uvicorn --workers 1``: (a) and
   (b) over GraphQL, over the plain endpoint and as a bare driver loop; then
   (c) and (d) over GraphQL against a scratch database; then (a) under
   ``--workers`` 2 to N for the scaling ratios; (b) again on an API without
   its key cache (``BRANCHPAY_KEY_CACHE=false``), for before / after.
   Unless ``--no-overhead``, right after the first API, (a) and (b) over
   GraphQL on an API without metrics and logs (``bench.overhead``): what they
   cost per request.
   Unless ``--no-webhooks``, (w) on the
   API of (c) and (d) (``bench.webhooks``): an endpoint of the bench's key at a
   loopback receiver (``bench.receiver``), deliveries per second while (c) runs
   again, then the latency from a payment notification to ``order.paid`` at the
   receiver against the ``orderEvents`` PAID of the same flow. Unless
   ``--subscriptions 0``, (s) on an API of its own on the same scratch
   database (``bench.subscriptions``): RSS per idle subscription and the
   fan-out latency from a write to each subscriber.
3. (a), and (a-ops) with an ops key and no filter, over GraphQL on every set
   with ``--scale-concurrency`` requests in flight, for the scale ratios, and
   the store's explain of the ops-wide page on each set.
4. The pluggy hook overhead (pytest-benchmark); with ``--soak`` the API's RSS
   over a long run of (a); with ``--profile`` pyinstrument reports of (a);
   with ``--wrk`` wrk's own figures for (a).
5. Unless ``--no-bills``, the bill reconciliation scenario (r) (``bench.bills``):
   a generated sandbox bill of ``--bill-lines`` lines against a scratch
   database holding the matching payments; lines per second and peak RSS of
   the matching process. ``--bills-only`` runs nothing else.
6. Unless ``--no-hostile``, the hostile scenario (h) on the smallest set, on an
   API with the shipped per-key budget: (a) with a ``/healthz`` probe, then
   the same while a partner with a key of its own sends the worst documents
   the limits allow (``bench.hostile``) at ``--hostile-concurrency``; the
   bench's own key is let through the rate limit (``bench.plain.BenchBudget``)
   so that (a) measures the API and not the limiter, as everywhere else.
   ``--hostile-only`` runs nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient
from rich.console import Console

from api.cli import prepare_demo
from api.dev import devdb
from api.dev.seed import seed
from api.domain.pii import PiiVault
from api.domain.principal import Role
from api.settings import Settings
from api.store import Store
from api.store.keys import new_key
from bench import bills, crosscheck, overhead, percentiles
from bench.hostile import worst_documents
from bench.loader import LoadedSet, ensure_loaded
from bench.loadgen import REQUEST_TIMEOUT, Measurement, measure, measure_together
from bench.percentiles import Percentile
from bench.plain import UNLIMITED_KEYS
from bench.procstat import rss_bytes
from bench.receiver import running_receiver
from bench.report import Ratio, Run, print_run, write_run
from bench.scale import (
    OPS_KEY_NAME,
    describe_plan,
    explain_ops_page,
    key_cache_off,
    subscription_scenario,
    subscriptions_config,
)
from bench.scenarios import (
    HostileDocument,
    Scenario,
    Spec,
    Target,
    http_request,
    refusal_code,
)
from bench.server import (
    ApiConfig,
    ApiProcess,
    running_api,
    running_gateway,
    write_plugins_toml,
)
from bench.synthetic import BRANCHES
from bench.webhooks import webhook_scenario

SCALES = (10_000, 100_000, 1_000_000)
RESULTS = Path("bench/results")
BENCH_DATA = Path(".data/bench")
HOOK_TESTS = "tests/plugins/test_manager_overhead.py"
WRITES_DATABASE = "branchpay_bench_writes"
BENCH_KEY_NAME = "make-bench"
HOSTILE_KEY_NAME = "make-bench-hostile"
# The /healthz probe of the hostile scenario: 4 workers, each one probe every 100 ms.
HEALTH_PROBES = 4
HEALTH_INTERVAL_SECONDS = 0.1
SOAK_SAMPLE_SECONDS = 10.0
SOAK_SETTLE_SECONDS = 60.0

console = Console()
if not console.is_terminal:
    # Piped or logged: wide enough that the table keeps one line per row.
    console.width = 132


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    top.add_argument("--orders", type=int, default=100_000, help="size of the largest set")
    top.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    top.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    top.add_argument("--concurrency", type=int, default=32, help="requests kept in flight")
    top.add_argument(
        "--workers",
        type=int,
        default=3,
        help="most API processes (uvicorn workers) for the scaling run: (a) on 2 to N",
    )
    top.add_argument(
        "--subscriptions",
        type=int,
        default=1000,
        help="idle orderEvents subscriptions on one process for (s); 0 skips (s)",
    )
    top.add_argument(
        "--fanout-rate",
        type=float,
        default=100.0,
        help="order writes per second for (s)'s fan-out latency",
    )
    top.add_argument(
        "--scale-concurrency",
        type=int,
        default=4,
        help="requests in flight for (a) on each set size (the scale ratio)",
    )
    top.add_argument(
        "--soak", type=float, default=0.0, help="seconds of (a) while sampling RSS (e.g. 600)"
    )
    top.add_argument("--mongodb-uri", help="a running MongoDB instead of the embedded store")
    top.add_argument(
        "--store-server",
        type=Path,
        metavar="PATH",
        help="a SecantusDB server executable (e.g. .data/tools/bin/secantusd-rs, built by "
        "make secantus-rs) to run as the embedded store instead of secantusd-py",
    )
    top.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME: VALUE",
        help="sent with every request, e.g. 'Authorization: Bearer KEY'",
    )
    top.add_argument("--no-hooks", action="store_true", help="skip the pluggy hook benchmark")
    top.add_argument(
        "--wrk",
        action="store_true",
        help="cross-check (a) with wrk (when on PATH) against the same API process",
    )
    top.add_argument(
        "--profile",
        action="store_true",
        help="also run (a) over GraphQL and plain under pyinstrument; reports in bench/results",
    )
    top.add_argument(
        "--hostile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the hostile scenario (h): (a) alone, then (a) while another partner sends the "
        "worst documents the limits allow",
    )
    top.add_argument(
        "--hostile-only", action="store_true", help="run the hostile scenario and nothing else"
    )
    top.add_argument(
        "--overhead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(a) and (b) over GraphQL again on an API without metrics and logs, for the "
        "CPU per request they cost (on / off, target under 1.05)",
    )
    top.add_argument(
        "--webhooks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the webhook scenario (w): deliveries per second during (c), and the latency "
        "from a payment notification to the partner's webhook against orderEvents",
    )
    top.add_argument(
        "--webhook-concurrency",
        type=int,
        default=4,
        help="pay round trips in flight for (w)'s latency",
    )
    top.add_argument(
        "--bills",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the bill reconciliation scenario (r): a generated sandbox bill against a store "
        "holding the matching payments; lines per second and peak RSS",
    )
    top.add_argument(
        "--bill-lines",
        type=int,
        default=bills.DEFAULT_LINES,
        help=f"lines of (r)'s bill (quick: {bills.QUICK_LINES})",
    )
    top.add_argument("--bills-only", action="store_true", help="run (r) and nothing else")
    top.add_argument(
        "--hostile-concurrency",
        type=int,
        default=8,
        help="requests the hostile partner keeps in flight",
    )
    return top


def scales_for(largest: int) -> list[int]:
    return sorted({scale for scale in SCALES if scale < largest} | {largest})


@contextlib.contextmanager
def store_uri(configured: str | None, server: Path | None = None) -> Iterator[tuple[str, str]]:
    """(URI, description of the store) for the whole run."""
    if configured:
        yield configured, describe_store(configured)
        return
    # Each server keeps its own files: one server's storage is not assumed to open in another.
    storage = BENCH_DATA / ("db" if server is None else f"db-{server.name}")
    # Opening a store that holds the 1 M set takes SecantusDB minutes on a busy machine.
    with devdb.running(storage, timeout=900, server=server) as store:
        if server is None:
            yield store.uri, f"SecantusDB {version('SecantusDB')} (Python server, embedded)"
        else:
            yield store.uri, describe_server(store.uri, server)


def _build_info(uri: str) -> dict[str, Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    with client:
        return client.admin.command("buildInfo")


def describe_store(uri: str) -> str:
    """What answers at ``uri``, from its buildInfo, for the report."""
    info = _build_info(uri)
    if "secantusVersion" in info:
        return f"SecantusDB {info['secantusVersion']} at --mongodb-uri"
    return f"MongoDB {info.get('version', '?')} at --mongodb-uri"


def describe_server(uri: str, server: Path) -> str:
    """The ``--store-server`` executable by name, version and language, from its buildInfo."""
    info = _build_info(uri)
    compiler = info.get("buildEnvironment", {}).get("cc", "")
    language = {"rustc": "Rust server, "}.get(compiler, "")
    release = info.get("secantusVersion", info.get("version", "?"))
    return f"SecantusDB {server.name} {release} ({language}embedded)"


def _headers(raw: Sequence[str]) -> tuple[tuple[str, str], ...]:
    headers = []
    for header in raw:
        name, _, value = header.partition(":")
        if not name.strip() or not value.strip():
            raise SystemExit(f"--header needs NAME: VALUE, got {header!r}")
        headers.append((name.strip(), value.strip()))
    return tuple(headers)


def _ratio(name: str, top: float, bottom: float, target: float | None = None) -> Ratio:
    return Ratio(name, top / bottom if bottom else math.nan, target)


def _latency_ratio(
    name: str, top: Percentile, bottom: Percentile, target: float | None = None
) -> Ratio:
    value, bound = percentiles.ratio(top, bottom)
    return Ratio(name, value, target, bound=bound)


async def bench_key(
    uri: str, databases: list[str], name: str = BENCH_KEY_NAME, role: Role = Role.PARTNER
) -> str:
    """A fresh key (a partner's for the six branches), stored in every database the run uses."""
    record, key = new_key(name, role, BRANCHES, by="make bench")
    store = Store.connect(uri, databases[0])
    try:
        for database in databases:
            keys = store.client[database]["api_keys"]
            await keys.delete_many({"name": name})
            await keys.insert_one(dict(record))
    finally:
        await store.close()
    return key


async def _fresh_writes_database(uri: str, vault: PiiVault) -> None:
    """An empty scratch database with the API's indexes and the demo catalogs."""
    await _drop_writes_database(uri)
    store = Store.connect(uri, WRITES_DATABASE)
    try:
        await store.ensure_indexes()
        await seed(store, branches=BRANCHES, orders=0, ttl=timedelta(minutes=30), vault=vault)
    finally:
        await store.close()


async def _drop_writes_database(uri: str) -> None:
    store = Store.connect(uri, WRITES_DATABASE)
    try:
        await store.client.drop_database(WRITES_DATABASE)
    finally:
        await store.close()


def _log(message: str) -> None:
    console.print(f"[dim]{datetime.now(UTC):%H:%M:%S}[/dim] {message}")


def _measure(run: Run, label: str, spec: Spec, api: ApiProcess | None) -> Measurement:
    _log(f"{spec.scenario.value}/{label} on {spec.orders:,} orders for {spec.duration:.0f} s")
    measured = run.add(
        label, measure(spec, api.pid, api.idle_cpu_rate) if api else measure(spec, None)
    )
    if measured.outcome.errors:
        console.print(f"[red]failed requests: {measured.outcome.failures}[/red]")
    return measured


def main_set(
    run: Run,
    uri: str,
    loaded: LoadedSet,
    spec: Spec,
    workers: int,
    config: ApiConfig,
    *,
    wrk: bool = False,
    webhook_concurrency: int | None = None,
    subscriptions: int = 0,
    fanout_rate: float = 100.0,
    observability_overhead: bool = True,
) -> dict[str, Any]:
    """Every scenario on the smallest set; returns the figures the ratios need.

    With ``webhook_concurrency``, (w) runs after (d) on the same API process;
    with ``subscriptions``, (s) on an API of its own after them. With
    ``observability_overhead``, (a) and (b) over GraphQL again right after the
    first API, on one without metrics and logs (bench/overhead.py).
    """
    logs = BENCH_DATA / "logs"
    base = replace(spec, mongodb_uri=uri, database=loaded.database)
    found: dict[str, Any] = {}
    with running_api(
        uri,
        loaded.database,
        workers=1,
        log_path=logs / "api.log",
        config=overhead.observed(config, on=True),
    ) as api:
        on_api = replace(base, base_url=api.url)
        for scenario in (Scenario.ORDERS, Scenario.ORDER):
            for target in (Target.GRAPHQL, Target.PLAIN):
                found[f"{scenario}/{target}"] = _measure(
                    run, target.value, replace(on_api, scenario=scenario, target=target), api
                )
                if wrk and scenario is Scenario.ORDERS:
                    _log(f"a/{target} with wrk for {spec.duration:.0f} s")
                    run.extra.setdefault("wrk", {})[target.value] = crosscheck.run_wrk(
                        replace(on_api, scenario=scenario, target=target), BENCH_DATA
                    )
            found[f"{scenario}/driver"] = _measure(
                run, "driver", replace(base, scenario=scenario, target=Target.DRIVER), None
            )
    if observability_overhead:
        with running_api(
            uri,
            loaded.database,
            workers=1,
            log_path=logs / "api-unobserved.log",
            config=overhead.observed(config, on=False),
        ) as api:
            on_api = replace(base, base_url=api.url, target=Target.GRAPHQL)
            for scenario in (Scenario.ORDERS, Scenario.ORDER):
                found[f"{scenario}/{overhead.OFF_SUFFIX}"] = _measure(
                    run, "graphql, no metrics or logs", replace(on_api, scenario=scenario), api
                )
    # (b) before the key cache: the same set and selection, every key read from the store.
    with running_api(
        uri,
        loaded.database,
        workers=1,
        log_path=logs / "api-no-key-cache.log",
        config=key_cache_off(config),
    ) as api:
        on_api = replace(base, base_url=api.url, scenario=Scenario.ORDER)
        for target in (Target.GRAPHQL, Target.PLAIN):
            found[f"b/{target}/no-key-cache"] = _measure(
                run, f"{target.value}, no key cache", replace(on_api, target=target), api
            )
    # Writes go to a scratch database dropped after the run, so the read sets stay as
    # loaded; deleting the written orders from a large set took SecantusDB minutes.
    writes = replace(base, database=WRITES_DATABASE)
    with running_api(
        uri, WRITES_DATABASE, workers=1, log_path=logs / "api-writes.log", config=config
    ) as api:
        on_api = replace(writes, base_url=api.url)
        found["c/graphql"] = _measure(
            run, "graphql", replace(on_api, scenario=Scenario.CREATE), api
        )
        if _has_start_payment():
            found["d/graphql"] = _measure(
                run, "graphql+ws", replace(on_api, scenario=Scenario.PAY), api
            )
            if webhook_concurrency is not None:
                with running_receiver(logs / "receiver.log") as receiver_url:
                    found["w/ratios"] = webhook_scenario(
                        run,
                        on_api,
                        api,
                        receiver_url,
                        found["c/graphql"].cpu_per_request,
                        webhook_concurrency,
                        lambda label, spec: _measure(run, label, spec, api),
                        _log,
                    )
        else:
            run.not_measured.append(
                "(d) and (w) startPayment + sandbox notification: startPayment is not in the schema"
            )
    if subscriptions > 0:
        with running_api(
            uri,
            WRITES_DATABASE,
            workers=1,
            log_path=logs / "api-subscriptions.log",
            config=subscriptions_config(config, subscriptions),
        ) as api:
            found["s/ratios"] = subscription_scenario(
                run, writes, api, subscriptions, fanout_rate, _log
            )
    # (a) on 1 process is (a) above, on the same set in the same run.
    for count in range(2, workers + 1):
        with running_api(
            uri,
            loaded.database,
            workers=count,
            log_path=logs / f"api-workers-{count}.log",
            config=config,
        ) as api:
            found[f"a/workers/{count}"] = _measure(
                run,
                f"graphql, {count} workers",
                replace(base, base_url=api.url, scenario=Scenario.ORDERS, target=Target.GRAPHQL),
                api,
            )
    return found


def each_set(
    run: Run,
    uri: str,
    sets: list[LoadedSet],
    spec: Spec,
    config: ApiConfig,
    ops_headers: tuple[tuple[str, str], ...],
) -> dict[Scenario, dict[int, Measurement]]:
    """(a) and (a-ops) on every set, on one API process per set; the store's plan of (a-ops)."""
    found: dict[Scenario, dict[int, Measurement]] = {Scenario.ORDERS: {}, Scenario.ORDERS_ALL: {}}
    plans = run.extra.setdefault("opsPage", {})
    for loaded in sets:
        explained = explain_ops_page(uri, loaded.database)
        plans[str(loaded.count)] = explained
        _log(f"a-ops plan on {loaded.count:,} orders: {describe_plan(explained)}")
        with running_api(
            uri,
            loaded.database,
            workers=1,
            log_path=BENCH_DATA / "logs" / "api-scale.log",
            config=config,
        ) as api:
            on_set = replace(
                spec,
                base_url=api.url,
                database=loaded.database,
                orders=loaded.count,
                base=loaded.base,
                target=Target.GRAPHQL,
            )
            found[Scenario.ORDERS][loaded.count] = _measure(
                run,
                f"graphql, {spec.concurrency} in flight",
                replace(on_set, scenario=Scenario.ORDERS),
                api,
            )
            found[Scenario.ORDERS_ALL][loaded.count] = _measure(
                run,
                f"graphql, ops key, {spec.concurrency} in flight",
                replace(on_set, scenario=Scenario.ORDERS_ALL, headers=ops_headers),
                api,
            )
    return found


def soak(
    uri: str, loaded: LoadedSet, spec: Spec, seconds: float, config: ApiConfig
) -> dict[str, Any]:
    """(a) for ``seconds`` after a warm-up, sampling the API's RSS as it runs."""
    samples: list[tuple[float, int]] = []
    with running_api(
        uri,
        loaded.database,
        workers=1,
        log_path=BENCH_DATA / "logs" / "soak.log",
        config=config,
    ) as api:
        done = threading.Event()

        def sample() -> None:
            started = datetime.now(UTC)
            while not done.wait(SOAK_SAMPLE_SECONDS):
                elapsed = (datetime.now(UTC) - started).total_seconds()
                samples.append((elapsed, rss_bytes(api.pid)))

        sampler = threading.Thread(target=sample, name="rss-sampler")
        _log(
            f"soak: (a) over GraphQL for {seconds:.0f} s, "
            f"RSS sampled every {SOAK_SAMPLE_SECONDS:.0f} s"
        )
        sampler.start()
        try:
            measured = measure(
                replace(
                    spec,
                    base_url=api.url,
                    scenario=Scenario.ORDERS,
                    target=Target.GRAPHQL,
                    duration=seconds,
                ),
                api.pid,
                api.idle_cpu_rate,
            )
        finally:
            done.set()
            sampler.join()
    # The first minute under load fills caches, pools and the allocator's arenas;
    # flat means no growth after that.
    settled = spec.warmup + SOAK_SETTLE_SECONDS
    after_warmup = [rss for elapsed, rss in samples if elapsed >= settled] or [0]
    first = after_warmup[0]
    return {
        "seconds": seconds,
        "requests": measured.outcome.requests,
        "settleSeconds": settled,
        "rssAfterWarmupBytes": first,
        "rssEndBytes": measured.rss_after,
        "rssMaxBytes": max(after_warmup),
        "growth": (max(after_warmup) - first) / first if first else math.nan,
        "samples": samples,
    }


def profile(
    uri: str, loaded: LoadedSet, spec: Spec, started: datetime, config: ApiConfig
) -> list[Path]:
    """Text profiles of the API serving (a) over GraphQL and over the plain endpoint."""
    reports = []
    for target in (Target.GRAPHQL, Target.PLAIN):
        report = RESULTS / f"{started:%Y%m%dT%H%M%SZ}-profile-a-{target}.txt"
        _log(f"profiling (a)/{target} for {spec.duration:.0f} s")
        with running_api(
            uri,
            loaded.database,
            workers=1,
            log_path=BENCH_DATA / "logs" / "profile.log",
            config=config,
            profile_to=report.resolve(),
        ) as api:
            measure(
                replace(spec, base_url=api.url, scenario=Scenario.ORDERS, target=target),
                api.pid,
                api.idle_cpu_rate,
            )
        reports.append(report)
    return reports


def shipped_budget() -> dict[str, float]:
    """The per-key budget the service ships with, whatever this shell's environment says."""
    fields = Settings.model_fields
    return {
        "perSecond": float(fields["rate_limit_per_second"].default),
        "burst": int(fields["rate_limit_burst"].default),
    }


def _preflight(
    client: httpx.Client, label: str, request_json: dict[str, Any] | None
) -> dict[str, Any]:
    started = time.perf_counter()
    response = client.post("/graphql", json=request_json)
    elapsed = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        body = {}
    served = response.status_code == 200 and not body.get("errors")
    return {
        "label": label,
        "answer": "served" if served else refusal_code(response.status_code, response.content),
        "ms": elapsed * 1000,
        # The service's own account, once it reports one (extensions.cost).
        "serviceCost": (body.get("extensions") or {}).get("cost"),
    }


def preflight(
    url: str, ordinary: Spec, documents: Sequence[HostileDocument]
) -> list[dict[str, Any]]:
    """(a) and each hostile document once, with the ordinary client's key, on the idle API.

    Whether each is served shows the documents are what the limits allow (and
    the service's own cost, once it reports one, checks the generator's).
    """
    with httpx.Client(
        base_url=url, headers=dict(ordinary.headers), timeout=REQUEST_TIMEOUT
    ) as client:
        checked = [_preflight(client, "(a)", http_request(ordinary, random.Random(1)).json)]
        for document in documents:
            request = {"query": document.query, "variables": document.variables}
            checked.append(_preflight(client, document.shape, request))
    return checked


def _attacker_answers(attack: Measurement) -> dict[str, Any]:
    served = 0
    refused: dict[str, int] = {}
    for label, count in attack.outcome.answers.items():
        shape, _, code = label.partition(": ")
        if code == "served":
            served += count
        else:
            # "pages: 429 RATE_LIMITED" by its code; an exception by its name.
            refused[code or shape] = refused.get(code or shape, 0) + count
    return {
        "requests": attack.outcome.requests,
        "served": served,
        "refused": dict(sorted(refused.items(), key=lambda item: -item[1])),
        "byShape": attack.outcome.answers,
        "censored": attack.outcome.censored,
    }


def hostile(
    run: Run,
    uri: str,
    loaded: LoadedSet,
    spec: Spec,
    config: ApiConfig,
    attacker_key: str,
    concurrency: int,
) -> list[Ratio]:
    """(a) with a /healthz probe, then the same while a hostile partner attacks; their ratios."""
    # The limits the API runs with: its environment is this process's, plus the config's.
    limits = Settings()
    documents = worst_documents(limits)
    for document in documents:
        _log(
            f"(h) {document.shape}: {document.summary}; cost {document.cost}, "
            f"{document.tokens} tokens"
        )
    ordinary = replace(
        spec,
        mongodb_uri=uri,
        database=loaded.database,
        orders=loaded.count,
        base=loaded.base,
        scenario=Scenario.ORDERS,
        target=Target.GRAPHQL,
    )
    logs = BENCH_DATA / "logs"
    # Each document alone first, on an API of its own, so the one measured starts fresh.
    with running_api(
        uri, loaded.database, workers=1, log_path=logs / "api-hostile-alone.log", config=config
    ) as api:
        _log("(h) (a) and each document once, alone")
        checked = preflight(api.url, ordinary, documents)
    with running_api(
        uri, loaded.database, workers=1, log_path=logs / "api-hostile.log", config=config
    ) as api:
        ordinary = replace(ordinary, base_url=api.url)
        probe = replace(
            ordinary,
            scenario=Scenario.HEALTH,
            target=Target.PLAIN,
            concurrency=HEALTH_PROBES,
            interval=HEALTH_INTERVAL_SECONDS,
            headers=(),
        )
        attacker = replace(
            ordinary,
            scenario=Scenario.HOSTILE,
            concurrency=concurrency,
            headers=(("authorization", f"Bearer {attacker_key}"),),
            documents=documents,
            quiet_warmup=True,
        )
        _log(f"(h) (a) and the /healthz probe for {spec.duration:.0f} s, no attack")
        quiet, quiet_probe = measure_together([ordinary, probe], api.pid, api.idle_cpu_rate)
        _log(
            f"(h) the same while the hostile partner keeps {concurrency} in flight "
            f"for {spec.duration:.0f} s"
        )
        attacked, attacked_probe, attack = measure_together(
            [ordinary, probe, attacker], api.pid, api.idle_cpu_rate
        )
    probe_label = f"{HEALTH_PROBES} every {HEALTH_INTERVAL_SECONDS * 1000:.0f} ms"
    run.add("graphql, no attack", quiet)
    run.add(f"{probe_label}, no attack", quiet_probe)
    run.add("graphql, under attack", attacked)
    run.add(f"{probe_label}, under attack", attacked_probe)
    run.add(f"graphql, {concurrency} in flight, own key", attack)
    for measured in (quiet, attacked, quiet_probe, attacked_probe):
        if measured.outcome.errors:
            console.print(f"[red]failed requests: {measured.outcome.failures}[/red]")
    ratios = [
        _latency_ratio(
            "(h) (a) p99 under attack / without", attacked.outcome.p99, quiet.outcome.p99, 1.5
        ),
        _latency_ratio(
            "(h) (a) p50 under attack / without", attacked.outcome.p50, quiet.outcome.p50
        ),
        Ratio(
            "(h) /healthz p99 under attack",
            attacked_probe.outcome.p99.seconds * 1000,
            unit="ms",
            bound=attacked_probe.outcome.p99.bound,
        ),
        _latency_ratio(
            "(h) /healthz p99 under attack / without",
            attacked_probe.outcome.p99,
            quiet_probe.outcome.p99,
        ),
    ]
    budget = shipped_budget()
    run.extra["hostile"] = {
        "limits": {
            name: getattr(limits, name)
            for name in (
                "max_query_cost",
                "max_aliases",
                "max_query_depth",
                "max_tokens",
                "max_directives",
                "max_page_size",
                "default_page_size",
                "list_cost_factor",
            )
        },
        "attackerKey": {"name": HOSTILE_KEY_NAME, "role": Role.PARTNER.value, "budget": budget},
        "attackerConcurrency": concurrency,
        "healthProbe": {"workers": HEALTH_PROBES, "intervalSeconds": HEALTH_INTERVAL_SECONDS},
        "documents": [document.as_json() for document in documents],
        "preflight": checked,
        "attacker": _attacker_answers(attack),
        "apiCpuSeconds": {"withoutAttack": quiet.server_cpu, "underAttack": attacked.server_cpu},
    }
    return ratios


def hook_overhead() -> dict[str, float] | None:
    """Median seconds per call (direct, pluggy hook, branchpay's notify) from pytest-benchmark."""
    output = RESULTS / "hooks.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    _log("pluggy hook overhead (pytest-benchmark)")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            HOOK_TESTS,
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={output}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        console.print(f"[red]hook benchmark failed[/red]\n{completed.stdout[-2000:]}")
        return None
    benchmarks = json.loads(output.read_text())["benchmarks"]
    # The median: on a shared machine a few preempted calls drag the mean.
    return {entry["name"].removeprefix("test_"): entry["stats"]["median"] for entry in benchmarks}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.orders < 1 or args.concurrency < 1 or args.duration <= 0:
        raise SystemExit("--orders, --concurrency and --duration must be positive")
    if args.mongodb_uri and args.store_server:
        raise SystemExit("--mongodb-uri and --store-server exclude each other")
    if args.hostile_only and not args.hostile:
        raise SystemExit("--hostile-only and --no-hostile exclude each other")
    if args.workers < 1 or args.subscriptions < 0 or args.fanout_rate <= 0:
        raise SystemExit("--workers, --fanout-rate must be positive; --subscriptions 0 or more")
    if args.hostile_concurrency < 1 or args.webhook_concurrency < 1:
        raise SystemExit("--hostile-concurrency and --webhook-concurrency must be positive")
    if args.bill_lines < 1:
        raise SystemExit("--bill-lines must be positive")
    if args.bills_only and (args.hostile_only or not args.bills):
        raise SystemExit("--bills-only excludes --hostile-only and --no-bills")
    if args.bills_only:
        return bills_only(args)
    started = datetime.now(UTC)
    # The bench's own secrets (sandbox, PII key) under .data/bench/secrets.
    settings = Settings(data_dir=BENCH_DATA)
    prepare_demo(settings)
    vault = PiiVault(settings.pii_master_key())
    with (
        store_uri(args.mongodb_uri, args.store_server) as (uri, store_name),
        running_gateway(BENCH_DATA, BENCH_DATA / "logs" / "sandbox.log") as gateway,
        contextlib.ExitStack() as stack,
    ):
        run = Run(started=started, store=store_name, arguments=vars(args))
        sets = [
            asyncio.run(ensure_loaded(uri, count, console, vault))
            for count in scales_for(args.orders)
        ]
        largest = sets[-1]
        for loaded in sets:
            how = "reused" if loaded.reused else "loaded now"
            _log(f"{loaded.database}: {loaded.count:,} orders ({how})")
        asyncio.run(_fresh_writes_database(uri, vault))
        stack.callback(lambda: asyncio.run(_drop_writes_database(uri)))
        databases = [loaded.database for loaded in sets] + [WRITES_DATABASE]
        key = asyncio.run(bench_key(uri, databases))
        plugins_toml = write_plugins_toml(BENCH_DATA, gateway)
        environment = (
            {"BRANCHPAY_PII_KEY_FILE": str(settings.pii_key_file)} if settings.pii_key_file else {}
        )
        config = ApiConfig(
            plugins_toml,
            {
                **environment,
                # The bench measures the API, not its per-key rate limit.
                "BRANCHPAY_RATE_LIMIT_PER_SECOND": "1000000",
                "BRANCHPAY_RATE_LIMIT_BURST": "1000000",
            },
        )
        # The hostile scenario: the budget as shipped, which the attacker's key faces;
        # only the bench's own key is let through (bench/plain.py).
        budget = shipped_budget()
        hostile_config = ApiConfig(
            plugins_toml,
            {
                **environment,
                "BRANCHPAY_RATE_LIMIT_PER_SECOND": str(budget["perSecond"]),
                "BRANCHPAY_RATE_LIMIT_BURST": str(int(budget["burst"])),
                UNLIMITED_KEYS: BENCH_KEY_NAME,
            },
        )
        spec = Spec(
            scenario=Scenario.ORDERS,
            target=Target.GRAPHQL,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            orders=largest.count,
            base=largest.base,
            mongodb_uri=uri,
            database=largest.database,
            # A partner's key for all six branches; --header may replace it.
            headers=(("authorization", f"Bearer {key}"), *_headers(args.header)),
            gateway_url=gateway,
        )
        if args.wrk and not crosscheck.available():
            run.not_measured.append("wrk cross-check: wrk is not on PATH (apt-get install wrk)")
        wrk = args.wrk and crosscheck.available()
        # Every scenario on the smallest set, where the store answers fastest and the
        # API's own cost shows most; (a) again on each larger set for the scale ratio.
        smallest = sets[0]
        main = replace(spec, orders=smallest.count, base=smallest.base, database=smallest.database)
        if not args.hostile_only:
            figures = main_set(
                run,
                uri,
                smallest,
                main,
                args.workers,
                config,
                wrk=wrk,
                webhook_concurrency=args.webhook_concurrency if args.webhooks else None,
                subscriptions=args.subscriptions,
                fanout_rate=args.fanout_rate,
                observability_overhead=args.overhead,
            )
            # The scale ratio compares latency, not queueing: a few requests in flight,
            # the same on every set, so a slow store on the large set is not drowned
            # by a queue in front of it.
            ops_key = asyncio.run(bench_key(uri, databases, OPS_KEY_NAME, Role.OPS))
            by_scale = each_set(
                run,
                uri,
                sets,
                replace(spec, concurrency=args.scale_concurrency),
                config,
                (("authorization", f"Bearer {ops_key}"),),
            )
            if args.soak > 0:
                run.extra["soak"] = soak(uri, smallest, main, args.soak, config)
            if args.profile:
                RESULTS.mkdir(parents=True, exist_ok=True)
                run.extra["profiles"] = [
                    str(p) for p in profile(uri, smallest, main, started, config)
                ]
        if args.bills:
            run.extra["bills"] = bills.bill_scenario(uri, args.bill_lines, BENCH_DATA, _log)
        hostile_ratios = []
        if args.hostile:
            attacker_key = asyncio.run(bench_key(uri, databases, HOSTILE_KEY_NAME))
            hostile_ratios = hostile(
                run, uri, smallest, main, hostile_config, attacker_key, args.hostile_concurrency
            )
    if not args.hostile_only:
        standard_ratios(run, args, figures, by_scale, smallest, largest)
    run.ratios += hostile_ratios
    run.ratios += bills.ratios(run.extra.get("bills"))
    print_run(run, console)
    console.print(f"written: {write_run(run, RESULTS)}")
    return 0


def bills_only(args: argparse.Namespace) -> int:
    """``--bills-only``: the store and scenario (r), nothing else."""
    started = datetime.now(UTC)
    with store_uri(args.mongodb_uri, args.store_server) as (uri, store_name):
        run = Run(started=started, store=store_name, arguments=vars(args))
        run.extra["bills"] = bills.bill_scenario(uri, args.bill_lines, BENCH_DATA, _log)
    run.ratios += bills.ratios(run.extra["bills"])
    print_run(run, console)
    console.print(f"written: {write_run(run, RESULTS)}")
    return 0


def standard_ratios(
    run: Run,
    args: argparse.Namespace,
    figures: dict[str, Any],
    by_scale: dict[Scenario, dict[int, Measurement]],
    smallest: LoadedSet,
    largest: LoadedSet,
) -> None:
    """The targets of scenarios (a) to (d), the hooks and the soak, from their measurements."""
    for scenario in ("a", "b"):
        graphql, plain = figures[f"{scenario}/graphql"], figures[f"{scenario}/plain"]
        driver = figures[f"{scenario}/driver"]
        is_a = scenario == "a"
        run.ratios += [
            _ratio(
                f"({scenario}) CPU/request GraphQL / plain",
                graphql.cpu_per_request,
                plain.cpu_per_request,
                1.5 if is_a else None,
            ),
            _latency_ratio(
                f"({scenario}) p99 GraphQL / plain",
                graphql.outcome.p99,
                plain.outcome.p99,
                2.0 if is_a else None,
            ),
            _latency_ratio(
                f"({scenario}) p50 GraphQL / driver", graphql.outcome.p50, driver.outcome.p50
            ),
        ]
    graphql, plain = figures["b/graphql/no-key-cache"], figures["b/plain/no-key-cache"]
    run.ratios += [
        _ratio(
            "(b) CPU/request GraphQL / plain, no key cache",
            graphql.cpu_per_request,
            plain.cpu_per_request,
        ),
        _ratio(
            "(b) GraphQL CPU/request with the key cache / without",
            figures["b/graphql"].cpu_per_request,
            graphql.cpu_per_request,
        ),
    ]
    if smallest.count != largest.count:
        for scenario, label in ((Scenario.ORDERS, "(a)"), (Scenario.ORDERS_ALL, "(a-ops)")):
            run.ratios.append(
                _latency_ratio(
                    f"{label} p50 at {largest.count:,} / at {smallest.count:,} orders"
                    f" ({args.scale_concurrency} in flight)",
                    by_scale[scenario][largest.count].outcome.p50,
                    by_scale[scenario][smallest.count].outcome.p50,
                    1.5 if (smallest.count, largest.count) == (10_000, 1_000_000) else None,
                )
            )
    run.ratios += overhead.ratios(figures)
    run.ratios += figures.get("w/ratios", [])
    run.ratios += figures.get("s/ratios", [])
    for count in range(2, args.workers + 1):
        if f"a/workers/{count}" in figures:
            run.ratios.append(
                _ratio(
                    f"(a) throughput {count} processes / 1",
                    figures[f"a/workers/{count}"].throughput,
                    figures["a/graphql"].throughput,
                )
            )
    hooks = None if args.no_hooks else hook_overhead()
    if hooks:
        run.extra["hooks"] = hooks
        for name in ("hook_call", "notify_call"):
            if name in hooks and "direct_call" in hooks:
                run.ratios.append(
                    Ratio(
                        f"{name.replace('_', ' ')} minus direct call (median)",
                        (hooks[name] - hooks["direct_call"]) * 1e6,
                        5.0,
                        unit="µs",
                    )
                )
    soaked = run.extra.get("soak")
    if soaked:
        run.ratios.append(
            Ratio(f"RSS growth over {args.soak:.0f} s", soaked["growth"] * 100, 10.0, unit="%")
        )
    else:
        run.not_measured.append("RSS over a long run: pass --soak 600 (10 minutes)")


def _has_start_payment() -> bool:
    from api.schema import schema

    return "startPayment" in schema.as_str()
