"""What metrics and logs cost: (a) and (b) with both on against both off, in one run (issue 16).

*On* is what a branch runs by default: Prometheus metrics recorded
(``BRANCHPAY_METRICS=true``) and INFO logs as JSON lines. *Off* records no
metric and logs warnings only (``BRANCHPAY_METRICS=false``,
``BRANCHPAY_LOG_LEVEL=WARNING``). Traces stay off in both (no
``BRANCHPAY_OTEL_ENDPOINT``). The ratio is GraphQL CPU per request on / off,
on the same set and selection, measured by API processes that differ in
nothing else; the target is under 1.05 (5 % more). It is measured, not asserted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bench.report import Ratio
from bench.server import ApiConfig

ON: Mapping[str, str] = {
    "BRANCHPAY_METRICS": "true",
    "BRANCHPAY_LOG_LEVEL": "INFO",
    "BRANCHPAY_LOG_FORMAT": "json",
}
OFF: Mapping[str, str] = {"BRANCHPAY_METRICS": "false", "BRANCHPAY_LOG_LEVEL": "WARNING"}
TARGET = 1.05
# The figures' names in main_set's findings.
SCENARIOS = ("a", "b")
OFF_SUFFIX = "graphql/unobserved"


def observed(config: ApiConfig, on: bool) -> ApiConfig:
    """The API with metrics and logs on (the defaults, said explicitly) or off."""
    # A traces endpoint in the bench's environment would be charged to both sides alike.
    switched = {k: v for k, v in config.environment.items() if k != "BRANCHPAY_OTEL_ENDPOINT"}
    return replace(config, environment={**switched, **(ON if on else OFF)})


def ratios(figures: Mapping[str, Any]) -> list[Ratio]:
    """(a) and (b): CPU per request with metrics and logs / without, when both were measured."""
    found: list[Ratio] = []
    for scenario in SCENARIOS:
        on, off = figures.get(f"{scenario}/graphql"), figures.get(f"{scenario}/{OFF_SUFFIX}")
        if on is None or off is None:
            continue
        bottom = off.cpu_per_request
        found.append(
            Ratio(
                f"({scenario}) CPU/request with metrics and logs / without",
                on.cpu_per_request / bottom if bottom else float("nan"),
                TARGET,
            )
        )
    return found
