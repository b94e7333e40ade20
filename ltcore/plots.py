"""Plots shared by the notebooks: class-count distributions, shot-group bars, per-class accuracy (bars per
class, a dot per run), learning curves, confusion matrices and image grids.

Taught in notebooks 01 (distributions, baselines, errors), 05 (per-branch accuracy) and 06 (IEM results).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np

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
        ax.axhline(many_thr, color="gray", ls="--", lw=0.8, label=f"many-shot: more than {many_thr}")
        ax.axhline(few_thr, color="gray", ls=":", lw=0.8, label=f"few-shot: fewer than {few_thr}")
    ax_bar.legend(fontsize=8)
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
    """Per-class top-1 accuracy (in %) of several models, classes sorted by training frequency (head left).

    ``per_class``: model -> accuracies ``[classes]`` (one run) or ``[runs, classes]`` (several runs: the bar is the
    mean, every run is a dot, so the spread shows). With at most 30 classes each class gets a group of bars, one bar
    per model, labelled with its name and training count; classes are categories, so no line joins them. With more
    classes each model is a row of points, and ``window`` adds a centred moving average over ``window`` classes (RAC
    Fig. 2: 20 of Places' 365); a window must cover at most a tenth of the classes, or it would draw a trend that
    the points do not have (an error otherwise).
    """
    counts = np.asarray(class_counts)
    order = np.argsort(-counts, kind="stable")
    n = len(order)
    if window is not None and (window < 1 or 10 * window > n):
        raise ValueError(f"a moving average over {window} classes needs at least {10 * max(window, 1)} classes, "
                         f"this plot has {n}: draw the classes themselves (window=None)")
    runs = {name: np.atleast_2d(100 * np.asarray(values, dtype=float))[:, order] for name, values in per_class.items()}
    x = np.arange(n)
    if n <= 30:
        fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 0.5 * n * max(1, len(runs)) ** 0.5 + 3)), 4.2))
        width = 0.8 / max(len(runs), 1)
        for i, (name, values) in enumerate(runs.items()):
            offset = x - 0.4 + width * (i + 0.5)
            bars = ax.bar(offset, values.mean(0), width, label=name if len(values) == 1 else f"{name} (mean of "
                          f"{len(values)} runs, dots: each run)")
            # a bar at 0% is invisible: label it, so that a missing bar never reads as a missing model
            ax.bar_label(bars, ["0" if value == 0 else "" for value in values.mean(0)], fontsize=8,
                         color=bars.patches[0].get_facecolor())
            if len(values) > 1:
                for run in values:
                    ax.plot(offset, run, "o", ms=3, color="black", alpha=0.6)
        labels = [f"{class_names[c]}\n({counts[c]})" if len(class_names) else f"{c}\n({counts[c]})" for c in order]
        ax.set_xticks(x, labels, fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(10, 4.2))
        for name, values in runs.items():
            mean = values.mean(0)
            points = ax.plot(x, mean, "o", ms=3, alpha=0.5, label=name)[0]
            if window:
                ax.plot(x, moving_average(mean, window), color=points.get_color(), lw=2,
                        label=f"{name}, {window}-class moving average")
    ax.set_xlabel("classes, most frequent first (training images)", fontsize=10)
    ax.set_ylabel("top-1 accuracy (%)", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.set_ylim(0, 102)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside, never over, the data
    fig.tight_layout()
    return fig


def plot_learning_curves(histories: Mapping[str, object], title: str = ""):
    """Training loss (left) and validation top-1 accuracy (right) per epoch, one line per model.

    ``histories``: model -> :class:`ltcore.train.History` (its ``epochs`` rows with ``loss`` and, when the model was
    validated, ``val_top1``). A model without validation has no line on the right, and the legend says so.
    """
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, history in histories.items():
        rows = list(history.epochs)
        epochs = [row["epoch"] for row in rows]
        line = ax_loss.plot(epochs, [row["loss"] for row in rows], "o-", ms=3, label=name)[0]
        validated = [(row["epoch"], 100 * row["val_top1"]) for row in rows if row.get("val_top1") is not None]
        if validated:
            ax_val.plot(*zip(*validated), "o-", ms=3, color=line.get_color(), label=name)
        else:
            line.set_label(f"{name} (not validated)")
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean over the epoch)", title="training loss")
    ax_val.set(xlabel="epoch", ylabel="validation top-1 accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_val):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                          class_counts: Optional[np.ndarray] = None, title: str = ""):
    """Row-normalised confusion matrix in % (rows: true class, columns: predicted), classes in label order, each
    cell printed. ``class_counts`` adds each class's training count to its row label."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    k = len(class_names)
    matrix = np.zeros((k, k))
    np.add.at(matrix, (labels, predictions), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = 100 * matrix / matrix.sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(0.55 * k + 3, 0.5 * k + 2))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(k):
        for j in range(k):
            if not np.isnan(percent[i, j]):
                ax.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if percent[i, j] > 50 else "black")
    rows = [f"{name} ({class_counts[c]})" for c, name in enumerate(class_names)] if class_counts is not None \
        else list(class_names)
    ax.set_xticks(np.arange(k), class_names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(np.arange(k), rows, fontsize=9)
    ax.set(xlabel="predicted class", ylabel="true class (training images)" if class_counts is not None else
           "true class", title=title)
    fig.colorbar(image, ax=ax, label="% of the true class")
    fig.tight_layout()
    return fig


def plot_image_grid(dataset, class_names: Sequence[str], class_counts: np.ndarray, per_class: int = 6, seed: int = 0,
                    title: str = ""):
    """``per_class`` training images of every class (a row each, head first), the row labelled with the class's
    name and training count; a class with fewer images shows what it has. ``dataset`` items are ``(image, label,
    index)`` as ltcore's splits give; images are shown as the model sees them (after the split's transform)."""
    counts = np.asarray(class_counts)
    order = np.argsort(-counts, kind="stable")
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(order), per_class, figsize=(1.2 * per_class + 1.6, 1.2 * len(order)), squeeze=False)
    for row, c in enumerate(order):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(chosen):
                image = dataset[int(chosen[col])][0]
                image = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
                image = image.transpose(1, 2, 0) if image.ndim == 3 else image
                image = (image - image.min()) / max(float(image.max() - image.min()), 1e-8)
                ax.imshow(image.squeeze(), cmap="gray" if image.squeeze().ndim == 2 else None)
        axes[row, 0].set_ylabel(f"{class_names[c]}\n{counts[c]} images", rotation=0, ha="right", va="center",
                                fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
