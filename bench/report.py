"""The result of a run: one rich table on the terminal and ``bench/results/<timestamp>.json``.

Targets are ratios measured in the same run (GraphQL against the plain
endpoint, 1 M orders against 10 k), so a busy machine shifts both sides.
A percentile that rests on requests still running at the end is printed as
a lower bound ("> 15,012"), and a ratio built from one says which way it
bounds the truth ("≥ 44.2 x"); the JSON flags both.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.loadgen import Measurement
from bench.percentiles import Bound, Percentile
from bench.scenarios import DESCRIPTIONS

BOUND_SIGNS = {Bound.EXACT: "", Bound.AT_LEAST: "≥ ", Bound.AT_MOST: "≤ ", Bound.UNKNOWN: "? "}


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    value: float
    target: float | None = None
    # True when smaller is better, so the target is an upper bound.
    at_most: bool = True
    unit: str = "x"
    # What ``value`` says about the true ratio when a side is a lower bound.
    bound: Bound = Bound.EXACT

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is none or the figure cannot tell."""
        if self.target is None or math.isnan(self.value):
            return None
        within = self.value <= self.target if self.at_most else self.value >= self.target
        if self.bound is Bound.EXACT:
            return within
        # A bound settles the verdict only on the side it bounds.
        if self.bound is Bound.AT_LEAST:
            return None if within == self.at_most else within
        if self.bound is Bound.AT_MOST:
            return None if within != self.at_most else within
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "bound": self.bound.value,
            "target": self.target,
            "met": self.met,
        }


@dataclass
class Run:
    """Everything one ``make bench`` measured."""

    started: datetime
    store: str
    arguments: dict[str, Any]
    measurements: list[tuple[str, Measurement]] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    not_measured: list[str] = field(default_factory=list)

    def add(self, label: str, measurement: Measurement) -> Measurement:
        self.measurements.append((label, measurement))
        return measurement


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpuModel": model,
        "loadAverage": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def _percentile_ms(figure: Percentile) -> str:
    if figure.lower_bound:
        return f"> {figure.seconds * 1000:,.0f}"
    return _ms(figure.seconds)


def _verdict(ratio: Ratio) -> str:
    if ratio.met is None:
        return ""
    return "[green]met[/green]" if ratio.met else "[red]missed[/red]"


def print_run(run: Run, console: Console) -> None:
    table = Table(title=f"branchpay bench, {run.started:%Y-%m-%d %H:%M} UTC, store: {run.store}")
    for column in ("scenario", "target", "orders", "req/s", "p50 ms", "p99 ms", "CPU ms/req"):
        table.add_column(column, justify="left" if column in ("scenario", "target") else "right")
    table.add_column("errors", justify="right")
    for label, m in run.measurements:
        table.add_row(
            DESCRIPTIONS[m.spec.scenario],
            label,
            f"{m.spec.orders:,}",
            f"{m.throughput:,.0f}",
            _percentile_ms(m.outcome.p50),
            _percentile_ms(m.outcome.p99),
            _ms(m.cpu_per_request),
            str(m.outcome.errors),
        )
    console.print(table)
    ratios = Table(title="ratios (same run)")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    ratios.add_column("target", justify="right")
    ratios.add_column("")
    for ratio in run.ratios:
        target = "" if ratio.target is None else f"{'≤' if ratio.at_most else '≥'} {ratio.target}"
        value = "-" if math.isnan(ratio.value) else f"{ratio.value:.2f} {ratio.unit}"
        ratios.add_row(ratio.name, f"{BOUND_SIGNS[ratio.bound]}{value}", target, _verdict(ratio))
    console.print(ratios)
    for target, figures in run.extra.get("wrk", {}).items():
        ours = next(
            (m for label, m in run.measurements if label == target and m.spec.scenario == "a"),
            None,
        )
        if ours is None or "p50Ms" not in figures:
            console.print(f"wrk (a)/{target}: {figures}")
            continue
        console.print(
            f"wrk cross-check (a)/{target}: {figures['throughputPerSecond']:,.1f} req/s, "
            f"p50 {figures['p50Ms']:.1f} ms, p99 {figures['p99Ms']:.1f} ms, "
            f"non-2xx {figures['non2xx']}; ours: {ours.throughput:,.1f} req/s, "
            f"p50 {_percentile_ms(ours.outcome.p50)} ms, p99 {_percentile_ms(ours.outcome.p99)} ms"
        )
    if "webhooks" in run.extra:
        print_webhooks(run.extra["webhooks"], console)
    if "hostile" in run.extra:
        print_hostile(run.extra["hostile"], console)
    for reason in run.not_measured:
        console.print(f"[yellow]not measured:[/yellow] {reason}")


def print_webhooks(webhooks: dict[str, Any], console: Console) -> None:
    """What the table's (w) rows leave out: how much was created, and what was left undelivered."""
    deliveries, drain = webhooks["deliveries"], webhooks["deliveries"]["drain"]
    console.print(
        f"(w) webhooks: {deliveries['ordersCreated']:,} orders created under (c), "
        f"{deliveries['duringLoad']['requests']:,} of their order.created delivered in its "
        f"window; backlog when it stopped {drain['backlog']:,}, "
        f"{drain['deliveries']['requests']:,} delivered in {drain['seconds']:.1f} s after, "
        f"{drain['left']:,} left; the API polls every {webhooks['pollSeconds']:g} s"
    )


def print_hostile(hostile: dict[str, Any], console: Console) -> None:
    """Who attacked with what, what the service made of it, and each document alone."""
    key, attacker = hostile["attackerKey"], hostile["attacker"]
    refused = ", ".join(f"{code} {count:,}" for code, count in attacker["refused"].items())
    console.print(
        f"(h) hostile partner: key {key['name']} ({key['role']}, "
        f"{key['budget']['perSecond']:,.0f} points/s, burst {key['budget']['burst']:,}), "
        f"{hostile['attackerConcurrency']} in flight: {attacker['requests']:,} requests, "
        f"{attacker['served']:,} served, refused: {refused or 'none'}"
    )
    console.print("(h) documents, measured by the service's limits; each alone on an idle API:")
    alone = {checked["label"]: checked for checked in hostile["preflight"]}
    for document in [{"shape": "(a)", "summary": "the ordinary request"}, *hostile["documents"]]:
        checked = alone.get(document["shape"], {})
        cost = (
            f"cost {document['cost']:,}, {document['tokens']:,} tokens; "
            if "cost" in document
            else ""
        )
        service = checked.get("serviceCost")
        console.print(
            f"    {document['shape']}: {document['summary']}; {cost}"
            f"{checked.get('answer', '?')} in {checked.get('ms', math.nan):,.0f} ms"
            + (f"; extensions.cost {service}" if service is not None else "")
        )


def write_run(run: Run, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run.started:%Y%m%dT%H%M%SZ}.json"
    document = {
        "startedAt": run.started.isoformat(),
        "finishedAt": datetime.now(UTC).isoformat(),
        "store": run.store,
        "machine": machine(),
        "arguments": run.arguments,
        "measurements": [
            {"label": label, **measurement.as_json()} for label, measurement in run.measurements
        ],
        "ratios": [ratio.as_json() for ratio in run.ratios],
        "notMeasured": run.not_measured,
        **run.extra,
    }
    # default=str: arguments such as --store-server are paths.
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return path
