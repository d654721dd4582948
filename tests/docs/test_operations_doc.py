"""docs/operations.md stays true: its metrics table is the registered metrics, its alerts the rules file.

The rules file (docs/alerts/branchpay.rules.yml) and the example dashboard
(docs/grafana/branchpay.json) must parse and may name only metrics that exist.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from api.telemetry import metrics
from tests.docs.marked import ROOT, MarkedDoc, unquoted

DOC = MarkedDoc("operations.md")
# A metric name in an expression: branchpay_..., without the suffixes a histogram's series add.
METRIC = re.compile(r"\bbranchpay_[a-z_]+\b")
TYPES = {"counter": "counter", "histogram": "histogram", "gauge": "gauge"}


def exported_names() -> dict[str, str]:
    """Each metric's name as scraped (counters end in _total) and its type."""
    names: dict[str, str] = {}
    for metric in metrics.ALL_METRICS:
        (family,) = metric.describe()
        names[family.name + "_total" if family.type == "counter" else family.name] = family.type
    return names


def label_names() -> dict[str, set[str]]:
    """Each metric's label names (prometheus-client keeps them on the metric only)."""
    return {
        name: set(metric._labelnames)
        for name, metric in zip(exported_names(), metrics.ALL_METRICS, strict=True)
    }


def series_names() -> set[str]:
    """Every series name a scrape can hold: histograms add _bucket, _sum and _count."""
    found: set[str] = set()
    for name, kind in exported_names().items():
        found.add(name)
        if kind == "histogram":
            found.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return found


def test_the_metrics_table_lists_every_registered_metric_with_its_type_and_labels() -> None:
    rows = DOC.table("metrics")
    documented = {unquoted(row[0]): row for row in rows}
    exported = exported_names()
    assert set(documented) == set(exported)
    labels = label_names()
    for name, (_, kind, label_cell, meaning) in documented.items():
        assert kind.split()[0] == TYPES[exported[name]], name
        cells = [] if label_cell == "(none)" else label_cell.split(", ")
        assert {unquoted(cell) for cell in cells} == labels[name], name
        assert meaning, name


def test_every_metric_is_a_branchpay_metric() -> None:
    assert all(name.startswith("branchpay_") for name in exported_names())


def test_the_rules_file_parses_and_names_only_exported_metrics() -> None:
    rules: dict[str, Any] = yaml.safe_load(
        (ROOT / "docs" / "alerts" / "branchpay.rules.yml").read_text(encoding="utf-8")
    )
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert all({"alert", "expr", "annotations"} <= set(rule) for rule in alerts)
    used = {name for rule in alerts for name in METRIC.findall(rule["expr"])}
    assert used and used <= series_names(), used - series_names()
    documented = [unquoted(row[0]) for row in DOC.table("alerts")]
    assert documented == [rule["alert"] for rule in alerts]


def test_the_dashboard_parses_and_names_only_exported_metrics() -> None:
    dashboard: dict[str, Any] = json.loads(
        (ROOT / "docs" / "grafana" / "branchpay.json").read_text(encoding="utf-8")
    )
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used <= series_names(), used - series_names()
    # Every metric the service exports is on the example dashboard.
    assert {name for name in exported_names() if not any(name in found for found in used)} == set()
