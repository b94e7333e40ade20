"""ltcore.data: long-tailed construction (longtail, permuted splits), the dataset containers (datasets), the
registry and the digits open set. Each loader has its own file: test_data_fashion_mnist, _files, _oltr, _inat,
_cifar."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ltcore.data import (OPEN_LABEL, ArrayDataset, LTSplits, build_dataset, evaluation_view, longtail_counts,
                         longtail_indices)
from ltcore.data.longtail import permuted_longtail_split, rank_permutation
from ltcore.data.open_set import digits_open_set


def test_exp_counts_follow_the_ldam_formula():
    counts = longtail_counts(1000, 10, 100, "exp")
    expected = [int(1000 * 100 ** (-i / 9)) for i in range(10)]
    assert counts.tolist() == expected == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]


def test_step_counts_and_cifar_totals():
    assert longtail_counts(1000, 10, 100, "step").tolist() == [1000] * 5 + [10] * 5
    assert longtail_counts(5000, 10, 100, "exp").sum() == 12406  # CIFAR-10-LT, ratio 100
    assert longtail_counts(500, 100, 100, "exp").sum() == 10847  # CIFAR-100-LT, ratio 100


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_max=10, n_classes=10, imbalance_ratio=100, profile="exp"), "no image"),
    (dict(n_max=10, n_classes=10, imbalance_ratio=0.5, profile="exp"), "imbalance_ratio"),
    (dict(n_max=10, n_classes=10, imbalance_ratio=10, profile="pareto"), "profile"),
    (dict(n_max=10, n_classes=1, imbalance_ratio=10, profile="exp"), "n_classes"),
    (dict(n_max=0, n_classes=10, imbalance_ratio=10, profile="exp"), "n_max must be an integer >= 1"),
    pytest.param(dict(n_max=10, n_classes=10, imbalance_ratio=float("nan"), profile="exp"),
                 r"imbalance_ratio \(head / tail\) must be a finite number >= 1, got nan", marks=pytest.mark.hostile),
    pytest.param(dict(n_max=10, n_classes=10, imbalance_ratio=float("inf"), profile="exp"),
                 r"imbalance_ratio \(head / tail\) must be a finite number", marks=pytest.mark.hostile),
])
def test_impossible_profiles_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        longtail_counts(**kwargs)


def test_subsampler_is_seeded_and_exact():
    labels = np.repeat(np.arange(4), 50)
    counts = np.array([40, 20, 10, 5])
    a, b, c = (longtail_indices(labels, counts, seed) for seed in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == counts.tolist()
    assert len(np.unique(a)) == len(a)
    with pytest.raises(ValueError, match="class 3 has 50 images"):
        longtail_indices(labels, np.array([1, 1, 1, 51]))


def test_negative_counts_are_errors_not_almost_every_image():
    labels = np.repeat(np.arange(3), 10)
    with pytest.raises(ValueError, match="class 1 is asked for -1 images"):
        longtail_indices(labels, np.array([2, -1, 2]))
    with pytest.raises(ValueError, match="val_per_class must be an integer >= 0"):
        build_dataset("fashion_mnist_lt", val_per_class=-1)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        build_dataset("fashion_mnist_lt", test_per_class=-1)


@pytest.fixture
def balanced_labels() -> np.ndarray:
    """10 classes of 60 images, shuffled so that a class's images are not contiguous."""
    return np.random.default_rng(5).permutation(np.repeat(np.arange(10), 60))


def test_permuted_splits_keep_the_counts_and_never_train_on_validation(balanced_labels):
    counts = longtail_counts(40, 10, 10, "exp")
    splits = [permuted_longtail_split(balanced_labels, counts, p, val_per_class=5) for p in range(4)]
    all_train = np.concatenate([split.train for split in splits])
    for split in splits:
        assert sorted(split.rank_of_class.tolist()) == list(range(10))
        assert split.class_counts.tolist() == counts[split.rank_of_class].tolist()
        assert np.bincount(balanced_labels[split.train], minlength=10).tolist() == split.class_counts.tolist()
        assert np.bincount(balanced_labels[split.val], minlength=10).tolist() == [5] * 10
        assert len(np.unique(split.train)) == len(split.train) and split.train.dtype == np.int64
        np.testing.assert_array_equal(split.val, splits[0].val)  # one validation split for every run
        np.testing.assert_array_equal(split.pool, splits[0].pool)
    assert not np.intersect1d(all_train, splits[0].val).size, "a permutation trains on validation images"
    assert np.isin(all_train, splits[0].pool).all() and np.isin(splits[0].val, splits[0].pool).all()
    assert len(splits[0].pool) == 10 * (40 + 5) and np.all(np.diff(splits[0].pool) > 0)
    assert len({tuple(split.rank_of_class) for split in splits}) == 4


