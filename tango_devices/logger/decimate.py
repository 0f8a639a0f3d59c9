"""Reducing a time series to at most N points for a trend (no tango).

Numbers: min/max per bucket. The range is cut into N/2 buckets of equal
*point count*; each bucket contributes its smallest and its largest value, in
time order, so spikes survive (a plain stride would drop them). Other values
(strings, arrays, states, booleans): the first point of each of N buckets.
A bucket with no value at all (only INVALID or ERROR rows) keeps its first
row, so a trend still shows where data was missing.
"""

from __future__ import annotations

import numpy as np


def minmax_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices (sorted) of at most ``max_points`` rows keeping each bucket's min and max."""
    n = len(values)
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    if max_points < 2:
        return np.array([int(np.nanargmax(values)) if np.isfinite(values).any() else 0])
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    finite = np.where(np.isfinite(values), values, np.nan)
    picks: list[int] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        chunk = finite[lo:hi]
        if np.isnan(chunk).all():
            picks.append(int(lo))
            continue
        a = int(np.nanargmin(chunk)) + int(lo)
        b = int(np.nanargmax(chunk)) + int(lo)
        picks.extend(sorted({a, b}))
    return np.asarray(picks[:max_points], dtype=np.int64)


def stride_indices(n: int, max_points: int) -> np.ndarray:
    """The first row of each of ``max_points`` equal buckets."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n, max_points, endpoint=False).astype(np.int64))


def decimate(n: int, values: np.ndarray | None, max_points: int) -> tuple[np.ndarray, str]:
    """Indices of the rows to return, and the method used ("none", "minmax",
    "stride"); ``values`` are the numbers of a numeric series (NaN: no value),
    None for any other series."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n), "none"
    if values is not None:
        return minmax_indices(np.asarray(values, dtype=np.float64), max_points), "minmax"
    return stride_indices(n, max_points), "stride"
