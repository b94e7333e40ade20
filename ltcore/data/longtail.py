"""Long-tailed subsampling of a balanced labelled dataset, the LDAM-DRW way.

Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
Loss", NeurIPS 2019, build CIFAR-10/100-LT by keeping, for class ``i`` of ``C``,
``int(n_max * imbalance_ratio ** (-i / (C - 1)))`` images ("exp" profile) or
half the classes at ``n_max`` and half at ``n_max / imbalance_ratio`` ("step").
The many / medium / few groups used by both papers are defined on these counts
(see :mod:`ltcore.metrics`).

Which class is the head is an accident of the class ids. :func:`permuted_longtail_split`
hands the counts to the classes in a seeded permuted order, so paired runs (issue 11: one
run = one seed and one permutation) measure a method over several head/tail assignments
while every run draws its images from the same fixed pool.

Taught in notebook 01, *How the standard benchmarks are built*.
"""
from __future__ import annotations

from typing import NamedTuple

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


class PermutedSplit(NamedTuple):
    """One long-tailed train/validation split of :func:`permuted_longtail_split` (indices into its ``labels``)."""

    train: np.ndarray  # int64, sorted: class c keeps class_counts[c] images
    val: np.ndarray  # int64, sorted: val_per_class images per class, never in any permutation's train
    class_counts: np.ndarray  # [C] training images of class id c
    rank_of_class: np.ndarray  # [C] the frequency rank class c takes (0 = head)
    permutation: int
    pool: np.ndarray  # int64, sorted: every index any permutation trains or validates on


def rank_permutation(n_classes: int, permutation: int) -> np.ndarray:
    """The frequency rank of each class id under ``permutation``: 0 is the identity (class c takes rank c, as
    :func:`longtail_counts` orders them), p > 0 is ``np.random.default_rng(p).permutation(n_classes)``."""
    n_classes = check_int("n_classes", n_classes, low=1)
    permutation = check_int("permutation", permutation, low=0)
    if permutation == 0:
        return np.arange(n_classes, dtype=np.int64)
    return np.random.default_rng(permutation).permutation(n_classes).astype(np.int64)


def permuted_longtail_split(labels: np.ndarray, counts_by_rank: np.ndarray, permutation: int, val_per_class: int,
                            n_max: int | None = None, data_seed: int = 0) -> PermutedSplit:
    """A long-tailed train split whose class-to-rank assignment is permuted, and a balanced validation split.

    labels:         class ids in ``[0, C)`` of a balanced pool of images (e.g. Fashion-MNIST's training split),
                    C = ``len(counts_by_rank)``.
    counts_by_rank: the training count of each frequency rank, head first (:func:`longtail_counts`).
    permutation:    which class takes which rank (:func:`rank_permutation`): class c takes
                    ``counts_by_rank[rank_of_class[c]]`` images.
    val_per_class:  validation images per class.
    n_max:          the most training images any class can take under any permutation (default: the largest
                    count); validation is taken beyond it.
    data_seed:      orders each class's images, the same order for every permutation.

    Each class's images are put in a fixed order, drawn by ``np.random.default_rng(data_seed)`` class after
    class as :func:`longtail_indices` does (so permutation 0 trains on exactly ``longtail_indices(labels,
    counts_by_rank, data_seed)``). A class trains on the first ``class_counts[c]`` of its order and validates
    on positions ``n_max .. n_max + val_per_class - 1``, which no permutation ever trains on. The pool is the
    first ``n_max + val_per_class`` of every class: features extracted once for the pool serve every run.
    """
    labels = np.asarray(labels)
    counts_by_rank = np.asarray(counts_by_rank)
    n_classes = len(counts_by_rank)
    if counts_by_rank.ndim != 1 or n_classes < 2 or not np.issubdtype(counts_by_rank.dtype, np.integer) \
            or (counts_by_rank < 1).any():
        raise ValueError(f"counts_by_rank must be integers >= 1 for at least 2 ranks, got {counts_by_rank.tolist()}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0 \
            or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be a non-empty 1-d array of integer class ids in [0, {n_classes}) "
                         f"(one per rank of counts_by_rank), got {labels.dtype} {labels.shape}")
    val_per_class = check_int("val_per_class", val_per_class, low=0)
    largest = int(counts_by_rank.max())
    n_max = largest if n_max is None else check_int("n_max", n_max, low=largest)
    data_seed = check_int("data_seed", data_seed, low=0)
    rank_of_class = rank_permutation(n_classes, permutation)
    class_counts = counts_by_rank[rank_of_class].astype(np.int64)

    rng = np.random.default_rng(data_seed)
    train, val, pool = [], [], []
    for c in range(n_classes):
        order = rng.permutation(np.flatnonzero(labels == c))  # the same for every permutation
        if len(order) < n_max + val_per_class:
            raise ValueError(f"class {c} has {len(order)} images, but n_max={n_max} training and "
                             f"val_per_class={val_per_class} validation images need {n_max + val_per_class}")
        train.append(order[: class_counts[c]])
        val.append(order[n_max : n_max + val_per_class])
        pool.append(order[: n_max + val_per_class])
    return PermutedSplit(
        train=np.sort(np.concatenate(train)).astype(np.int64),
        val=np.sort(np.concatenate(val)).astype(np.int64),
        class_counts=class_counts,
        rank_of_class=rank_of_class,
        permutation=int(permutation),
        pool=np.sort(np.concatenate(pool)).astype(np.int64),
    )
