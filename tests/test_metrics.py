"""Tests for ltcore.metrics: hand-computed cases, boundary conventions, and slow reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltcore.metrics import (
    OPEN_SET_RULES,
    SHOT_CONVENTIONS,
    average_precision,
    gap_at_k,
    known_class_shot_accuracy,
    mean_average_precision,
    open_set_counts,
    open_set_f_measure,
    open_set_predictions,
    per_class_accuracy,
    preds_from_logits,
    shot_accuracy,
    shot_groups,
    top1_accuracy,
)


# ----------------------------------------------------------------------------------------------------------
# Top-1 and per-class accuracy
# ----------------------------------------------------------------------------------------------------------
def test_top1_and_per_class_accept_numpy_and_torch():
    preds, labels = [0, 1, 1, 2, 0, 2], [0, 1, 2, 2, 0, 0]
    for to in (np.array, torch.tensor):
        assert top1_accuracy(to(preds), to(labels)) == pytest.approx(4 / 6)
        acc = per_class_accuracy(to(preds), to(labels), num_classes=4)
        np.testing.assert_allclose(acc[:3], [2 / 3, 1.0, 0.5])
        assert math.isnan(acc[3])  # class 3 has no test sample


def test_preds_from_logits():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert preds_from_logits(logits).tolist() == [1, 0]
    with pytest.raises(ValueError, match="preds_from_logits"):
        top1_accuracy(logits, [1, 0])
    with pytest.raises(ValueError, match="labels must be >= 0"):
        top1_accuracy([1, 0], [1, -1])


# ----------------------------------------------------------------------------------------------------------
# Shot buckets
# ----------------------------------------------------------------------------------------------------------
BOUNDARY_COUNTS = [101, 100, 50, 21, 20, 19]
# two test samples per class; per-class accuracy 1, .5, 0, 1, .5, 0
BOUNDARY_LABELS = np.repeat(np.arange(6), 2)
BOUNDARY_PREDS = np.array([0, 0, 1, 0, 0, 0, 3, 3, 4, 0, 0, 0])


def test_shot_groups_boundaries_per_convention():
    cb = shot_groups(BOUNDARY_COUNTS, convention="classifier-balancing").tolist()
    assert cb == ["many", "medium", "medium", "medium", "medium", "few"]  # 100 and 20 are medium
    oltr = shot_groups(BOUNDARY_COUNTS, convention="oltr").tolist()
    assert oltr == ["many", "many", "medium", "medium", "few", "few"]  # 100 is many, 20 is few


def test_shot_accuracy_hand_computed_both_conventions():
    np.testing.assert_allclose(
        per_class_accuracy(BOUNDARY_PREDS, BOUNDARY_LABELS, 6), [1, 0.5, 0, 1, 0.5, 0]
    )
    cb = shot_accuracy(BOUNDARY_PREDS, BOUNDARY_LABELS, BOUNDARY_COUNTS)
    assert (cb.many, cb.medium, cb.few) == pytest.approx((1.0, 0.5, 0.0))
    assert cb.classes_per_group == {"many": 1, "medium": 4, "few": 1}
    oltr = shot_accuracy(BOUNDARY_PREDS, BOUNDARY_LABELS, BOUNDARY_COUNTS, convention="oltr")
    assert (oltr.many, oltr.medium, oltr.few) == pytest.approx((0.75, 0.5, 0.25))
    for res in (cb, oltr):
        assert res.overall == pytest.approx(0.5)
        assert res.top1 == pytest.approx(0.5)  # balanced test set: overall == top-1


def test_shot_accuracy_thresholds_are_parameters():
    res = shot_accuracy(BOUNDARY_PREDS, BOUNDARY_LABELS, BOUNDARY_COUNTS, many_thr=50, few_thr=21)
    # many: n > 50 -> {101, 100}; few: n < 21 -> {20, 19}; medium: {50, 21}
    assert (res.many, res.medium, res.few) == pytest.approx((0.75, 0.5, 0.25))


def test_overall_is_class_mean_not_sample_mean():
    # class 0: 4 test samples all right; class 1: 1 test sample wrong
    res = shot_accuracy([0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [500, 5])
    assert res.overall == pytest.approx(0.5)
    assert res.top1 == pytest.approx(0.8)


def test_empty_bucket_is_nan_and_absent_classes_are_skipped():
    # class 2 (medium) has no test sample, so the medium bucket is empty
    res = shot_accuracy([0, 1, 1], [0, 1, 1], [500, 5, 50])
    assert res.many == 1.0 and res.few == 1.0
    assert math.isnan(res.medium)
    assert res.classes_per_group == {"many": 1, "medium": 0, "few": 1}
    assert math.isnan(res.per_class[2])
    assert res.overall == 1.0


def test_shot_accuracy_result_is_row_and_mapping():
    res = shot_accuracy(BOUNDARY_PREDS, BOUNDARY_LABELS, BOUNDARY_COUNTS)
    assert res["many"] == res.many
    assert set(dict(res)) == {"many", "medium", "few", "overall", "top1", "per_class"}
    row = res.as_row(prefix="val_")
    assert row == {"val_many": 1.0, "val_medium": 0.5, "val_few": 0.0, "val_overall": 0.5, "val_top1": 0.5}
    with pytest.raises(KeyError, match="valid keys"):
        res["median"]


def test_shot_accuracy_errors():
    with pytest.raises(ValueError, match=r"convention must be one of \['classifier-balancing', 'oltr'\], got 'kang'"):
        shot_accuracy([0], [0], [5], convention="kang")
    with pytest.raises(ValueError, match="preds has 2 entries but labels has 3"):
        shot_accuracy([0, 1], [0, 1, 1], [5, 5])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\); found 2 at index 1"):
        shot_accuracy([0, 1], [0, 2], [5, 5])
    with pytest.raises(ValueError, match="labels must lie in"):
        shot_accuracy([0, 1], [0, -1], [5, 5])
    with pytest.raises(ValueError, match="preds must lie in"):
        shot_accuracy([0, 7], [0, 1], [5, 5])
    with pytest.raises(ValueError, match="train_counts must be >= 0"):
        shot_accuracy([0], [0], [-5])
    with pytest.raises(ValueError, match="few_thr"):
        shot_accuracy([0], [0], [5], many_thr=20, few_thr=20)
    assert SHOT_CONVENTIONS == ("classifier-balancing", "oltr")


# ----------------------------------------------------------------------------------------------------------
# Open set
# ----------------------------------------------------------------------------------------------------------
def reference_f_measure(preds, labels, rule):
    """Loop over samples counting TP / FP / FN as described for each rule in the module docstring."""
    tp = fp = fn = 0
    for p, y in zip(preds, labels):
        if y != -1 and p == y:
            tp += 1
        elif y != -1 and p != y and (rule == "oltr" or p != -1):
            fp += 1
        elif y == -1 and p != -1:
            fn += 1
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


# (label, pred): TP, TP, known->other known, known rejected, open accepted, open rejected, open accepted
OPEN_LABELS = np.array([0, 1, 2, 3, -1, -1, -1])
OPEN_PREDS = np.array([0, 1, 1, -1, 2, -1, 0])


def test_open_set_counts_hand_computed():
    oltr = open_set_counts(OPEN_PREDS, OPEN_LABELS, rule="oltr")
    assert (oltr.true_pos, oltr.false_pos, oltr.false_neg) == (2, 2, 2)
    assert oltr.f_measure == pytest.approx(0.5)
    cb = open_set_counts(OPEN_PREDS, OPEN_LABELS, rule="classifier-balancing")
    assert (cb.true_pos, cb.false_pos, cb.false_neg) == (2, 1, 2)  # the rejected known sample is not an FP
    assert (cb.precision, cb.recall) == pytest.approx((2 / 3, 0.5))
    assert cb.f_measure == pytest.approx(4 / 7)
    assert open_set_f_measure(torch.tensor(OPEN_PREDS), torch.tensor(OPEN_LABELS)) == pytest.approx(0.5)


def test_open_set_f_measure_matches_loop_reference_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 6, size=500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(-1, 6, size=500))
    for rule in OPEN_SET_RULES:
        assert open_set_f_measure(preds, labels, rule=rule) == pytest.approx(reference_f_measure(preds, labels, rule))


def test_open_set_thresholding_is_strict_and_applied_to_probs():
    probs = np.array([
        [0.7, 0.2, 0.1],
        [0.09, 0.0, 0.91],
    ])
    uniform_10 = np.full((1, 10), 0.1)  # max == threshold: kept, as OLTR rejects only probs < threshold
    assert open_set_predictions(probs, open_threshold=0.8).tolist() == [-1, 2]
    assert open_set_predictions(uniform_10, open_threshold=0.1).tolist() == [0]
    logits = torch.log(torch.tensor(probs))
    assert open_set_predictions(logits.clamp_min(-50), open_threshold=0.8, from_logits=True).tolist() == [-1, 2]
    f_from_probs = open_set_f_measure(probs, [0, -1], open_threshold=0.8)  # preds [-1, 2]: tp 0 -> F = 0
    assert f_from_probs == 0.0
    with pytest.raises(ValueError, match="from_logits=True"):
        open_set_predictions(np.array([[2.0, -1.0]]))


def test_open_set_errors():
    with pytest.raises(ValueError, match=r"rule must be one of \['classifier-balancing', 'oltr'\], got 'f1'"):
        open_set_f_measure(OPEN_PREDS, OPEN_LABELS, rule="f1")
    with pytest.raises(ValueError, match="labels must lie in"):
        open_set_f_measure([0, 1], [0, -2])
    with pytest.raises(ValueError, match="preds has 2 entries but labels has 1"):
        open_set_f_measure([0, 1], [0])


def test_known_class_shot_accuracy_counts_rejections_as_wrong():
    probs = np.array([
        [0.9, 0.05, 0.05],  # label 0 -> 0 correct
        [0.4, 0.35, 0.25],  # label 1 -> rejected at 0.5
        [0.1, 0.8, 0.1],  # label 1 -> 1 correct
        [0.2, 0.2, 0.6],  # label 2 -> 2 correct
        [0.3, 0.3, 0.4],  # open sample, ignored
    ])
    labels = np.array([0, 1, 1, 2, -1])
    res = known_class_shot_accuracy(probs, labels, [500, 50, 5], open_threshold=0.5)
    assert (res.many, res.medium, res.few) == pytest.approx((1.0, 0.5, 1.0))
    closed = shot_accuracy(preds_from_logits(probs[:4]), labels[:4], [500, 50, 5])
    assert closed.medium == 0.5  # [0.4, 0.35, 0.25] argmax is 0: wrong either way
    with pytest.raises(ValueError, match="no known-class sample"):
        known_class_shot_accuracy([0, 1], [-1, -1], [5, 5])


# ----------------------------------------------------------------------------------------------------------
# GAP and mAP
# ----------------------------------------------------------------------------------------------------------
TINY_SCORES = np.array([[0.9, 0.1, 0.5], [0.3, 0.8, 0.2]])
TINY_LABELS = np.array([[1, 0, 1], [1, 0, 1]])


def slow_gap(scores, labels, k):
    """YouTube-8M GAP written as a plain loop: pool each video's top-k, sort globally, AP / all positives."""
    pooled = []
    for row_scores, row_labels in zip(scores, labels):
        ranked = sorted(range(len(row_scores)), key=lambda c: -row_scores[c])[:k]
        pooled += [(row_scores[c], row_labels[c]) for c in ranked]
    pooled.sort(key=lambda item: -item[0])
    total_positives, hits, ap = labels.sum(), 0, 0.0
    for rank, (_, is_positive) in enumerate(pooled, start=1):
        if is_positive:
            hits += 1
            ap += hits / rank / total_positives
    return ap


