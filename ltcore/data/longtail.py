"""Long-tailed subsampling of a balanced labelled dataset, the LDAM-DRW way.

Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
Loss", NeurIPS 2019, build CIFAR-10/100-LT by keeping, for class ``i`` of ``C``,
``int(n_max * imbalance_ratio ** (-i / (C - 1)))`` images ("exp" profile) or
half the classes at ``n_max`` and half at ``n_max / imbalance_ratio`` ("step").
The many / medium / few groups used by both papers are defined on these counts
(see :mod:`ltcore.metrics`).

Taught in notebook 01, *How the standard benchmarks are built*.
"""
from __future__ import annotations

import numpy as np

from ltcore.checks import check_choice, check_float, check_int

PROFILES = ("exp", "step")


def longtail_counts(n_max: int, n_classes: int, imbalance_ratio: float, profile: str = "exp") -> np.ndarray:
    """Per-class image counts of a long-tailed split, head class first.

    exp:  ``int(n_max * imbalance_ratio ** (-i / (n_classes - 1)))`` for class ``i``.
    step: the first ``n_classes // 2`` classes keep ``n_max``, the rest ``int(n_max / imbalance_ratio)``.
    """
    check_choice("profile", profile, PROFILES)
    n_classes = check_int("n_classes", n_classes, low=2)
    n_max = check_int("n_max", n_max, low=1)
    imbalance_ratio = check_float("imbalance_ratio (head / tail)", imbalance_ratio, low=1)
    if profile == "exp":
        counts = [int(n_max * imbalance_ratio ** (-i / (n_classes - 1))) for i in range(n_classes)]
    else:
        n_head = n_classes // 2
        counts = [n_max] * n_head + [int(n_max / imbalance_ratio)] * (n_classes - n_head)
    if min(counts) < 1:
        raise ValueError(
            f"n_max={n_max} with imbalance_ratio={imbalance_ratio} leaves a class with no image; "
            "raise n_max or lower the ratio"
        )
    return np.asarray(counts, dtype=np.int64)


def longtail_indices(labels: np.ndarray, counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of a seeded, deterministic long-tailed subset of ``labels``.

    Class ``c`` keeps ``counts[c]`` images drawn without replacement by a
    ``numpy.random.default_rng(seed)`` permutation of that class's indices.
    The result is sorted, so the same seed always gives the same subset.
    Raises if a class has fewer images than asked for: nothing is silently capped.
    """
    labels = np.asarray(labels)
    counts = np.asarray(counts)
    if (counts < 0).any():
        c = int(np.argmin(counts))
        raise ValueError(f"class {c} is asked for {counts[c]} images; counts must be >= 0")
    rng = np.random.default_rng(seed)
    chosen = []
    for c, n in enumerate(counts):
        pool = np.flatnonzero(labels == c)
        if len(pool) < n:
            raise ValueError(f"class {c} has {len(pool)} images but the long-tailed profile asks for {n}")
        chosen.append(rng.permutation(pool)[:n])
    return np.sort(np.concatenate(chosen))


def validation_indices(labels: np.ndarray, train_idx: np.ndarray, val_per_class: int, num_classes: int,
                       n_max: int, seed: int) -> np.ndarray:
    """A balanced validation split (``val_per_class`` per class) from the training images the long tail did not use.

    Drawn with ``seed + 1``; raises, naming the class, if one has too few unused images.
    """
    val_per_class = check_int("val_per_class", val_per_class, low=0)
    unused = np.setdiff1d(np.arange(len(labels)), train_idx)
    spare = np.bincount(labels[unused], minlength=num_classes)
    short = np.flatnonzero(spare < val_per_class)
    if short.size:
        c = int(short[0])
        raise ValueError(
            f"val_per_class={val_per_class} needs that many unused training images per class, but class {c} has "
            f"{spare[c]} left after the long tail (n_max={n_max}); lower n_max or set val_per_class=0"
        )
    return unused[longtail_indices(labels[unused], np.full(num_classes, val_per_class), seed + 1)]


def imbalance_summary(counts: np.ndarray) -> dict:
    """Head count, tail count, their ratio and the total of a count vector."""
    counts = np.asarray(counts)
    return {
        "classes": int(len(counts)),
        "total": int(counts.sum()),
        "head": int(counts.max()),
        "tail": int(counts.min()),
        "imbalance_ratio": float(counts.max() / counts.min()),
    }
