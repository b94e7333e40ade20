"""Paired confidence intervals: how sure a comparison of two methods over the same runs is.

A *run* is one (seed, class-to-frequency-rank permutation) pair; two compared methods share every run (same seed,
same permutation, same data order), so each run gives one paired difference ``a_i - b_i`` and the noise that the
two methods share (an easy permutation, a lucky seed) cancels in it. :func:`paired_ci` turns those differences
into a mean and a two-sided Student-t interval; :mod:`ltcore.claims` reads a verdict off the interval.

Taught in notebook 08, *The interval, written out*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as scipy_stats

from ltcore.checks import check_float

__all__ = ["PairedInterval", "paired_ci"]


@dataclass(frozen=True)
class PairedInterval:
    """The mean paired difference ``mean`` and its interval ``[low, high]`` at ``confidence``, from ``n`` runs."""

    mean: float
    low: float
    high: float
    n: int
    diffs: tuple[float, ...]  # a_i - b_i in run order
    confidence: float


def paired_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedInterval:
    """The mean of ``a - b`` over paired runs and its two-sided Student-t confidence interval.

    With ``d_i = a_i - b_i`` for the ``n`` runs (``a[i]`` and ``b[i]`` come from the same run),

        d_bar = (1/n) sum_i d_i
        s     = sqrt( sum_i (d_i - d_bar)^2 / (n - 1) )          (sample standard deviation)
        [low, high] = d_bar -/+ t_{1 - alpha/2, n - 1} * s / sqrt(n),   alpha = 1 - confidence

    where ``t_{q, n-1}`` is the q-quantile of Student's t distribution with n - 1 degrees of freedom
    (``scipy.stats.t.ppf``; for n = 15 runs at 95%, t_{0.975, 14} = 2.145). This is the interval of the paired
    t-test (Student 1908; R's ``t.test(a, b, paired = TRUE)``). It assumes that the runs are independent of one
    another and that the differences are roughly normal; with few runs it is wide, which is the honest answer.

    Differences that are all equal (two methods that agree to the last bit on every run) have s = 0, so the
    interval has zero width: ``low == mean == high``.

    Args:
        a, b: per-run results, paired by position, equally long, at least 2 runs, finite numbers.
        confidence: the interval's coverage, in (0, 1).

    Raises:
        ValueError: fewer than 2 runs, unequal lengths, or a value that is not a finite number (naming it,
            e.g. ``a[3]``).
    """
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    a_values = _finite_values("a", a)
    b_values = _finite_values("b", b)
    if len(a_values) != len(b_values):
        raise ValueError(f"a and b must be paired run by run, got {len(a_values)} and {len(b_values)} values")
    n = len(a_values)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 runs (the spread of one difference is unknown), "
                         f"got {n}")
    diffs = tuple(x - y for x, y in zip(a_values, b_values))
    mean = math.fsum(diffs) / n
    if all(d == diffs[0] for d in diffs):
        # Rounding in the mean would give a spread of a few ulps; equal differences have none.
        return PairedInterval(diffs[0], diffs[0], diffs[0], n, diffs, confidence)
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half_width = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return PairedInterval(mean, mean - half_width, mean + half_width, n, diffs, confidence)


def _finite_values(name: str, values: Sequence[float]) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    return [check_float(f"{name}[{i}]", value) for i, value in enumerate(values)]
