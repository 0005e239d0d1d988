"""Order statistics for latency samples (linear interpolation between closest ranks, as numpy's default)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Summary", "percentile", "summarize"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def summarize(values: Sequence[float]) -> Summary:
    """Summary of ``values`` (NaN fields when empty)."""
    s = sorted(values)
    if not s:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        n=len(s),
        min=s[0],
        p50=percentile(s, 50),
        p90=percentile(s, 90),
        p99=percentile(s, 99),
        max=s[-1],
        mean=sum(s) / len(s),
    )
