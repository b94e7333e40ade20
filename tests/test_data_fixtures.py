"""ltcore.data.fixtures: every fixture loads through its real loader, long-tailed and balanced where the real dataset
is, with real data's image quirks; the same seed writes the same bytes; bad input and a folder holding other data
are refused; ``python -m ltcore data make-fixture``."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ltcore.__main__ import main
from ltcore.data import DATASETS, build_dataset, evaluation_view, longtail_counts
from ltcore.data.files import SplitOverlapWarning
from ltcore.data.fixtures import FIXTURE_FORMATS, build_options, describe_fixture, fixture_counts, make_fixture

SIZES = dict(image_size=16, resize_size=20)  # small default transforms: shorter side 20, 16 x 16 crop
TRAIN_12 = [20, 16, 13, 10, 8, 7, 5, 4, 3, 3, 2, 2]  # int(20 * 10 ** (-i / 11)): from 20 down to 20 // 10
CIFAR_OPTIONS = {"n_max": 20, "imbalance_ratio": 10, "verify_checksums": False}  # not the official md5 sums
# How a user loads each fixture at the defaults: the registry name and options (the loaders default to the real sizes).
LOADS = {
    "imagenet_lt": ("imagenet_lt", {"num_classes": 12, **SIZES}),
    "places_lt": ("places_lt", {"num_classes": 12, **SIZES}),
    "sun_lt": ("sun_lt", {"num_classes": 12, **SIZES}),
    "inat2018": ("inat2018", SIZES),
    "cifar10": ("cifar10_lt", CIFAR_OPTIONS),
    "cifar100": ("cifar100_lt", CIFAR_OPTIONS),
}
# classes, training counts (head first), val images per class (None: no val split), test per class, open images
EXPECTED = {
    "imagenet_lt": (12, TRAIN_12, 2, 5, 15),
    "places_lt": (12, TRAIN_12, 2, 5, 15),
    "sun_lt": (12, TRAIN_12, 2, 5, 0),  # SUN-LT has no open split
    "inat2018": (12, TRAIN_12, None, 3, 0),  # val2018.json is the test split, 3 a class
    "cifar10": (10, [20, 15, 11, 9, 7, 5, 4, 3, 2, 2], None, 5, 0),
    "cifar100": (100, longtail_counts(20, 100, 10).tolist(), None, 5, 0),
}
IMAGE_TREES = ("imagenet_lt", "places_lt", "sun_lt", "inat2018")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every format's fixture at the defaults, written once for the module: ``{format: root}``."""
    base = tmp_path_factory.mktemp("fixtures")
    return {fmt: make_fixture(fmt, base / fmt) for fmt in FIXTURE_FORMATS}


def load(fmt, root):
    name, options = LOADS[fmt]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitOverlapWarning)  # the splits are disjoint
        return build_dataset(name, root=root, **options)


def splits_of(splits):
    return {name: dataset for name, dataset in [("train", splits.train), ("val", splits.val), ("test", splits.test),
                                                ("open", splits.open_set)] if dataset is not None}


def file_bytes(root):
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_every_format_has_a_loader_in_the_registry():
    assert set(FIXTURE_FORMATS) == set(LOADS) == {"imagenet_lt", "places_lt", "sun_lt", "inat2018", "cifar10",
                                                  "cifar100"}
    assert {name for name, _ in LOADS.values()} <= set(DATASETS)


@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
def test_fixture_loads_long_tailed_through_its_loader(written, fmt):
    splits = load(fmt, written[fmt])
    classes, train, val_per_class, test_per_class, open_images = EXPECTED[fmt]
    assert splits.num_classes == classes and splits.class_counts.tolist() == train
    assert np.bincount(splits.train.labels, minlength=classes).tolist() == train
    assert train == sorted(train, reverse=True) and train[0] == 20 > train[-1] == 2
    assert splits.val is None if val_per_class is None else \
        np.bincount(splits.val.labels, minlength=classes).tolist() == [val_per_class] * classes
    assert np.bincount(splits.test.labels, minlength=classes).tolist() == [test_per_class] * classes
    assert (0 if splits.open_set is None else len(splits.open_set)) == open_images
    shape = (3, 32, 32) if fmt.startswith("cifar") else (3, 16, 16)
    for name, dataset in splits_of(splits).items():
        labels = dataset.labels
        assert (labels == -1).all() if name == "open" else ((0 <= labels) & (labels < classes)).all()
        for i in range(len(dataset)):
            image, label, index = dataset[i]
            assert image.shape == shape and image.dtype == torch.float32 and (label, index) == (labels[i], i)
            assert 0 <= image.min() and image.max() <= 1
    expected_counts = {name: len(dataset) for name, dataset in splits_of(splits).items()}
    assert {name: int(counts.sum()) for name, counts in fixture_counts(fmt).items()} == expected_counts
    assert fixture_counts(fmt)["train"].tolist() == train
    name, options = LOADS[fmt]
    assert build_options(fmt, written[fmt]) == (name, {"root": str(written[fmt]), **{
        key: value for key, value in options.items() if key not in SIZES}})


