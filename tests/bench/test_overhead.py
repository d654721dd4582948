"""The bench's overhead figure: (a) and (b) on an API with metrics and logs, and on one without.

Both APIs are the bench's own processes (uvicorn, ``bench.server``) on the
suite's store, as ``make bench`` starts them; the switch reaches each process's
environment, both answer (a) and (b), and the ratios come from those two
measurements. Nothing here asserts a time.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench import overhead
from bench.loadgen import measure
from bench.scenarios import Scenario, Target
from bench.server import ApiConfig, running_api
from tests.bench.test_scale import (
    _spec,
    bench_api,  # noqa: F401 (a fixture)
)


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_on_and_off_are_measured_by_apis_that_differ_only_in_the_switch(
    tmp_path: Path,
    mongo_uri: str,
    db_name: str,
    bench_api: tuple[ApiConfig, dict[str, str]],  # noqa: F811 (the fixture)
) -> None:
    config, keys = bench_api
    traced = replace(
        config,
        environment={**config.environment, "BRANCHPAY_OTEL_ENDPOINT": "http://127.0.0.1:9"},
    )
    figures = {}
    for on in (True, False):
        switched = overhead.observed(traced, on)
        with running_api(
            mongo_uri, db_name, workers=1, log_path=tmp_path / f"api-{on}.log", config=switched
        ) as api:
            environment = _environment(api.pid)
            assert environment["BRANCHPAY_METRICS"] == ("true" if on else "false")
            assert environment["BRANCHPAY_LOG_LEVEL"] == ("INFO" if on else "WARNING")
            # Traces are off on both sides, whatever the bench's environment says.
            assert "BRANCHPAY_OTEL_ENDPOINT" not in environment
            assert environment["BRANCHPAY_RATE_LIMIT_BURST"] == "1000000"  # the rest kept
            for scenario in (Scenario.ORDERS, Scenario.ORDER):
                spec = _spec(api, mongo_uri, db_name, keys["partner"], scenario=scenario)
                measured = measure(replace(spec, target=Target.GRAPHQL), api.pid, api.idle_cpu_rate)
                assert measured.outcome.requests > 0 and measured.outcome.errors == 0
                name = f"{scenario}/graphql" if on else f"{scenario}/{overhead.OFF_SUFFIX}"
                figures[name] = measured
    ratios = overhead.ratios(figures)
    assert [r.name for r in ratios] == [
        "(a) CPU/request with metrics and logs / without",
        "(b) CPU/request with metrics and logs / without",
    ]
    for ratio, scenario in zip(ratios, ("a", "b"), strict=True):
        on_cpu = figures[f"{scenario}/graphql"].cpu_per_request
        off_cpu = figures[f"{scenario}/{overhead.OFF_SUFFIX}"].cpu_per_request
        assert ratio.value == on_cpu / off_cpu and ratio.target == 1.05
    # Without the off side (--no-overhead) there is no figure, not a made-up one.
    assert overhead.ratios({"a/graphql": figures["a/graphql"]}) == []
