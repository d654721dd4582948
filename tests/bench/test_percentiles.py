"""Bench percentiles over completed and censored latencies: exact, lower bounds, ratios."""

from __future__ import annotations

import math

import pytest

from bench.percentiles import Bound, Latencies, Percentile, ratio
from bench.report import Ratio


def test_only_completed_latencies_give_exact_nearest_rank_percentiles() -> None:
    latencies = Latencies.of([0.004, 0.001, 0.003, 0.002])
    assert latencies.percentile(0.50) == Percentile(0.002, Bound.EXACT)
    assert latencies.percentile(0.99) == Percentile(0.004, Bound.EXACT)
    assert latencies.max == Percentile(0.004, Bound.EXACT)
    assert latencies.censored == 0


def test_nothing_measured_gives_nan() -> None:
    assert math.isnan(Latencies.of([]).percentile(0.5).seconds)


def test_only_censored_latencies_give_lower_bounds_never_nan() -> None:
    latencies = Latencies.of([], censored=[15.012, 18.3, 16.0, 17.5])
    p50 = latencies.percentile(0.50)
    assert p50 == Percentile(16.0, Bound.AT_LEAST) and p50.lower_bound
    assert latencies.max == Percentile(18.3, Bound.AT_LEAST)
    assert latencies.censored == 4


def test_a_censored_latency_above_the_rank_leaves_the_percentile_exact() -> None:
    latencies = Latencies.of([0.01] * 98 + [0.02], censored=[15.0])
    assert latencies.percentile(0.50) == Percentile(0.01, Bound.EXACT)
    assert latencies.percentile(0.99) == Percentile(0.02, Bound.EXACT)
    assert latencies.max == Percentile(15.0, Bound.AT_LEAST)


def test_a_censored_latency_below_the_rank_makes_a_completed_figure_a_lower_bound() -> None:
    # The request cut off at 2 s may really have taken longer than the 3 s one.
    latencies = Latencies.of([1.0, 3.0, 4.0], censored=[2.0])
    assert latencies.percentile(0.75) == Percentile(3.0, Bound.AT_LEAST)
    assert latencies.percentile(0.25) == Percentile(1.0, Bound.EXACT)


def test_on_a_tie_the_completed_latency_ranks_before_the_censored_one() -> None:
    latencies = Latencies.of([5.0, 1.0], censored=[5.0])
    assert latencies.percentile(2 / 3) == Percentile(5.0, Bound.EXACT)
    assert latencies.max == Percentile(5.0, Bound.AT_LEAST)


@pytest.mark.parametrize(
    ("top", "bottom", "bound"),
    [
        (Percentile(0.2), Percentile(0.1), Bound.EXACT),
        (Percentile(0.2, Bound.AT_LEAST), Percentile(0.1), Bound.AT_LEAST),
        (Percentile(0.2), Percentile(0.1, Bound.AT_LEAST), Bound.AT_MOST),
        (Percentile(0.2, Bound.AT_LEAST), Percentile(0.1, Bound.AT_LEAST), Bound.UNKNOWN),
    ],
)
def test_a_ratio_says_which_way_it_bounds_the_truth(
    top: Percentile, bottom: Percentile, bound: Bound
) -> None:
    value, found = ratio(top, bottom)
    assert value == pytest.approx(2.0) and found is bound


def test_a_ratio_over_nothing_is_nan() -> None:
    value, bound = ratio(Percentile(1.0), Percentile(0.0))
    assert math.isnan(value) and bound is Bound.UNKNOWN
    value, bound = ratio(Percentile(1.0), Percentile(math.nan))
    assert math.isnan(value) and bound is Bound.UNKNOWN


@pytest.mark.parametrize(
    ("value", "bound", "met"),
    [
        (1.2, Bound.EXACT, True),
        (44.2, Bound.EXACT, False),
        # At least 44.2 against "at most 1.5": missed for sure.
        (44.2, Bound.AT_LEAST, False),
        # At least 1.2 may still be above 1.5.
        (1.2, Bound.AT_LEAST, None),
        (1.2, Bound.AT_MOST, True),
        (44.2, Bound.AT_MOST, None),
        (1.2, Bound.UNKNOWN, None),
    ],
)
def test_a_bounded_ratio_settles_the_target_only_on_the_side_it_bounds(
    value: float, bound: Bound, met: bool | None
) -> None:
    assert Ratio("p50 1 M / 10 k", value, 1.5, bound=bound).met is met
