"""Latency percentiles over requests that completed and requests still running (censored).

A request still in flight when the load generator stops waiting has taken at
least its elapsed time so far: a censored latency, a lower bound of the true
one. Percentiles are nearest-rank over completed and censored latencies
together. Each true order statistic is at least the observed one, so every
percentile is a valid lower bound; it is exact when no censored latency sits
at or below its rank (a censored one there could really belong above it).
Ratios of percentiles carry the direction of what is known: a lower bound
over an exact figure is itself a lower bound, an exact figure over a lower
bound an upper bound, and a lower bound over a lower bound says nothing sure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Bound(StrEnum):
    """What a figure says about the true value."""

    EXACT = "exact"
    AT_LEAST = "at least"
    AT_MOST = "at most"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Percentile:
    seconds: float
    bound: Bound = Bound.EXACT

    @property
    def lower_bound(self) -> bool:
        return self.bound is Bound.AT_LEAST


NO_DATA = Percentile(math.nan)


@dataclass(frozen=True, slots=True)
class Latencies:
    """Completed and censored latencies in seconds, ascending, censored after completed on ties."""

    ordered: tuple[tuple[float, bool], ...]

    @classmethod
    def of(cls, completed: Iterable[float], censored: Iterable[float] = ()) -> Latencies:
        return cls(tuple(sorted([(s, False) for s in completed] + [(s, True) for s in censored])))

    def __len__(self) -> int:
        return len(self.ordered)

    @property
    def censored(self) -> int:
        return sum(1 for _, is_censored in self.ordered if is_censored)

    def percentile(self, fraction: float) -> Percentile:
        """Nearest-rank percentile; a lower bound if a censored latency is at or below the rank."""
        if not self.ordered:
            return NO_DATA
        rank = max(1, math.ceil(fraction * len(self.ordered)))
        seconds = self.ordered[rank - 1][0]
        censored_by_rank = any(is_censored for _, is_censored in self.ordered[:rank])
        return Percentile(seconds, Bound.AT_LEAST if censored_by_rank else Bound.EXACT)

    @property
    def max(self) -> Percentile:
        return self.percentile(1.0)


def ratio(top: Percentile, bottom: Percentile) -> tuple[float, Bound]:
    """``top / bottom`` and what it says about the true ratio (nan when it has no meaning)."""
    if math.isnan(top.seconds) or math.isnan(bottom.seconds) or not bottom.seconds:
        return math.nan, Bound.UNKNOWN
    value = top.seconds / bottom.seconds
    match top.lower_bound, bottom.lower_bound:
        case False, False:
            return value, Bound.EXACT
        case True, False:
            return value, Bound.AT_LEAST
        case False, True:
            return value, Bound.AT_MOST
        case _:
            return value, Bound.UNKNOWN