def test_gap_hand_computed():
    # k=2 pooled list: 0.9 (+), 0.8 (-), 0.5 (+), 0.3 (+); 4 positives -> (1 + 2/3 + 3/4) / 4
    assert gap_at_k(TINY_SCORES, TINY_LABELS, k=2) == pytest.approx(29 / 48)
    # k=3 adds 0.2 (+) and 0.1 (-): (1 + 2/3 + 3/4 + 4/5) / 4
    assert gap_at_k(TINY_SCORES, TINY_LABELS, k=3) == pytest.approx(193 / 240)
    assert gap_at_k(TINY_SCORES, TINY_LABELS, k=20) == pytest.approx(193 / 240)  # k clamped to C
    # k=1: 0.9 (+), 0.8 (-): 1 / 4
    assert gap_at_k(torch.tensor(TINY_SCORES), torch.tensor(TINY_LABELS), k=1) == pytest.approx(0.25)


def test_gap_matches_slow_reference_on_random_data():
    rng = np.random.default_rng(1)
    scores = rng.random((40, 30))
    labels = (rng.random((40, 30)) < 0.1).astype(int)
    for k in (1, 5, 20):
        assert gap_at_k(scores, labels, k=k) == pytest.approx(slow_gap(scores, labels, k), rel=1e-12)
    perm = rng.permutation(40)
    assert gap_at_k(scores[perm], labels[perm]) == pytest.approx(gap_at_k(scores, labels))


