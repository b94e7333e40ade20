"""ltcore.data.cifar: CIFAR-10/100-LT from fake torchvision-layout pickles written by the tests.
Nothing is downloaded."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import shlex

import numpy as np
import pytest
import torch

from ltcore.data import build_dataset, longtail_counts
from ltcore.data.cifar import build_cifar_lt
from ltcore.data.registry import DATASETS

EXP100_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # LDAM-DRW's CIFAR-10-LT, ratio 100


def write_cifar10(root, per_class, n_test_per_class=3, seed=0):
    """A fake CIFAR-10 in torchvision's on-disk layout: five train batches, test_batch, batches.meta (pickles).

    ``per_class[c]`` train images of class ``c`` in shuffled order; each image's first two bytes hold its index.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))
    data = np.zeros((len(labels), 3 * 32 * 32), dtype=np.uint8)
    data[:, 0], data[:, 1] = np.arange(len(labels)) // 256, np.arange(len(labels)) % 256
    for b, part in enumerate(np.array_split(np.arange(len(labels)), 5)):
        write_pickle(folder / f"data_batch_{b + 1}", {"data": data[part], "labels": labels[part].tolist()})
    test_labels = np.repeat(np.arange(10), n_test_per_class)
    write_pickle(folder / "test_batch", {"data": np.full((len(test_labels), 3072), 7, np.uint8),
                                         "labels": test_labels.tolist()})
    write_pickle(folder / "batches.meta", {"label_names": [f"name{c}" for c in range(10)]})
    return labels


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def read_fixture(path):
    with open(path, "rb") as f:
        return pickle.load(f)  # only ever on files this test module wrote itself


def test_longtail_counts_match_the_literature():
    assert longtail_counts(5000, 10, 100).tolist() == EXP100_COUNTS
    assert longtail_counts(5000, 10, 100).sum() == 12406
    assert longtail_counts(500, 100, 100).sum() == 10847  # CIFAR-100-LT, ratio 100
    assert longtail_counts(5000, 10, 100, "step").tolist() == [5000] * 5 + [50] * 5


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    """Enough images for the exp profile at ratio 100 plus 10 spare per class (a head class of 5010)."""
    root = tmp_path_factory.mktemp("cifar")
    labels = write_cifar10(root, np.asarray(EXP100_COUNTS) + 10)
    return root, labels


def test_cifar10_lt_exp100_has_12406_images(cifar10_root):
    root, source_labels = cifar10_root
    splits = build_cifar_lt(10, 100, "exp", root=root, verify_checksums=False, augment=False)
    assert len(splits.train) == 12406 and splits.class_counts.tolist() == EXP100_COUNTS
    assert np.bincount(splits.train.labels, minlength=10).tolist() == EXP100_COUNTS
    assert splits.val is None and len(splits.test) == 30 and splits.class_names[3] == "name3"
    images = splits.train.images  # (N, 32, 32, 3): the first two bytes of the red plane hold the source index
    encoded = images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0]
    assert np.array_equal(encoded, splits.train.source_indices)
    assert np.array_equal(source_labels[splits.train.source_indices], splits.train.labels)
    image, label, index = splits.train[5]
    assert image.shape == (3, 32, 32) and label == splits.train.labels[5] and index == 5
    assert image[0, 0, 0] * 255 == images[5, 0, 0, 0] and image[1].abs().sum() == 0
    test_image, test_label, _ = splits.test[29]
    assert test_label == 9 and torch.allclose(test_image, torch.full((3, 32, 32), 7 / 255.0))
    again = build_cifar_lt(10, 100, root=root, verify_checksums=False, seed=0)
    other = build_cifar_lt(10, 100, root=root, verify_checksums=False, seed=1)
    assert np.array_equal(again.train.source_indices, splits.train.source_indices)
    assert not np.array_equal(other.train.source_indices, splits.train.source_indices)


def test_cifar10_lt_step_profile_and_validation(cifar10_root):
    root, source_labels = cifar10_root
    step = build_cifar_lt(10, 10, "step", root=root, verify_checksums=False, n_max=60, val_per_class=5)
    assert step.class_counts.tolist() == [60] * 5 + [6] * 5 and len(step.train) == 330
    assert np.bincount(step.val.labels, minlength=10).tolist() == [5] * 10
    assert not set(step.val.source_indices) & set(step.train.source_indices)
    assert np.array_equal(source_labels[step.val.source_indices], step.val.labels)
    with pytest.raises(ValueError, match="class 0 has 10 left after the long tail"):
        build_cifar_lt(10, 100, root=root, verify_checksums=False, val_per_class=20)
    with pytest.raises(ValueError, match="val_per_class must be an integer >= 0"):  # not silently "no validation"
        build_cifar_lt(10, 100, root=root, verify_checksums=False, val_per_class=-1)
    assert build_cifar_lt(10, 100, root=root, verify_checksums=False).val is None


def test_cifar_missing_or_unverified_files(tmp_path, cifar10_root):
    with pytest.raises(FileNotFoundError) as err:
        build_cifar_lt(10, root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert DATASETS["cifar10_lt"].how_to_get in message
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        build_dataset("cifar100_lt", root=tmp_path)
    with pytest.raises(ValueError, match=r"data_batch_1: md5 .*verify_checksums=False"):  # not the official release
        build_cifar_lt(10, root=cifar10_root[0])
    with pytest.raises(ValueError, match=r"num_classes must be one of \['10', '100'\], got 20"):
        build_cifar_lt(20, root=tmp_path)


def test_cifar_files_matching_the_checksums_load_verified(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path, [2] * 10)
    folder = tmp_path / "cifar-10-batches-py"
    md5 = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}
    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5[name]] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    assert len(build_cifar_lt(10, 2, root=tmp_path, n_max=2).train) == 11


