"""Tests of ltcore.rac.retrieval_eval: 1-NN retrieval accuracy (RAC Sec. 4.4, Table 4) and exact vs HNSW recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltcore.data.datasets import ArrayDataset, LTSplits
from ltcore.metrics import shot_accuracy
from ltcore.rac.image_encoders import build_image_encoder
from ltcore.rac.retrieval_eval import (
    compare_exact_hnsw,
    evaluate_encoder,
    knn_accuracy,
    nearest_neighbour_labels,
    recall_at_k,
)


def brute_force_1nn(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Row of the nearest key (squared l2) for every query: [Q]."""
    distances = ((queries[:, None, :] - keys[None, :, :]) ** 2).sum(-1)  # (Q, 1, D) - (1, N, D) -> (Q, N)
    return distances.argmin(axis=1)


# --------------------------------------------------------------------------------------------------- 1-NN
def test_nearest_neighbour_labels_hand_case():
    keys = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    labels = np.array([2, 0, 1])
    queries = np.array([[9.0, 1.0], [1.0, 1.0], [0.0, 7.0], [4.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(nearest_neighbour_labels(keys, labels, queries), [0, 2, 1, 2])


def test_stored_keys_retrieve_their_own_labels():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 5, size=300)
    for kind in ("flat", "hnsw"):
        np.testing.assert_array_equal(nearest_neighbour_labels(keys, labels, keys, index_kind=kind), labels)


def test_l2_and_cosine_differ_where_norms_matter():
    # The query is closest in l2 to the short key, but points exactly along the long key.
    keys = np.array([[1.0, 1.0], [10.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 1])
    query = np.array([[2.0, 0.0]], dtype=np.float32)
    assert nearest_neighbour_labels(keys, labels, query, metric="l2")[0] == 0
    assert nearest_neighbour_labels(keys, labels, query, metric="cosine")[0] == 1


def test_knn_accuracy_matches_brute_force_and_shot_groups():
    rng = np.random.default_rng(1)
    class_counts = np.array([150, 60, 10])  # many, medium, few
    centres = rng.normal(scale=2.0, size=(3, 6))
    train_labels = np.repeat(np.arange(3), class_counts)
    train = (centres[train_labels] + rng.normal(size=(len(train_labels), 6))).astype(np.float32)
    test_labels = np.repeat(np.arange(3), 40)
    test = (centres[test_labels] + rng.normal(size=(len(test_labels), 6))).astype(np.float32)

    shots = knn_accuracy(train, train_labels, test, test_labels, class_counts)
    predictions = train_labels[brute_force_1nn(train, test)]
    per_class = [(predictions[test_labels == c] == c).mean() for c in range(3)]
    assert shots.many == pytest.approx(per_class[0])
    assert shots.medium == pytest.approx(per_class[1])
    assert shots.few == pytest.approx(per_class[2])
    assert shots.overall == pytest.approx(np.mean(per_class))
    assert 0.0 < shots.overall < 1.0  # the case is neither trivial nor hopeless


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros(4), np.zeros(4, int), np.zeros((2, 1))), "train_embeddings must be a non-empty 2-D"),
        ((np.zeros((4, 2)), np.zeros(3, int), np.zeros((2, 2))), "train_labels has 3 entries"),
        ((np.zeros((4, 2)), np.zeros(4), np.zeros((2, 2))), "train_labels must be a 1-D integer"),
        ((np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 3))), "dimension 3"),
    ],
)
def test_nearest_neighbour_labels_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        nearest_neighbour_labels(*args)


def test_knn_accuracy_rejects_mismatched_test_labels():
    with pytest.raises(ValueError, match="test_labels has 3 entries but test_embeddings has 2"):
        knn_accuracy(np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 2)), np.zeros(3, int), np.array([4]))


# ---------------------------------------------------------------------------------------------- recall@k
def test_recall_at_k_hand_cases():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(exact, exact[:, ::-1].copy()) == 1.0  # order inside the top-k does not matter
    assert recall_at_k(exact, np.array([[7, 8, 9], [10, 11, 12]])) == 0.0
    assert recall_at_k(exact, np.array([[3, 9, 8], [4, 5, 0]])) == pytest.approx((1 / 3 + 2 / 3) / 2)


