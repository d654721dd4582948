"""Issue 15's figures: many subscriptions, many processes, the key cache, the ops-wide page.

- **(a-ops)**: ``orders(first: 50)`` with no filter, for an ops key (every
  branch, newest first), on every set size beside (a); its p50 ratio between
  the largest and the smallest set, and the store's own ``explain`` of the
  find the API sends for it (``explain_ops_page``), so the ratio comes with
  the plan that explains it.
- **(b) before the key cache**: (b) over GraphQL and plain on an API started
  with ``BRANCHPAY_KEY_CACHE=false`` (``key_cache_off``), so every request
  reads its key from the store as before the cache; the rows with the cache
  are (b)'s own, on the same set in the same run.
- **(s)**: idle ``orderEvents`` subscriptions on one process
  (``bench.subscriptions``): RSS per subscription and the fan-out latency.
- **(a) on 1, 2 and 3 processes**: ``bench.run`` runs (a) on
  ``uvicorn --workers N``, the same supervisor ``branchpay serve --workers N``
  runs (spawned processes accepting on one socket).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure

from api.store.orders import NEWEST_FIRST, ORDER_FIELDS, OrderQuery
from bench import percentiles
from bench.report import Ratio, Run
from bench.scenarios import PAGE_SIZE
from bench.server import ApiConfig, ApiProcess
from bench.subscriptions import BASELINE_SUBSCRIPTIONS, FanOut, fan_out

OPS_KEY_NAME = "make-bench-ops"


def key_cache_off(config: ApiConfig) -> ApiConfig:
    """The same API with its key cache disabled: every request reads its key."""
    return replace(config, environment={**config.environment, "BRANCHPAY_KEY_CACHE": "false"})


def subscriptions_config(config: ApiConfig, count: int) -> ApiConfig:
    """The per-key subscription limit raised to ``count`` (the bench's key holds them all)."""
    return replace(
        config,
        environment={
            **config.environment,
            "BRANCHPAY_WS_MAX_SUBSCRIPTIONS_PER_KEY": str(max(count, BASELINE_SUBSCRIPTIONS)),
        },
    )


def _stages(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in ("inputStage", "queryPlan"):
        if isinstance(plan.get(child), dict):
            yield from _stages(plan[child])
    for stage in plan.get("inputStages", []):
        yield from _stages(stage)


def explain_ops_page(uri: str, database: str) -> dict[str, Any]:
    """The store's plan for the first ops-wide page, as the API sends it, with its statistics."""
    command = {
        "find": "orders",
        "filter": OrderQuery().to_filter(),
        "sort": dict(NEWEST_FIRST),
        "projection": ORDER_FIELDS,
        "limit": PAGE_SIZE + 1,
    }
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    with client:
        try:
            explained = client[database].command(
                {"explain": command, "verbosity": "executionStats"}
            )
        except OperationFailure as error:
            return {"error": f"{error.code}: {error}"}
    winning = explained.get("queryPlanner", {}).get("winningPlan", {})
    stats = explained.get("executionStats", {})
    stages = list(_stages(winning))
    return {
        "stages": [stage.get("stage") for stage in stages],
        "index": next((s.get("indexName") for s in stages if s.get("stage") == "IXSCAN"), None),
        "inMemorySort": any(s.get("stage") == "SORT" for s in stages),
        "keysExamined": stats.get("totalKeysExamined"),
        "docsExamined": stats.get("totalDocsExamined"),
        "returned": stats.get("nReturned"),
        "millis": stats.get("executionTimeMillis"),
    }


def describe_plan(explained: dict[str, Any]) -> str:
    if "error" in explained:
        return f"no explain: {explained['error']}"
    sort = ", in-memory SORT" if explained["inMemorySort"] else ""
    return (
        f"{' <- '.join(str(s) for s in explained['stages'])} (index {explained['index']}{sort}), "
        f"{explained['keysExamined']} keys and {explained['docsExamined']} documents examined "
        f"for {explained['returned']}"
    )


def subscription_scenario(
    run: Run,
    spec: Any,
    api: ApiProcess,
    count: int,
    write_rate: float,
    log: Callable[[str], None],
) -> list[Ratio]:
    """(s) with ``BASELINE_SUBSCRIPTIONS`` then ``count`` subscriptions on the API ``api``."""
    passes: dict[int, FanOut] = {}
    for subscriptions in sorted({min(BASELINE_SUBSCRIPTIONS, count), count}):
        log(f"(s) {subscriptions:,} idle orderEvents subscriptions, writes at {write_rate:g}/s")
        measured = fan_out(replace(spec, base_url=api.url), api.pid, subscriptions, write_rate)
        log(
            f"(s) {measured.opened:,} open in {measured.open_seconds:.1f} s; RSS "
            f"{measured.rss_before / 2**20:.1f} -> {measured.rss_after / 2**20:.1f} MiB; "
            f"{len(measured.latencies):,} of {measured.written:,} events received"
        )
        passes[subscriptions] = measured
    run.extra["subscriptions"] = {
        "writeRate": write_rate,
        "passes": {str(n): measured.as_json() for n, measured in passes.items()},
    }
    base, full = passes[min(passes)], passes[count]
    ratios = [
        Ratio(
            f"(s) RSS per idle subscription ({full.opened:,} open)",
            full.rss_per_subscription / 1024,
            unit="KiB",
        ),
        Ratio(
            f"(s) API RSS with {full.opened:,} subscriptions / without",
            full.rss_after / full.rss_before if full.rss_before else math.nan,
        ),
        Ratio(
            f"(s) fan-out p99, write to receipt ({full.opened:,} open)",
            full.latencies.percentile(0.99).seconds * 1000,
            unit="ms",
            bound=full.latencies.percentile(0.99).bound,
        ),
    ]
    if base is not full:
        value, bound = percentiles.ratio(
            full.latencies.percentile(0.99), base.latencies.percentile(0.99)
        )
        ratios.append(
            Ratio(
                f"(s) fan-out p99 with {full.opened:,} open / with {base.opened:,}",
                value,
                bound=bound,
            )
        )
    return ratios
