"""ltcore.data.oltr: ImageNet-LT, Places-LT and SUN-LT from OLTR split files written by the tests."""
from __future__ import annotations

import warnings

import pytest
import torch

from ltcore.data import build_dataset
from ltcore.data.files import SplitOverlapWarning
from ltcore.data.oltr import build_oltr_lt
from ltcore.data.registry import DATASETS
from test_data_files import TINY, color_of, write_image, write_lines

OLTR_COUNTS = {"train": [4, 2, 1], "val": [1, 1, 1], "test": [2, 2, 2]}


def write_oltr(root, benchmark="ImageNet_LT", with_open=True, split_dir=None):
    """Images under root/<split>/c<label>/<k>.(png|jpg) and the OLTR split files in split_dir (default root)."""
    split_dir = split_dir or root
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, counts in OLTR_COUNTS.items():
        lines = []
        for label, count in enumerate(counts):
            for k in range(count):
                rel = f"{split}/c{label}/{k}.{'jpg' if k % 2 else 'png'}"
                write_image(root / rel, label, fmt="JPEG" if k % 2 else "PNG")
                lines.append(f"{rel} {label}")
        write_lines(split_dir / f"{benchmark}_{split}.txt", lines)
    if with_open:
        for k in range(2):
            write_image(root / f"open/{k}.png", 5)
        write_lines(split_dir / f"{benchmark}_open.txt", ["open/0.png -1", "open/1.png -1"])


def test_imagenet_lt_builds_from_split_files(tmp_path):
    write_oltr(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitOverlapWarning)  # disjoint splits: no overlap reported
        splits = build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=3, **TINY)
    assert splits.name == "imagenet_lt"
    assert splits.class_counts.tolist() == [4, 2, 1] and splits.num_classes == 3
    assert splits.class_names == ["class_0", "class_1", "class_2"]
    assert (len(splits.train), len(splits.val), len(splits.test), len(splits.open_set)) == (7, 3, 6, 2)
    assert splits.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for dataset in (splits.train, splits.test):
        for i in range(len(dataset)):
            image, label, index = dataset[i]
            assert image.shape == (3, 8, 8) and label == dataset.labels[i] and index == i
            # solid colour images: the pixels say which class folder the image came from
            assert torch.allclose(image[:, 4, 4], torch.tensor(color_of(label)) / 255.0, atol=3 / 255)
    image, label, index = splits.open_set[1]
    assert (label, index) == (-1, 1) and image.shape == (3, 8, 8)


def test_oltr_defaults_env_root_class_names_and_registry(tmp_path, monkeypatch):
    write_oltr(tmp_path / "images", benchmark="SUN_LT", with_open=False, split_dir=tmp_path / "splits")
    write_lines(tmp_path / "splits" / "SUN_LT_classnames.txt", ["abbey", "airport", "alley"])
    monkeypatch.setenv("LTCORE_SUN_LT_ROOT", str(tmp_path / "images"))
    splits = build_oltr_lt("SUN_LT", split_dir=tmp_path / "splits", num_classes=3, **TINY)
    assert splits.open_set is None and splits.class_names == ["abbey", "airport", "alley"]
    assert splits.train.class_names == splits.class_names
    built = build_dataset("sun_lt", split_dir=tmp_path / "splits", num_classes=3, check_files=False, **TINY)
    assert built.class_counts.tolist() == [4, 2, 1]
    with pytest.raises(ValueError, match=r"SUN_LT_classnames\.txt: 3 class names for 397 classes"):
        build_oltr_lt("SUN_LT", split_dir=tmp_path / "splits", **TINY)  # default num_classes: SUN397's


def test_oltr_default_num_classes_and_transform_override(tmp_path):
    write_oltr(tmp_path, benchmark="Places_LT")
    identity = lambda image: image  # noqa: E731
    splits = build_oltr_lt("Places_LT", root=tmp_path, transform=identity)
    assert splits.num_classes == 365 and splits.class_counts[:3].tolist() == [4, 2, 1]
    assert splits.class_counts[3:].sum() == 0 and splits.class_names[364] == "class_364"
    assert splits.train[0][0].shape == (3, 11, 14)  # the given transform is used for train too