def test_recall_at_k_rejects_bad_ids():
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(np.zeros((2, 3), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="negative ids"):
        recall_at_k(np.zeros((1, 2), int), np.array([[0, -1]]))
    with pytest.raises(ValueError, match="integer ids"):
        recall_at_k(np.zeros((1, 2)), np.zeros((1, 2), int))


def test_compare_exact_hnsw_rows():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 16))
    keys = (centres[rng.integers(20, size=3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    queries = (centres[rng.integers(20, size=200)] + 0.3 * rng.normal(size=(200, 16))).astype(np.float32)
    rows = compare_exact_hnsw(keys, queries, k=10, ef_search=(16, 128), repeats=1)
    assert [row["ef_search"] for row in rows] == [None, 16, 128]
    assert rows[0]["recall"] == 1.0 and rows[0]["speedup"] == 1.0
    assert all(row["keys"] == 3000 and row["dim"] == 16 and row["k"] == 10 for row in rows)
    assert all(row["queries_per_s"] > 0 for row in rows)
    assert rows[2]["recall"] >= rows[1]["recall"] - 0.02  # a longer candidate list does not lose recall
    assert 0.9 <= rows[2]["recall"] <= 1.0
    for row in rows[1:]:
        assert row["speedup"] == pytest.approx(row["queries_per_s"] / rows[0]["queries_per_s"], abs=0.01)
        assert row["seconds"] == rows[1]["seconds"] > 0  # one HNSW graph, built once


@pytest.mark.parametrize("options, message", [
    ({"k": 6}, r"k must be an integer in \[1, 5\], got 6"),
    ({"k": 2.5}, r"k must be an integer in \[1, 5\], got 2.5"),
    ({"ef_search": ()}, "ef_search must list at least one"),
    ({"ef_search": (16, 0)}, "ef_search must be an integer >= 1, got 0"),
])
def test_compare_exact_hnsw_rejects_bad_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        compare_exact_hnsw(np.zeros((5, 2), np.float32), np.zeros((1, 2), np.float32), **({"k": 2} | options))


# ------------------------------------------------------------------------------------- one encoder, timed
class AddOne:
    """A stand-in 'augmentation' that visibly changes every image."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image + 1.0


def tiny_splits() -> LTSplits:
    rng = np.random.default_rng(3)
    class_counts = np.array([30, 12])
    train_labels = np.repeat([0, 1], class_counts)
    test_labels = np.repeat([0, 1], 10)
    prototypes = np.stack([np.zeros((6, 6)), np.full((6, 6), 200.0)])  # (2, 6, 6) dark vs bright

    def images(labels: np.ndarray) -> np.ndarray:
        noise = rng.normal(scale=60.0, size=(len(labels), 6, 6))
        return np.clip(prototypes[labels] + 30 + noise, 0, 255).astype(np.uint8)

    return LTSplits(
        name="tiny",
        train=ArrayDataset(images(train_labels), train_labels, AddOne()),
        val=None,
        test=ArrayDataset(images(test_labels), test_labels),
        class_counts=class_counts,
    )


def test_evaluate_encoder_raw_pixels():
    splits = tiny_splits()
    run = evaluate_encoder(build_image_encoder("raw_pixels"), splits, cache_queries=False)
    train_pixels = splits.train.images.reshape(len(splits.train), -1).astype(np.float32) / 255.0  # (N, 36)
    test_pixels = splits.test.images.reshape(len(splits.test), -1).astype(np.float32) / 255.0
    np.testing.assert_allclose(run.train_embeddings, train_pixels, atol=1e-6)  # un-augmented keys
    expected = shot_accuracy(splits.train.labels[brute_force_1nn(train_pixels, test_pixels)],
                             splits.test.labels, splits.class_counts)
    assert run.shots.overall == pytest.approx(expected.overall)
    row = run.row("tiny")
    assert (row["method"], row["image_size"], row["dim"]) == ("raw_pixels", 6, 36)
    assert row["overall"] == pytest.approx(round(100 * expected.overall, 2))
    assert run.construction_seconds == pytest.approx(run.encode_seconds + run.index_seconds)
    assert row["seconds"] == round(run.construction_seconds, 1)


def test_evaluate_encoder_image_size_override():
    run = evaluate_encoder(build_image_encoder("raw_pixels"), tiny_splits(), image_size=4, cache_queries=False)
    assert run.image_size == 4 and run.train_embeddings.shape == (42, 16)
