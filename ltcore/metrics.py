"""Evaluation metrics for long-tailed recognition: shot-bucketed accuracy, open-set F-measure, GAP and mAP.

Papers and the evaluation code they inherit
-------------------------------------------
* IEM (Zhu & Yang, CVPR 2020), Sec. 4.1 and Table 4: ImageNet-LT / Places-LT are reported as many / medium /
  few / overall accuracy in a closed-set setting, and many / medium / few / F-measure in an open-set setting.
  The Table 4 header reads "> 100", "<= 100 & > 20", "< 20".
* IEM Sec. 4.1, eq. 17: YouTube-8M is scored with Global Average Precision,
  "GAP = sum_{i=1}^{P} p(i) nabla r(i) ... P is set to 20", plus mean Average Precision.
* RAC (Long et al., CVPR 2022), Sec. 4 (text introducing Table 3): "per-class accuracy bucketed into the few
  (<20), medium (<=100) and many (>100) shot categories"; Sec. 3.1: the test-class distribution "is assumed
  to be sampled from a uniform distribution", i.e. the target is the balanced error (eq. 1).
* Both papers inherit the protocol of OLTR (Liu et al., CVPR 2019, github.com/zhmiao/OpenLongTailRecognition-OLTR)
  and of classifier-balancing (Kang et al., ICLR 2020, github.com/facebookresearch/classifier-balancing).

Shot buckets: two conventions (``SHOT_CONVENTIONS``)
----------------------------------------------------
A class is bucketed by its number of *training* images n.

=========================  ==============  ====================  ==============
convention                 many            medium                few
=========================  ==============  ====================  ==============
"classifier-balancing"     n > 100         20 <= n <= 100        n < 20
"oltr"                     n >= 100        20 < n < 100          n <= 20
=========================  ==============  ====================  ==============

"classifier-balancing" (default) is Kang et al.'s ``shot_acc`` (``> many_shot_thr`` / ``< low_shot_thr`` /
else). It matches RAC's prose and IEM's Table 4 header. Our reading of the exactly-20 case: IEM's header says
medium is "<= 100 & > 20" and few is "< 20", which leaves n == 20 in no bucket; RAC's prose ("few (<20),
medium (<=100)") and Kang et al.'s code both put it in **medium**, so we do too. Under "oltr" (OLTR's
``shot_acc``: ``>= many_shot_thr`` / ``<= low_shot_thr`` / else) n == 20 is **few** and n == 100 is **many**.

Each bucket's accuracy is the mean of the per-class accuracies of the classes in that bucket that have at
least one test sample (both reference codes iterate over ``np.unique(labels)``). A bucket with no such class is
reported as ``nan`` (missing), never 0: classifier-balancing's code substitutes 0 for an empty bucket, which
silently drags averages down. ``overall`` is the mean of per-class accuracies over classes present in the test
set (the balanced accuracy, 1 - RAC eq. 1); on a class-balanced test set it equals plain top-1 accuracy, which
we also report as ``top1``. All accuracies are fractions in [0, 1], not percentages.

Open-set F-measure: two rules (``OPEN_SET_RULES``)
--------------------------------------------------
OLTR's open-set protocol (``run_networks.py``): softmax over the known classes, prediction = argmax, and a
prediction whose max probability is *strictly below* ``open_threshold`` (0.1 in OLTR's configs) becomes -1
("open"). Open-set test images carry label -1. F = 2PR / (P + R) with P = TP / (TP + FP), R = TP / (TP + FN).
Both rules count

* TP: known-class sample (label != -1) predicted as its own class;
* FN: open-set sample (label == -1) predicted as some known class (pred != -1);
* nothing for an open-set sample predicted -1 (a true negative).

They differ in FP:

* "oltr" (default) -- OLTR's ``utils.F_measure`` after its 2020-01-29 update ("We updated the `False Positive`
  calculation in `util.py`", README): FP = every known-class sample that is not a TP, i.e. misclassified as
  another known class **or rejected as -1**.
* "classifier-balancing" -- the rule OLTR used before that update, which Kang et al.'s ``utils.F_measure``
  kept: FP = known-class samples misclassified as another known class; a known-class sample rejected as -1
  counts **nowhere**. Under this rule rejecting a hard known sample is free, so F tends to rise with the
  threshold (observed in OLTR issue #52, two weeks before the update). The OLTR paper's F-measures predate
  the update (README: "The reported F-measure numbers in the paper might be a little bit higher than actual
  numbers"; it re-reports ImageNet-LT F = 44.6 under the new rule). IEM (CVPR 2020) was written before the
  update and its code is unpublished, so the rule behind its Table 4 F-measures is unknown; use
  ``rule="classifier-balancing"`` to compare with numbers of that era.

We compute F as 2 TP / (2 TP + FP + FN), algebraically equal to 2PR / (P + R) (OLTR adds 1e-12 to the
denominator, which changes F by less than 1e-12). It is 0 when TP == 0 and nan when 2 TP + FP + FN == 0
(OLTR's code would divide by zero there). With (N, C) probabilities the threshold is applied first; with
(N,) predictions ``open_threshold`` is not used.

In the open-set columns of IEM Table 4 the many / medium / few accuracies are, as in OLTR's ``eval``, shot
accuracies over the known-class test samples only, with rejected (-1) predictions counted as wrong:
``known_class_shot_accuracy``.

GAP and mAP (YouTube-8M)
------------------------
``gap_at_k`` follows the YouTube-8M starter code (``eval_util.calculate_gap``): keep the top-k scores of every
video, pool them, sort globally by score, and compute non-interpolated AP over that list with the denominator the
total number of positive labels in the whole set (positives outside anyone's top-k still count, so recall can
stay below 1). ``k`` larger than the number of classes is clamped, as in the starter code.
``mean_average_precision`` is per-class AP over the full ranking of the test set, averaged over classes with at
least one positive (sklearn's ``average_precision_score`` per column). Our reading: IEM does not define its
mAP; the YouTube-8M starter code instead keeps only each video's top-k and averages over all classes with 0 for
classes without positives -- pass ``top_k=20`` to get the former restriction; classes without positives are
always skipped here.
Ties in score: we treat tied scores as one threshold (precision measured after the whole tied group, as
sklearn does), so results do not depend on input order; the YouTube-8M code breaks ties by a seeded shuffle.
With continuous scores there are no ties and the definitions coincide.

Taught in notebook 01, *Many, medium and few shots*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch

from ltcore.checks import check_choice, check_float, check_int
from ltcore.data.datasets import OPEN_LABEL

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]

SHOT_CONVENTIONS: tuple[str, ...] = ("classifier-balancing", "oltr")
OPEN_SET_RULES: tuple[str, ...] = ("oltr", "classifier-balancing")
SHOT_GROUPS: tuple[str, ...] = ("many", "medium", "few")


# ----------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------
def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_class_ids(x: ArrayLike, name: str) -> np.ndarray:
    """1-D integer array of class ids; rejects logits/probabilities with a hint."""
    arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of class ids, got shape {tuple(arr.shape)}"
            + ("; for logits use preds_from_logits(logits)" if arr.ndim == 2 else "")
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_same_length(preds: np.ndarray, labels: np.ndarray) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"preds has {len(preds)} entries but labels has {len(labels)}")


def _check_range(arr: np.ndarray, name: str, low: int, high: int) -> None:
    """All values in [low, high)."""
    bad = (arr < low) | (arr >= high)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must lie in [{low}, {high}); found {int(arr[first])} at index {first} "
            f"({int(bad.sum())} value(s) out of range)"
        )


def _as_train_counts(train_counts: ArrayLike) -> np.ndarray:
    counts = _to_numpy(train_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"train_counts must be a non-empty 1-D array (one count per class), got shape {counts.shape}")
    if counts.dtype.kind == "f":
        if not np.all(np.isfinite(counts)) or not np.all(counts == np.round(counts)):
            raise ValueError("train_counts must hold whole numbers of training images")
    elif counts.dtype.kind not in "iu":
        raise ValueError(f"train_counts must be numeric, got dtype {counts.dtype}")
    if (counts < 0).any():
        raise ValueError(f"train_counts must be >= 0, found {counts.min()}")
    return counts.astype(np.int64)


def preds_from_logits(logits: ArrayLike) -> np.ndarray:
    """Predicted class ids from scores. logits: (N, C) logits or probabilities -> (N,) int64 argmax."""
    arr = _to_numpy(logits)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with N, C > 0, got {tuple(arr.shape)}")
    return arr.argmax(axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Closed-set accuracy
# ----------------------------------------------------------------------------------------------------------
def top1_accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples whose predicted class id equals the label. preds, labels: (N,) int, labels >= 0
    (for open-set test sets with label -1 use ``open_set_f_measure`` / ``known_class_shot_accuracy``)."""
    preds_np, labels_np = _as_class_ids(preds, "preds"), _as_class_ids(labels, "labels")
    _check_same_length(preds_np, labels_np)
    if labels_np.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(labels_np.min())}; for open-set labels (-1) use "
                         "open_set_f_measure / known_class_shot_accuracy")
    return float((preds_np == labels_np).mean())


