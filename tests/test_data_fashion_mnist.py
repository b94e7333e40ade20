"""ltcore.data.fashion_mnist: the IDX reader, where the files are looked for, and Fashion-MNIST-LT."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from ltcore.data import build_dataset
from ltcore.data import fashion_mnist as fm


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder, n=3, image_value=7, label=1, skip=()):
    """The four IDX files with ``n`` images each (all pixels ``image_value``, all labels ``label``), minus ``skip``."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in fm.FILES.items():
        if key not in skip:
            write_idx(folder / name, np.full((n, 28, 28) if "images" in key else (n,),
                                             label if "labels" in key else image_value))
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Every place Fashion-MNIST is looked for points into ``tmp_path``; a complete copy sits in the 'Debian' one."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", write_fashion_mnist(tmp_path / "debian", n=5))
    monkeypatch.setenv("LTCORE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    return tmp_path


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


def test_read_idx_roundtrip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "ok.gz", array)
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
    monkeypatch.setenv(fm.ENV_VAR, str(write_fashion_mnist(tmp_path)))
    arrays = fm.load_fashion_mnist()
    assert arrays["train_images"].shape == (3, 28, 28) and arrays["test_labels"].tolist() == [1, 1, 1]


def test_default_places_are_searched_in_order(isolated):
    assert fm.find_fashion_mnist() == isolated / "debian"  # nothing under LTCORE_DATA: the system copy
    write_fashion_mnist(isolated / "data" / "FashionMNIST" / "raw")
    assert fm.find_fashion_mnist() == isolated / "data" / "FashionMNIST" / "raw"


def test_out_of_range_label_in_idx_names_the_file(tmp_path):
    for key, name in fm.FILES.items():
        shape = (2, 28, 28) if "images" in key else (2,)
        write_idx(tmp_path / name, np.full(shape, 12 if key == "test_labels" else 0))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: label 12"):
        fm.load_fashion_mnist(tmp_path)


def test_image_and_label_counts_that_differ_name_both_files(tmp_path):
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / fm.FILES["test_labels"], np.ones(2))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz holds 3 images but .*t10k-labels-idx1-ubyte\.gz "
                                         r"holds 2 labels"):
        fm.load_fashion_mnist(tmp_path)


# ---------------------------------------------------------------- hostile inputs (issue 16)


@pytest.mark.hostile
@pytest.mark.parametrize("how, message", [
    ("root missing", r"elsewhere \(from the root= argument\) does not exist"),
    ("root with 3 of 4 files", r"partial \(from the root= argument\) lacks t10k-labels-idx1-ubyte\.gz;"),
    ("variable missing", r"elsewhere \(from \$LTCORE_FASHION_MNIST\) does not exist"),
    ("variable with 3 of 4 files", r"partial \(from \$LTCORE_FASHION_MNIST\) lacks t10k-labels-idx1-ubyte\.gz;"),
    ("default place with 3 of 4 files",
     r"fashion-mnist \(from the data folder, LTCORE_DATA\) lacks t10k-labels-idx1-ubyte\.gz;"),
])
def test_a_folder_without_the_data_is_an_error_never_a_switch_to_another_copy(isolated, monkeypatch, how, message):
    write_fashion_mnist(isolated / "partial", skip={"test_labels"})
    write_fashion_mnist(isolated / "data" / "fashion-mnist", skip={"test_labels"})
    folder = isolated / ("partial" if "3 of 4" in how else "elsewhere")
    root = folder if how.startswith("root") else None
    if how.startswith("variable"):
        monkeypatch.setenv(fm.ENV_VAR, str(folder))
    with pytest.raises(FileNotFoundError, match=message):
        fm.load_fashion_mnist(root)  # the complete copy in the 'Debian' folder must not stand in