def test_permutation_zero_is_the_identity_and_the_existing_subsample(balanced_labels):
    counts = longtail_counts(40, 10, 10, "exp")
    split = permuted_longtail_split(balanced_labels, counts, 0, val_per_class=5, data_seed=3)
    assert split.rank_of_class.tolist() == list(range(10)) and split.permutation == 0
    assert split.class_counts.tolist() == counts.tolist()
    np.testing.assert_array_equal(split.train, longtail_indices(balanced_labels, counts, seed=3))
    np.testing.assert_array_equal(rank_permutation(10, 2), np.random.default_rng(2).permutation(10))


def test_a_class_keeps_the_same_image_order_under_every_permutation(balanced_labels):
    """Fewer images of a class are always the first of its larger sets: permutations change counts, not images."""
    counts = longtail_counts(40, 10, 10, "exp")
    by_permutation = [permuted_longtail_split(balanced_labels, counts, p, val_per_class=5) for p in range(3)]
    for c in range(10):
        kept = sorted((set(split.train[balanced_labels[split.train] == c].tolist()) for split in by_permutation),
                      key=len)
        assert kept[0] <= kept[1] <= kept[2]


@pytest.mark.parametrize("options, message", [
    (dict(val_per_class=25), "class 0 has 60 images, but n_max=40 training and val_per_class=25 validation"),
    (dict(n_max=30), "n_max must be an integer >= 40"),
    (dict(val_per_class=-1), "val_per_class must be an integer >= 0"),
    (dict(permutation=-1), "permutation must be an integer >= 0"),
    (dict(permutation=1.0), "permutation must be an integer >= 0"),
    (dict(counts_by_rank=[40, 0]), r"counts_by_rank must be integers >= 1 .*\[40, 0\]"),
    (dict(counts_by_rank=[40.0, 4.0]), "counts_by_rank must be integers"),
    (dict(labels=np.array([0, 1, 10])), r"labels must be .* integer class ids in \[0, 10\)"),
    (dict(labels=np.array([0.0, 1.0])), "labels must be"),
])
def test_impossible_permuted_splits_are_errors(balanced_labels, options, message):
    arguments = dict(labels=balanced_labels, counts_by_rank=longtail_counts(40, 10, 10, "exp"), permutation=1,
                     val_per_class=5) | options
    with pytest.raises(ValueError, match=message):
        permuted_longtail_split(**arguments)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(KeyError, match="known: fashion_mnist_lt"):
        build_dataset("mnist_lt")
    with pytest.raises(TypeError, match="no option"):
        build_dataset("fashion_mnist_lt", imbalance=10)


def test_array_dataset_checks_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        ArrayDataset(np.zeros((3, 2, 2), np.uint8), np.zeros(2))


class AddOne:
    """A stand-in augmentation whose effect is easy to see."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image + 1


def test_evaluation_view_drops_augmentation():
    images = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    labels = np.array([0, 1, 0, 1])
    splits = LTSplits(name="tiny", train=ArrayDataset(images, labels, AddOne()), val=None,
                      test=ArrayDataset(images[:2], labels[:2]), class_counts=np.array([2, 2]))
    assert not torch.equal(splits.train[0][0], splits.train.image_tensor(0))  # augmented
    view = evaluation_view(splits.train, splits.test)
    torch.testing.assert_close(view[0][0], splits.train.image_tensor(0))
    assert len(view) == 4 and view.labels.tolist() == labels.tolist()
    with pytest.raises(TypeError, match="with_transform"):
        evaluation_view(object(), splits.test)


def test_digits_open_set_is_labelled_open():
    open_set = digits_open_set(12, size=28, seed=0)
    assert len(open_set) == 12 and set(open_set.labels.tolist()) == {OPEN_LABEL} == {-1}
    image, label, _ = open_set[0]
    assert image.shape == (1, 28, 28) and label == OPEN_LABEL and 0 <= image.min() and image.max() <= 1
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 1797\], got 0"):
        digits_open_set(0)