def test_average_precision_groups_ties():
    # two tied items, one positive: precision after the tied group is 1/2, whichever order they come in
    assert average_precision(np.array([0.5, 0.5]), np.array([True, False]), 1) == 0.5
    assert average_precision(np.array([0.5, 0.5]), np.array([False, True]), 1) == 0.5
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_map_hand_computed():
    # class 0: ranking 0.9 (+), 0.3 (+) -> AP 1; class 1: no positive, skipped;
    # class 2: ranking 0.5 (+), 0.2 (+) -> AP 1
    assert mean_average_precision(TINY_SCORES, TINY_LABELS) == pytest.approx(1.0)
    labels = np.array([[0, 0, 1], [1, 0, 0]])
    # class 0: 0.9 (-), 0.3 (+) -> 1/2; class 2: 0.5 (+), 0.2 (-) -> 1
    assert mean_average_precision(TINY_SCORES, labels) == pytest.approx(0.75)
    # top_k=1 keeps (v0, c0) and (v1, c1): class 0 list [0.9 (-)] -> 0; class 2 keeps nothing -> 0
    assert mean_average_precision(TINY_SCORES, labels, top_k=1) == pytest.approx(0.0)


def test_map_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    scores = rng.random((60, 12))
    labels = (rng.random((60, 12)) < 0.15).astype(int)
    labels[:, 3] = 0  # a class without positives is skipped
    present = labels.sum(0) > 0
    expected = np.mean([
        sklearn_metrics.average_precision_score(labels[:, c], scores[:, c]) for c in np.flatnonzero(present)
    ])
    assert mean_average_precision(scores, labels) == pytest.approx(expected, rel=1e-12)
    # with top_k = C every score is kept
    assert mean_average_precision(scores, labels, top_k=12) == pytest.approx(expected, rel=1e-12)