def test_oltr_missing_split_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_oltr_lt("ImageNet_LT", root=tmp_path)
    message = str(err.value)
    for needle in (str(tmp_path / "ImageNet_LT_train.txt"), str(tmp_path / "ImageNet_LT_test.txt"),
                   "LTCORE_IMAGENET_LT_ROOT", DATASETS["imagenet_lt"].how_to_get, "from the root= argument"):
        assert needle in message
    with pytest.raises(ValueError, match=r"benchmark must be one of \['ImageNet_LT', 'Places_LT', 'SUN_LT'\]"):
        build_oltr_lt("CIFAR_LT", root=tmp_path)


def test_oltr_bad_inputs_name_file_and_line(tmp_path):
    write_oltr(tmp_path)
    train = tmp_path / "ImageNet_LT_train.txt"
    lines = train.read_text().splitlines()
    write_lines(train, lines[:2] + [lines[2].rsplit(" ", 1)[0] + " -1"] + lines[3:])
    with pytest.raises(ValueError, match=rf"{train}, line 3: open-set label -1 is only allowed in an open split"):
        build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=3, **TINY)
    write_lines(train, lines[:4] + ["train/c0/missing.png 0"] + lines[4:])
    with pytest.raises(FileNotFoundError, match=rf"{train}, line 5: .*missing\.png"):
        build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=3, **TINY)
    lazy = build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=3, check_files=False, **TINY)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        lazy.train[4]
    write_lines(train, lines)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=0, **TINY)
    with pytest.raises(ValueError, match=r"ImageNet_LT_train\.txt, line 5: label 1 outside \[0, 1\)"):
        build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=1, **TINY)


# ---------------------------------------------------------------- hostile inputs (issue 16)


@pytest.mark.hostile
def test_oltr_split_line_leaving_the_root_is_refused_before_any_image_is_opened(tmp_path):
    write_oltr(tmp_path / "root")
    write_image(tmp_path / "secret.png", 0)
    test = tmp_path / "root" / "ImageNet_LT_test.txt"
    write_lines(test, test.read_text().splitlines() + ["../secret.png 0"])
    with pytest.raises(ValueError, match=rf"{test}, line 7: image path '../secret.png' leaves the image root"):
        build_oltr_lt("ImageNet_LT", root=tmp_path / "root", num_classes=3, check_files=False, **TINY)


@pytest.mark.hostile
def test_oltr_train_test_overlap_is_reported(tmp_path):
    write_oltr(tmp_path)
    test = tmp_path / "ImageNet_LT_test.txt"
    write_lines(test, test.read_text().splitlines() + ["train/c0/0.png 0", "train/c1/1.jpg 1"])
    with pytest.warns(UserWarning, match=r"2 image\(s\) listed in both .*ImageNet_LT_train\.txt and "
                                         r".*ImageNet_LT_test\.txt, e\.g\. 'train/c0/0\.png'") as record:
        splits = build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=3, **TINY)
    assert len(splits.test) == 8  # reported, not dropped
    assert all(issubclass(warning.category, SplitOverlapWarning) for warning in record)
    assert "ImageNet_LT_train.txt, line 1" in str(record[0].message)


@pytest.mark.hostile
def test_oltr_root_variable_pointing_nowhere_is_an_error_naming_it(tmp_path, monkeypatch):
    write_oltr(tmp_path / "images", benchmark="SUN_LT", with_open=False, split_dir=tmp_path / "splits")
    monkeypatch.setenv("LTCORE_SUN_LT_ROOT", str(tmp_path / "imgaes"))
    with pytest.raises(FileNotFoundError, match=r"imgaes \(from \$LTCORE_SUN_LT_ROOT\) does not exist"):
        build_oltr_lt("SUN_LT", split_dir=tmp_path / "splits", num_classes=3, check_files=False, **TINY)
