"""Plots shared by the notebooks: class-count distributions, shot-group bars, per-class accuracy curves,
and the memory benchmark's speed-ups against their ceiling.

Taught in notebooks 01 (distributions, baselines), 02 (memory speed), 05 (per-branch accuracy) and
06 (IEM results).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

SHOT_COLUMNS = ("many", "medium", "few", "overall")


def plot_class_counts(counts: Mapping[str, Sequence[int]], many_thr: int = 100, few_thr: int = 20):
    """Left: sorted class counts per dataset (bars of the first); right: log-log rank/count curves.

    The dashed lines mark the many (> many_thr) and few (< few_thr) boundaries.
    """
    fig, (ax_bar, ax_log) = plt.subplots(1, 2, figsize=(11, 3.8))
    first_name, first = next(iter(counts.items()))
    first = np.sort(np.asarray(first))[::-1]
    ax_bar.bar(np.arange(len(first)), first, color="tab:blue")
    ax_bar.set(title=f"{first_name}: images per class", xlabel="class rank (head -> tail)", ylabel="train images")
    for name, values in counts.items():
        values = np.sort(np.asarray(values))[::-1]
        ax_log.loglog(np.arange(1, len(values) + 1), values, marker="." if len(values) <= 100 else None, label=name)
    for ax in (ax_bar, ax_log):
        ax.axhline(many_thr, color="gray", ls="--", lw=0.8)
        ax.axhline(few_thr, color="gray", ls=":", lw=0.8)
    ax_log.set(title="rank vs count (log-log)", xlabel="class rank", ylabel="train images")
    ax_log.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_shot_bars(rows: Sequence[dict], title: str = "", columns: Sequence[str] = SHOT_COLUMNS):
    """Grouped bars: one group per shot column, one bar per method (rows from ``ltcore.results``)."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(columns))
    for i, row in enumerate(rows):
        values = [np.nan if row.get(c) is None else row[c] for c in columns]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=row["method"])
    ax.set_xticks(x, columns)
    ax.set(ylabel="top-1 accuracy (%)", title=title, ylim=(0, 100))
    ax.legend(fontsize=8, ncol=min(len(rows), 5))
    fig.tight_layout()
    return fig


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average ignoring NaNs (RAC Fig. 2 uses a 20-class window)."""
    values = np.asarray(values, dtype=float)
    valid = ~np.isnan(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(valid, values, 0.0), kernel, mode="same")
    counts = np.convolve(valid.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def plot_per_class_accuracy(per_class: Mapping[str, np.ndarray], class_counts: np.ndarray,
                            window: Optional[int] = None, title: str = "", class_names: Sequence[str] = ()):
    """Per-class accuracy (in %) of several models, classes sorted by training frequency (head left).

    With ``window`` a moving average line is drawn per model over the points (RAC Fig. 2 style).
    """
    order = np.argsort(-np.asarray(class_counts), kind="stable")
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(order))
    for name, accuracy in per_class.items():
        values = 100 * np.asarray(accuracy, dtype=float)[order]
        points = ax.plot(x, values, "o", ms=4, alpha=0.6 if window else 0.9, label=name)[0]
        if window:
            ax.plot(x, moving_average(values, window), color=points.get_color(), lw=2)
        elif len(x) <= 30:
            ax.plot(x, values, color=points.get_color(), lw=1)
    if len(class_names) and len(order) <= 30:
        ax.set_xticks(x, [f"{class_names[c]}\n({class_counts[c]})" for c in order], fontsize=7)
    ax.set(xlabel="classes, most frequent first (train count)", ylabel="top-1 accuracy (%)", title=title,
           ylim=(-2, 102))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_speedup_ceiling(reads: Sequence[dict], target: float):
    """Speed-up of ``read_all`` over the per-class loop beside its ceiling, per benchmark set-up (log scale).

    ``reads`` are the ``read_all`` rows of :func:`ltcore.benchmarks.memory.main`; the ceiling is the
    loop's time over that of the bare query-key product, the most any exact brute-force read could gain.
    The dashed line is the ``target`` speed-up.
    """
    fig, ax = plt.subplots(figsize=(7, 3.4))
    positions = np.arange(len(reads))
    labels = [f"{r['classes']} banks, {r['slots'] // r['classes']} slots\nD {r['dim']}, {r['queries']} queries"
              for r in reads]
    speedups, ceilings = [r["speedup_vs_loop"] for r in reads], [r["ceiling_vs_loop"] for r in reads]
    for offset, values, style in ((-0.2, speedups, dict(label="read_all: loop time / read_all time")),
                                  (0.2, ceilings, dict(color="lightgray", edgecolor="gray",
                                                       label="ceiling: loop time / product time"))):
        bars = ax.bar(positions + offset, values, 0.4, **style)
        ax.bar_label(bars, [f"{v:.1f}x" for v in values], fontsize=8)
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:g}x")
    ax.set_yscale("log")
    ax.set_ylim(1, 3 * max(ceilings + [target]))                  # 1x: as fast as the loop
    ax.yaxis.set_major_locator(FixedLocator([1, 3, 10, 30, 100, 300, 1000]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(positions, labels, fontsize=8)
    ax.set(ylabel="times faster than the loop", title="Batched read_all against a per-class loop")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
