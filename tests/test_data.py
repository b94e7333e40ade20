"""Long-tailed construction, the Fashion-MNIST loader and the dataset registry."""
import gzip

import numpy as np
import pytest

from ltcore.data import ArrayDataset, build_dataset, longtail_counts, longtail_indices
from ltcore.data import fashion_mnist as fm


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
    with pytest.raises(ValueError, match="val_per_class must be >= 0"):
        build_dataset("fashion_mnist_lt", val_per_class=-1)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        build_dataset("fashion_mnist_lt", test_per_class=-1)


def test_no_validation_split_is_none_not_an_empty_split():
    splits = build_dataset("fashion_mnist_lt", val_per_class=0, test_per_class=10)
    assert splits.val is None and splits.summary()["val"] == 0


def test_fashion_mnist_lt_default_has_all_shot_groups():
    splits = build_dataset("fashion_mnist_lt", test_per_class=50)
    assert splits.class_counts.tolist() == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert len(splits.train) == 2478 and len(splits.val) == 200 and len(splits.test) == 500
    train_ids = set(splits.train.source_indices.tolist())
    assert not train_ids & set(splits.val.source_indices.tolist())  # val carved from unused train images
    image, label, index = splits.train[5]
    assert image.shape == (1, 28, 28) and 0 <= image.min() and image.max() <= 1
    assert label == splits.train.labels[5] and index == 5
    assert np.bincount(splits.test.labels).tolist() == [50] * 10


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_roundtrip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", array)
    assert np.array_equal(fm.read_idx(tmp_path / "ok.gz"), array)
    raw = gzip.decompress((tmp_path / "ok.gz").read_bytes())
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(ValueError, match="short.gz: truncated"):
        fm.read_idx(tmp_path / "short.gz")
    (tmp_path / "cut.gz").write_bytes((tmp_path / "ok.gz").read_bytes()[:20])
    with pytest.raises(ValueError, match="cut.gz"):
        fm.read_idx(tmp_path / "cut.gz")


def test_missing_fashion_mnist_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("LTCORE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        fm.find_fashion_mnist()
    assert "nowhere" in str(info.value) and "apt-get install dataset-fashion-mnist" in str(info.value)


def test_fashion_mnist_found_through_env_var(tmp_path, monkeypatch):
    for key, name in fm.FILES.items():
        shape = (3, 28, 28) if "images" in key else (3,)
        _write_idx(tmp_path / name, np.full(shape, 1 if "labels" in key else 7))
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    arrays = fm.load_fashion_mnist()
    assert arrays["train_images"].shape == (3, 28, 28) and arrays["test_labels"].tolist() == [1, 1, 1]


def test_out_of_range_label_in_idx_names_the_file(tmp_path, monkeypatch):
    for key, name in fm.FILES.items():
        shape = (2, 28, 28) if "images" in key else (2,)
        _write_idx(tmp_path / name, np.full(shape, 12 if key == "test_labels" else 0))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: label 12"):
        fm.load_fashion_mnist(tmp_path)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(KeyError, match="known: fashion_mnist_lt"):
        build_dataset("mnist_lt")
    with pytest.raises(TypeError, match="no option"):
        build_dataset("fashion_mnist_lt", imbalance=10)


def test_array_dataset_checks_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        ArrayDataset(np.zeros((3, 2, 2), np.uint8), np.zeros(2))