def per_class_accuracy(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Recall of every class. preds, labels: (N,) int -> (num_classes,) float64, nan for a class with no test
    sample. A prediction of -1 (rejected) is allowed and counts as wrong."""
    num_classes = check_int("num_classes", num_classes, 1)
    preds_np, labels_np = _as_class_ids(preds, "preds"), _as_class_ids(labels, "labels")
    _check_same_length(preds_np, labels_np)
    _check_range(labels_np, "labels", 0, int(num_classes))
    _check_range(preds_np, "preds", OPEN_LABEL, int(num_classes))
    test_counts = np.bincount(labels_np, minlength=num_classes)  # (C,)
    correct = np.bincount(labels_np, weights=(preds_np == labels_np), minlength=num_classes)  # (C,)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = correct / test_counts
    acc[test_counts == 0] = np.nan
    return acc


def shot_groups(
    train_counts: ArrayLike, many_thr: int = 100, few_thr: int = 20, convention: str = "classifier-balancing"
) -> np.ndarray:
    """Bucket of every class by its training count. train_counts: (C,) -> (C,) array of "many"/"medium"/"few".

    See the module docstring for the two conventions and where counts of exactly ``few_thr`` / ``many_thr`` go.
    """
    check_choice("convention", convention, SHOT_CONVENTIONS)
    many_thr, few_thr = check_int("many_thr", many_thr, 0), check_int("few_thr", few_thr, 0)
    if few_thr >= many_thr:
        raise ValueError(f"few_thr ({few_thr}) must be smaller than many_thr ({many_thr})")
    counts = _as_train_counts(train_counts)
    if convention == "classifier-balancing":
        is_many, is_few = counts > many_thr, counts < few_thr
    else:  # "oltr"
        is_many, is_few = counts >= many_thr, counts <= few_thr
    groups = np.full(counts.shape, "medium", dtype=object)
    groups[is_many] = "many"
    groups[is_few] = "few"
    return groups


@dataclass(frozen=True, eq=False)  # eq=False: per_class is an array
class ShotAccuracy:
    """Many / medium / few / overall accuracy (fractions in [0, 1]; nan = bucket has no class in the test set).

    Usable both as attributes (``res.many``) and as a mapping (``res["many"]``, ``dict(res)``);
    ``as_row()`` gives the scalar columns for a results table.
    """

    many: float
    medium: float
    few: float
    overall: float  # mean per-class accuracy over classes present in the test set
    top1: float  # sample-averaged accuracy (equals overall on a class-balanced test set)
    per_class: np.ndarray = field(repr=False)  # (C,), nan for classes with no test sample
    classes_per_group: dict[str, int] = field(default_factory=dict)  # bucket -> classes present in the test set
    convention: str = "classifier-balancing"

    def keys(self) -> tuple[str, ...]:
        return ("many", "medium", "few", "overall", "top1", "per_class")

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(f"{key!r}; valid keys: {', '.join(self.keys())}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def as_row(self, prefix: str = "") -> dict[str, float]:
        """Scalar columns {prefix+"many": ..., "medium", "few", "overall", "top1"} for a results table."""
        return {prefix + key: float(getattr(self, key)) for key in ("many", "medium", "few", "overall", "top1")}


def _nanmean_or_nan(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def shot_accuracy(
    preds: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    many_thr: int = 100,
    few_thr: int = 20,
    convention: str = "classifier-balancing",
) -> ShotAccuracy:
    """Class-averaged accuracy per shot bucket (IEM Table 4, RAC Table 3).

    preds: (N,) predicted class ids (-1 = rejected, counts as wrong); labels: (N,) in [0, C);
    train_counts: (C,) training images per class. Buckets follow ``convention`` (module docstring).
    """
    groups = shot_groups(train_counts, many_thr=many_thr, few_thr=few_thr, convention=convention)  # (C,)
    num_classes = len(groups)
    acc = per_class_accuracy(preds, labels, num_classes)  # (C,)
    present = ~np.isnan(acc)
    return ShotAccuracy(
        many=_nanmean_or_nan(acc[groups == "many"]),
        medium=_nanmean_or_nan(acc[groups == "medium"]),
        few=_nanmean_or_nan(acc[groups == "few"]),
        overall=_nanmean_or_nan(acc),
        top1=top1_accuracy(preds, labels),
        per_class=acc,
        classes_per_group={g: int((present & (groups == g)).sum()) for g in SHOT_GROUPS},
        convention=convention,
    )


# ----------------------------------------------------------------------------------------------------------
# Open set (OLTR protocol)
# ----------------------------------------------------------------------------------------------------------
def open_set_predictions(scores: ArrayLike, open_threshold: float = 0.1, from_logits: bool = False,
                         normalized: bool = True) -> np.ndarray:
    """OLTR thresholding. scores: (N, C) softmax probabilities (or logits with ``from_logits=True``) ->
    (N,) int64 argmax class, or -1 where the max probability is strictly below ``open_threshold``.

    ``normalized=False`` accepts any finite per-class scores, thresholded as they are (IEM's average of the
    classifier's probabilities and the memory scores, which are not clamped to [0, 1]: :mod:`ltcore.iem.model`)."""
    arr = _to_numpy(scores).astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"scores must have shape (N, C) with N, C > 0, got {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores must be finite (they contain nan or inf)")
    open_threshold = check_float("open_threshold", open_threshold, 0.0, 1.0)
    if from_logits:
        arr = torch.softmax(torch.from_numpy(arr), dim=1).numpy()
    elif normalized and (arr.min() < 0 or arr.max() > 1 or not np.allclose(arr.sum(axis=1), 1.0, atol=1e-3)):
        raise ValueError(
            "scores are not probabilities (rows must be in [0, 1] and sum to 1); "
            "pass from_logits=True for logits, normalized=False for other per-class scores"
        )
    preds = arr.argmax(axis=1).astype(np.int64)
    preds[arr.max(axis=1) < open_threshold] = OPEN_LABEL
    return preds


def _open_set_preds_and_labels(
    preds_or_probs: ArrayLike, labels: ArrayLike, open_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) preds with -1 = rejected, (N,) labels with -1 = open-set sample; validated."""
    arr = _to_numpy(preds_or_probs)
    labels_np = _as_class_ids(labels, "labels")
    if arr.ndim == 2:
        preds = open_set_predictions(arr, open_threshold=open_threshold)
        high = arr.shape[1]
    else:
        preds = _as_class_ids(arr, "preds_or_probs")
        high = None
    _check_same_length(preds, labels_np)
    if high is None:  # number of classes unknown: only the lower bound can be checked
        high = int(max(preds.max(), labels_np.max())) + 1
    _check_range(labels_np, "labels", OPEN_LABEL, high)
    _check_range(preds, "preds_or_probs", OPEN_LABEL, high)
    return preds, labels_np


@dataclass(frozen=True)
class OpenSetCounts:
    """Counts behind the open-set F-measure (see module docstring for what each rule counts)."""

    true_pos: int
    false_pos: int
    false_neg: int
    precision: float
    recall: float
    f_measure: float
    rule: str


def open_set_counts(
    preds_or_probs: ArrayLike, labels: ArrayLike, rule: str = "oltr", open_threshold: float = 0.1
) -> OpenSetCounts:
    """TP / FP / FN, precision, recall and F-measure of OLTR's open-set protocol.

    preds_or_probs: (N,) predicted ids with -1 = rejected, or (N, C) softmax probabilities which are thresholded
    with ``open_threshold`` (``open_set_predictions``). labels: (N,) with -1 for open-set samples.
    """
    check_choice("rule", rule, OPEN_SET_RULES)
    preds, labels_np = _open_set_preds_and_labels(preds_or_probs, labels, open_threshold)
    known, open_ = labels_np != OPEN_LABEL, labels_np == OPEN_LABEL
    correct = preds == labels_np
    true_pos = int((known & correct).sum())
    false_neg = int((open_ & (preds != OPEN_LABEL)).sum())
    wrong_known = known & ~correct
    if rule == "classifier-balancing":
        wrong_known &= preds != OPEN_LABEL  # a rejected known-class sample is not counted
    false_pos = int(wrong_known.sum())
    nan = float("nan")
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else nan
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else nan
    denominator = 2 * true_pos + false_pos + false_neg
    f_measure = 2 * true_pos / denominator if denominator else nan
    return OpenSetCounts(true_pos, false_pos, false_neg, precision, recall, f_measure, rule)


def open_set_f_measure(
    preds_or_probs: ArrayLike, labels: ArrayLike, rule: str = "oltr", open_threshold: float = 0.1
) -> float:
    """Open-set F-measure 2PR/(P+R) (OLTR; IEM Table 4 "F-measure" column). See ``open_set_counts``."""
    return open_set_counts(preds_or_probs, labels, rule=rule, open_threshold=open_threshold).f_measure


def known_class_shot_accuracy(
    preds_or_probs: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    open_threshold: float = 0.1,
    many_thr: int = 100,
    few_thr: int = 20,
    convention: str = "classifier-balancing",
) -> ShotAccuracy:
    """Shot accuracies over the known-class samples (label != -1) of an open-set test set, with rejected (-1)
    predictions counted as wrong: the many / medium / few columns of IEM Table 4's open-set setting (OLTR
    ``eval(openset=True)``). Arguments as ``open_set_counts`` and ``shot_accuracy``."""
    preds, labels_np = _open_set_preds_and_labels(preds_or_probs, labels, open_threshold)
    known = labels_np != OPEN_LABEL
    if not known.any():
        raise ValueError("labels contain no known-class sample (all are -1)")
    return shot_accuracy(
        preds[known], labels_np[known], train_counts, many_thr=many_thr, few_thr=few_thr, convention=convention
    )


# ----------------------------------------------------------------------------------------------------------
# Multi-label ranking metrics (YouTube-8M)
# ----------------------------------------------------------------------------------------------------------
def _scores_and_targets(scores: ArrayLike, labels_multi_hot: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores).astype(np.float64)
    y = _to_numpy(labels_multi_hot)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must have shape (N, C) with N, C > 0, got {tuple(s.shape)}")
    if y.shape != s.shape:
        raise ValueError(f"labels_multi_hot has shape {tuple(y.shape)} but scores has {tuple(s.shape)}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain nan or inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels_multi_hot must contain only 0/1 (or booleans)")
    return s, y.astype(bool)


def average_precision(scores: np.ndarray, is_positive: np.ndarray, num_positives: int) -> float:
    """Non-interpolated AP of a ranked list: sum over distinct score thresholds of precision x recall gain.

    scores, is_positive: (M,) the retrieved items; num_positives: all positives, retrieved or not (recall
    denominator). Tied scores form one threshold. nan when num_positives == 0; 0 when nothing was retrieved.
    """
    if num_positives <= 0:
        return float("nan")
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], is_positive[order].astype(np.float64)  # (M,), (M,)
    cum_hits = np.cumsum(hits)  # true positives among the first i+1 items
    # last index of each group of tied scores: where the next score differs, plus the end of the list
    group_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    tp_at_end = cum_hits[group_ends]
    precision = tp_at_end / (group_ends + 1)
    recall_gain = np.diff(np.r_[0.0, tp_at_end]) / num_positives
    return float(np.sum(precision * recall_gain))


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, C) bool, True at each row's k highest scores (ties broken towards the lower class index)."""
    k = min(k, scores.shape[1])
    top_idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top_idx, True, axis=1)
    return mask