def test_cifar100_lt_from_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    labels = np.repeat(np.arange(100), 20)
    write_pickle(folder / "train", {"data": np.zeros((2000, 3072), np.uint8), "fine_labels": labels.tolist()})
    write_pickle(folder / "test", {"data": np.zeros((100, 3072), np.uint8), "fine_labels": list(range(100))})
    write_pickle(folder / "meta", {"fine_label_names": [f"f{c}" for c in range(100)]})
    splits = build_dataset("cifar100_lt", root=tmp_path, verify_checksums=False, n_max=20, imbalance_ratio=10)
    assert splits.class_counts.tolist() == longtail_counts(20, 100, 10).tolist()
    assert len(splits.train) == longtail_counts(20, 100, 10).sum() and len(splits.test) == 100
    assert splits.class_names[99] == "f99" and splits.name == "cifar100_lt_exp10"


# ---------------------------------------------------------------- hostile inputs (issue 16)


class OpensAFile:
    """Unpickling this creates ``marker``: the smallest code-running payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class RunsAShellCommand(OpensAFile):
    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.mark.hostile
@pytest.mark.parametrize("payload", [OpensAFile, RunsAShellCommand])
@pytest.mark.parametrize("file_name, plant", [
    ("data_batch_2", lambda batch, payload: {**batch, "labels": payload}),
    ("test_batch", lambda batch, payload: {**batch, "data": np.array([payload], dtype=object)}),
    ("batches.meta", lambda meta, payload: {"label_names": [payload] * 10}),
])
def test_cifar_pickle_payload_is_refused_and_nothing_runs(tmp_path, payload, file_name, plant):
    write_cifar10(tmp_path, [2] * 10)
    path = tmp_path / "cifar-10-batches-py" / file_name
    marker = tmp_path / "payload_ran"
    write_pickle(path, plant(read_fixture(path), payload(marker)))
    with pytest.raises(ValueError) as err:
        build_cifar_lt(10, 2, root=tmp_path, verify_checksums=False, n_max=2)
    assert not marker.exists()  # the payload did not run
    refused = r"refused to build (io\.open|builtins\.open|posix\.system)"
    assert re.search(rf"{file_name}: unreadable CIFAR pickle .*{refused}", str(err.value))


@pytest.mark.hostile
@pytest.mark.parametrize("extra_images", [[0, 10, 0, 0, 0], [0, 10, -10, 0, 0]])  # the second one adds up
def test_cifar_images_and_labels_are_counted_per_batch(tmp_path, extra_images):
    write_cifar10(tmp_path, [25] * 10)
    for number, extra in enumerate(extra_images, start=1):
        path = tmp_path / "cifar-10-batches-py" / f"data_batch_{number}"
        batch = read_fixture(path)
        labels = batch["labels"][:len(batch["labels"]) - extra] if extra > 0 else batch["labels"] + [0] * -extra
        write_pickle(path, {**batch, "labels": labels})
    with pytest.raises(ValueError, match=r"data_batch_2: 50 images but 40 labels"):
        build_cifar_lt(10, 2, root=tmp_path, verify_checksums=False, n_max=2)


@pytest.mark.hostile
@pytest.mark.parametrize("file_name, damage, message", [
    ("data_batch_3", lambda raw: raw[:100], r"data_batch_3: unreadable CIFAR pickle"),
    ("data_batch_4", {"labels": [10] * 4}, r"data_batch_4: label 10 outside \[0, 10\)"),
    ("data_batch_4", {"labels": [1.0] * 4}, r"data_batch_4: labels must be a list of integers"),
    ("data_batch_1", {"labels": [True] * 4}, r"data_batch_1: labels must be a list of integers"),
    ("test_batch", {"data": np.zeros((30, 3072), np.float32)}, r"test_batch: 'data' must be a uint8 array"),
    ("test_batch", {"data": np.zeros((30, 1024), np.uint8)}, r"test_batch: 'data' must be a uint8 array \[N, 3072\]"),
    ("batches.meta", {"label_names": ["a"] * 9}, r"batches\.meta: expected 'label_names', a list of 10 class names"),
    ("data_batch_5", {"labels": None}, r"data_batch_5: not a CIFAR batch"),
])
def test_cifar_errors_name_the_file(tmp_path, file_name, damage, message):
    write_cifar10(tmp_path, [2] * 10)
    path = tmp_path / "cifar-10-batches-py" / file_name
    if callable(damage):
        path.write_bytes(damage(path.read_bytes()))
    else:
        write_pickle(path, {key: value for key, value in {**read_fixture(path), **damage}.items()
                            if value is not None})
    with pytest.raises(ValueError, match=message):
        build_cifar_lt(10, 2, root=tmp_path, verify_checksums=False, n_max=2)


@pytest.mark.hostile
def test_cifar_root_variable_pointing_nowhere_is_an_error_naming_it(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", [2] * 10)
    monkeypatch.setenv("LTCORE_DATA", str(tmp_path / "data"))  # a copy that would be found without the variable
    monkeypatch.setenv("LTCORE_CIFAR_ROOT", str(tmp_path / "cifra"))
    with pytest.raises(FileNotFoundError, match=r"cifra \(from \$LTCORE_CIFAR_ROOT\) does not exist"):
        build_cifar_lt(10, 2, verify_checksums=False, n_max=2)