def test_gap_map_errors_and_empty():
    with pytest.raises(ValueError, match="labels_multi_hot has shape"):
        gap_at_k(TINY_SCORES, TINY_LABELS[:1])
    with pytest.raises(ValueError, match="only 0/1"):
        gap_at_k(TINY_SCORES, TINY_LABELS * 2)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        gap_at_k(TINY_SCORES, TINY_LABELS, k=0)
    assert math.isnan(gap_at_k(TINY_SCORES, np.zeros_like(TINY_LABELS)))
    assert math.isnan(mean_average_precision(TINY_SCORES, np.zeros_like(TINY_LABELS)))


@pytest.mark.parametrize("call, says", [
    (lambda: per_class_accuracy([0], [0], 0), "num_classes must be an integer >= 1, got 0"),
    (lambda: per_class_accuracy([0], [0], 2.0), "num_classes must be an integer >= 1, got 2.0"),
    (lambda: open_set_predictions(np.array([[0.5, 0.5]]), open_threshold=1.5),
     r"open_threshold must be a finite number in \[0.0, 1.0\], got 1.5"),
    (lambda: open_set_predictions(np.array([[0.5, 0.5]]), open_threshold=float("nan")),
     "open_threshold must be a finite number"),
    (lambda: mean_average_precision(TINY_SCORES, TINY_LABELS, top_k=True), "top_k must be an integer >= 1, got True"),
])
def test_argument_errors_name_the_argument(call, says):
    with pytest.raises(ValueError, match=says):
        call()


@pytest.mark.hostile
@pytest.mark.parametrize("thresholds", [dict(many_thr=float("nan")), dict(few_thr=float("inf")), dict(few_thr=20.5)])
def test_shot_thresholds_must_be_whole_numbers(thresholds):
    with pytest.raises(ValueError, match="_thr must be an integer >= 0"):
        shot_groups([5, 50, 500], **thresholds)