@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
def test_classes_are_learnable_from_the_pixels(written, fmt):
    """Nearest class mean on raw pixels, fit on the training images, is right on most test images."""
    splits = load(fmt, written[fmt])
    train = evaluation_view(splits.train, splits.test)  # without the training augmentation

    def pixels(dataset):
        return torch.stack([dataset[i][0] for i in range(len(dataset))]).flatten(1)  # (N, 3, H, W) -> (N, 3HW)

    train_pixels, train_labels = pixels(train), torch.from_numpy(train.labels)
    means = torch.stack([train_pixels[train_labels == c].mean(0) for c in range(splits.num_classes)])  # (C, 3HW)
    predicted = torch.cdist(pixels(splits.test), means).argmin(1)  # (N_test,)
    accuracy = (predicted == torch.from_numpy(splits.test.labels)).float().mean().item()
    assert accuracy >= 0.4  # chance is 1/12, 1/10 or 1/100


@pytest.mark.parametrize("fmt", IMAGE_TREES)
def test_images_have_real_data_quirks_and_load_as_rgb(written, fmt):
    datasets = list(splits_of(load(fmt, written[fmt])).values())
    first_of_kind, sizes = {}, []
    for dataset in datasets:
        for i in range(len(dataset)):
            with Image.open(dataset.image_path(i)) as image:
                first_of_kind.setdefault((image.format, image.mode), (dataset, i))
                sizes.append(image.size)
    assert set(first_of_kind) == {("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB")}
    for dataset, i in first_of_kind.values():  # greyscale and CMYK arrive as 3 channels
        assert dataset.image_tensor(i).shape[0] == 3 and dataset[i][0].shape == (3, 16, 16)
    assert all(37 <= side <= 120 for size in sizes for side in size) and all(w != h for w, h in sizes)
    assert len(set(sizes)) > len(sizes) // 2  # sizes differ from image to image
    on_disk = [path for path in written[fmt].rglob("*") if path.suffix in (".JPEG", ".jpg")]
    assert len(on_disk) == len(sizes)  # every image on disk is listed once


