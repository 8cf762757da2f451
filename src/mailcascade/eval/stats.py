"""Statistics for eval metrics: bootstrap intervals, paired comparisons, McNemar, percentiles.

Every function is pure and deterministic (seeded numpy Generator). Empty inputs raise ValueError where no number
can be given; `percentiles` and `mean_or_none` answer None instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mailcascade.summary import percentile

#: resample at most this many values per numpy chunk (bounds memory for large eval sets)
_CHUNK_VALUES = 2_000_000


def mean_or_none(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or None for an empty sequence."""
    return float(np.mean(np.asarray(values, dtype=np.float64))) if len(values) else None


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p90": ...} with linear interpolation; every value is None when `values` is empty."""
    if not len(values):
        return dict.fromkeys(f"p{q:g}" for q in qs)
    return {f"p{q:g}": percentile(values, q / 100) for q in qs}


def _check_alpha(alpha: float, n: int) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n < 1:
        raise ValueError(f"n (bootstrap replicates) must be at least 1, got {n}")


def resample_indices(size: int, n: int, seed: int) -> Iterator[np.ndarray]:
    """n rows of `size` indices drawn with replacement, yielded in memory-bounded chunks."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_VALUES // max(size, 1))
    done = 0
    while done < n:
        take = min(rows, n - done)
        yield rng.integers(0, size, size=(take, size))
        done += take


def percentile_interval(replicates: np.ndarray, point: float, alpha: float) -> tuple[float, float]:
    """Percentile interval, widened to include the point estimate (only float rounding can put it outside)."""
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return min(float(low), point), max(float(high), point)


def bootstrap_ci(
    per_case: Sequence[float], *, n: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval for the mean of per-case scores. Raises ValueError when empty."""
    _check_alpha(alpha, n)
    values = np.asarray(per_case, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    means = np.concatenate([values[idx].mean(axis=1) for idx in resample_indices(values.size, n, seed)])
    return percentile_interval(means, float(values.mean()), alpha)


def bootstrap_metric(
    fn: Callable[..., float | None],
    *columns: Sequence[Any],
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval for any corpus-level metric (accuracy, macro-F1, ...).

    Cases are resampled jointly: replicate r calls `fn(col1[idx], col2[idx], ...)` with the same indices for
    every column (each column is passed as a list). Replicates where `fn` returns None (metric undefined on that
    sample) are skipped. Raises ValueError when the columns are empty or of unequal length, or when `fn` is
    undefined on the full data or on every replicate.
    """
    _check_alpha(alpha, n)
    if not columns:
        raise ValueError("bootstrap_metric needs at least one column")
    size = len(columns[0])
    if any(len(c) != size for c in columns):
        raise ValueError(f"columns differ in length: {[len(c) for c in columns]}")
    if size == 0:
        raise ValueError("bootstrap_metric needs at least one case")
    point = fn(*[list(c) for c in columns])
    if point is None:
        raise ValueError("the metric is undefined on the full data")
    found: list[float] = []
    for chunk in resample_indices(size, n, seed):
        for idx in chunk:
            value = fn(*[[c[i] for i in idx] for c in columns])
            if value is not None:
                found.append(float(value))
    if not found:
        raise ValueError("the metric is undefined on every bootstrap replicate")
    return percentile_interval(np.asarray(found), float(point), alpha)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, n: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """Compare two runs scored on the same cases (a[i] and b[i] are the same case).

    delta = mean(b) - mean(a) (positive: b is better for a higher-is-better score). The interval is the
    percentile bootstrap of the mean paired difference; p_value is two-sided, from the bootstrap distribution
    shifted to the null (mean difference 0): (1 + #{|d* - delta| >= |delta|}) / (n + 1), so never 0.
    """
    _check_alpha(alpha, n)
    if len(a) != len(b):
        raise ValueError(f"paired runs differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        raise ValueError("paired_bootstrap needs at least one case")
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    delta = float(diff.mean())
    means = np.concatenate([diff[idx].mean(axis=1) for idx in resample_indices(diff.size, n, seed)])
    low, high = percentile_interval(means, delta, alpha)
    # a tolerance so that identical runs (all differences 0) count every replicate as extreme: p = 1
    extreme = int(np.sum(np.abs(means - delta) >= abs(delta) - 1e-12))
    return {"delta": delta, "ci_low": low, "ci_high": high, "p_value": (1 + extreme) / (n + 1)}


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar test: scipy's binomial test on the discordant pairs (p = 0.5); 1.0 when none."""
    from scipy.stats import binomtest

    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired runs differ in length: {len(a_correct)} vs {len(b_correct)}")
    only_a = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue)