def gap_at_k(scores: ArrayLike, labels_multi_hot: ArrayLike, k: int = 20) -> float:
    """YouTube-8M Global Average Precision (IEM eq. 17, P = k = 20).

    scores, labels_multi_hot: (N, C). The top-k scores of every video are pooled into one list of N*k
    (class, score) predictions, sorted globally, and AP is computed with the total number of positive labels
    as recall denominator. nan if there is no positive label at all.
    """
    k = check_int("k", k, 1)
    s, y = _scores_and_targets(scores, labels_multi_hot)
    kept = _top_k_mask(s, k)  # (N, C)
    return average_precision(s[kept], y[kept], int(y.sum()))  # boolean indexing flattens to (N*k,)


def mean_average_precision(scores: ArrayLike, labels_multi_hot: ArrayLike, top_k: int | None = None) -> float:
    """Mean over classes with at least one positive of the per-class AP. scores, labels_multi_hot: (N, C).

    ``top_k=None`` ranks all N videos per class (sklearn ``average_precision_score`` per column);
    ``top_k=k`` keeps only each video's top-k scores, as the YouTube-8M starter code does, while the
    recall denominator stays the class's total positives. nan if no class has a positive.
    """
    s, y = _scores_and_targets(scores, labels_multi_hot)
    if top_k is not None:
        top_k = check_int("top_k", top_k, 1)
    kept = _top_k_mask(s, top_k) if top_k is not None else np.ones_like(y)  # (N, C)
    aps = [
        average_precision(s[kept[:, c], c], y[kept[:, c], c], int(y[:, c].sum()))
        for c in range(s.shape[1])
        if y[:, c].any()
    ]
    return float(np.mean(aps)) if aps else float("nan")