@pytest.mark.parametrize("fmt", ["imagenet_lt", "places_lt"])
def test_oltr_open_split_holds_images_of_no_known_class(written, fmt):
    splits = load(fmt, written[fmt])
    open_paths = {str(splits.open_set.image_path(i)) for i in range(len(splits.open_set))}
    known_paths = {str(dataset.image_path(i)) for dataset in (splits.train, splits.val, splits.test)
                   for i in range(len(dataset))}
    assert len(open_paths) == 15 and not open_paths & known_paths
    assert (splits.open_set.labels == -1).all()
    assert splits.open_set[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("fmt, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_files_are_balanced_like_the_release_but_not_its_checksums(written, fmt, classes):
    balanced = build_dataset(f"{fmt}_lt", root=written[fmt], n_max=20, imbalance_ratio=1, verify_checksums=False)
    assert balanced.class_counts.tolist() == [20] * classes and len(balanced.train) == 20 * classes
    with pytest.raises(ValueError, match="md5 .* differs from the official release's"):
        build_dataset(f"{fmt}_lt", root=written[fmt], n_max=20)


@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
def test_the_same_seed_writes_the_same_bytes(written, tmp_path, fmt):
    assert file_bytes(make_fixture(fmt, tmp_path / "again")) == file_bytes(written[fmt])
    other = file_bytes(make_fixture(fmt, tmp_path / "other", seed=1))
    same = file_bytes(written[fmt])
    data_files = set(other) - {"ltcore_fixture.json"}
    assert any(other[name] != same.get(name) for name in data_files)


def test_class_counts_follow_the_rule_for_other_sizes():
    assert fixture_counts("sun_lt", 3, 10)["train"].tolist() == [10, 3, 1]
    assert fixture_counts("sun_lt", 5, 4)["train"].tolist() == [4, 2, 2, 1, 1]  # ratio min(10, 4): the tail is 1
    assert fixture_counts("sun_lt", 4, 1)["train"].tolist() == [1, 1, 1, 1]
    assert fixture_counts("inat2018", 2, 100)["train"].tolist() == [100, 10]
    assert {split: counts.tolist() for split, counts in fixture_counts("places_lt", 2, 40).items()} == {
        "train": [40, 4], "val": [4, 4], "test": [10, 10], "open": [10, 10, 10]}


def test_a_small_fixture_loads_with_its_sizes(tmp_path):
    root = make_fixture("imagenet_lt", tmp_path, classes=3, max_per_class=4, seed=5)
    splits = build_dataset("imagenet_lt", root=root, num_classes=3, **SIZES)
    assert splits.class_counts.tolist() == [4, 2, 1]
    assert (len(splits.val), len(splits.test), len(splits.open_set)) == (3, 6, 6)


@pytest.mark.parametrize("args, message", [
    (("imagenet",), "format must be one of ['cifar10', 'cifar100', 'imagenet_lt', 'inat2018', 'places_lt', "
                    "'sun_lt'], got 'imagenet'"),
    (("imagenet_lt", 1), "imagenet_lt takes 2 to 1000 classes (the real dataset has 1000), got classes=1"),
    (("imagenet_lt", 1001), "imagenet_lt takes 2 to 1000 classes"),
    (("places_lt", 366), "places_lt takes 2 to 365 classes"),
    (("sun_lt", 398), "sun_lt takes 2 to 397 classes"),
    (("inat2018", 8143), "inat2018 takes 2 to 8142 classes"),
    (("cifar10", 12), "cifar10 has exactly 10 classes (its files name 10), got classes=12"),
    (("cifar100", 10), "cifar100 has exactly 100 classes (its files name 100), got classes=10"),
    (("sun_lt", 2.5), "classes must be an integer, got 2.5"),
    (("sun_lt", True), "classes must be an integer, got True"),
    (("sun_lt", 3, 0), "max_per_class must be an integer >= 1, got 0"),
    (("sun_lt", 3, 5, -1), "seed must be an integer >= 0, got -1"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_fixture(args[0], tmp_path / "out", *args[1:])
    assert not (tmp_path / "out").exists()


@pytest.mark.hostile
def test_a_folder_holding_other_data_is_refused_and_left_alone(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=re.escape(f"{mine} is not empty and holds no ltcore fixture")):
        make_fixture("sun_lt", mine)
    with pytest.raises(FileExistsError, match=re.escape(f"{mine / 'notes.txt'} exists and is not a folder")):
        make_fixture("sun_lt", mine / "notes.txt")
    assert file_bytes(mine) == {"notes.txt": b"keep me"}
    with pytest.raises(ValueError, match="root is an empty path"):
        make_fixture("sun_lt", "")


@pytest.mark.hostile
def test_another_fixture_is_refused_and_the_same_one_is_completed(tmp_path):
    root = make_fixture("sun_lt", tmp_path / "fixture", classes=3, max_per_class=5)
    before = file_bytes(root)
    held = "already holds another fixture (format='sun_lt', classes=3, max_per_class=5, seed=0)"
    for other in [dict(format="sun_lt", classes=3, max_per_class=5, seed=1), dict(format="cifar10"),
                  dict(format="sun_lt", classes=4, max_per_class=5)]:
        with pytest.raises(FileExistsError, match=re.escape(f"{root} {held}")):
            make_fixture(root=root, **other)
    assert file_bytes(root) == before
    next(root.rglob("*.jpg")).unlink()  # as if a write had been interrupted
    make_fixture("sun_lt", root, classes=3, max_per_class=5)
    assert file_bytes(root) == before
    (root / "ltcore_fixture.json").write_text("{not json")
    with pytest.raises(FileExistsError, match=r"holds no ltcore fixture \(no readable ltcore_fixture\.json\)"):
        make_fixture("sun_lt", root, classes=3, max_per_class=5)


# ---------------------------------------------------------------- the command line


def test_cli_writes_a_fixture_and_prints_where_and_the_counts(tmp_path, capsys):
    root = tmp_path / "sun"
    argv = ["data", "make-fixture", "sun_lt", str(root), "--classes", "3", "--max-per-class", "10", "--seed", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == (f"wrote the sun_lt fixture (seed 2) to {root}\n" + describe_fixture("sun_lt", root, 3, 10) + "\n")
    assert "  train: 10 3 1 per class, head first (14 images)\n  val:   1 per class (3 images)\n" in out
    assert f"load it with build_dataset('sun_lt', root='{root}', num_classes=3)" in out
    assert build_dataset("sun_lt", root=root, num_classes=3, **SIZES).class_counts.tolist() == [10, 3, 1]
    assert file_bytes(root) == file_bytes(make_fixture("sun_lt", tmp_path / "api", 3, 10, 2))


@pytest.mark.hostile
@pytest.mark.parametrize("argv, says", [
    (["nosuch", "DIR"], "error: format must be one of ['cifar10', 'cifar100', 'imagenet_lt', 'inat2018', "
                        "'places_lt', 'sun_lt'], got 'nosuch'"),
    (["cifar10", "DIR", "--classes", "12"], "error: cifar10 has exactly 10 classes"),
    (["sun_lt", "DIR", "--max-per-class", "0"], "error: max_per_class must be an integer >= 1, got 0"),
    (["sun_lt", "DIR", "--classes", "x"], "argument --classes: invalid int value: 'x'"),
    (["sun_lt"], "the following arguments are required: DIR"),
    (["sun_lt", "FULL"], "is not empty and holds no ltcore fixture"),
])
def test_cli_mistake_is_one_line_and_status_2(tmp_path, capsys, argv, says):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    paths = {"DIR": str(tmp_path / "out"), "FULL": str(tmp_path / "full")}
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "make-fixture", *[paths.get(arg, arg) for arg in argv]])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m ltcore") and says in err
    assert not (tmp_path / "out").exists() and file_bytes(tmp_path / "full") == {"notes.txt": b"keep me"}


def test_cli_data_list_still_works_and_make_fixture_help_names_every_format(capsys):
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in DATASETS)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "make-fixture", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(fmt in usage for fmt in FIXTURE_FORMATS)
