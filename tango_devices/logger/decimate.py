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
        finite = np.isfinite(values)
        return np.array([int(np.nanargmax(values)) if finite.any() else 0])
    buckets = max_points // 2
    starts = np.unique(np.linspace(0, n, buckets, endpoint=False).astype(np.int64))
    sizes = np.diff(np.append(starts, n))
    bucket = np.repeat(np.arange(len(starts)), sizes)
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf)
    high = np.where(finite, values, -np.inf)
    mins = np.minimum.reduceat(low, starts)
    maxs = np.maximum.reduceat(high, starts)
    # the first row of each bucket holding its min (its max); a bucket without
    # any value keeps its first row
    first_min = _first_per_bucket(np.flatnonzero((low == mins[bucket]) & finite), bucket)
    first_max = _first_per_bucket(np.flatnonzero((high == maxs[bucket]) & finite), bucket)
    empty = starts[~np.isfinite(mins)]
    picks = np.unique(np.concatenate([first_min, first_max, empty]))
    return picks[:max_points]


def _first_per_bucket(rows: np.ndarray, bucket: np.ndarray) -> np.ndarray:
    _, first = np.unique(bucket[rows], return_index=True)
    return rows[first]


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
