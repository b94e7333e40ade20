"""Real-dataset loaders on small fixture files written by the tests: OLTR split files, iNaturalist json,
torchvision's CIFAR pickles. Nothing is downloaded."""
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from ltcore.data import build_dataset, longtail_counts
from ltcore.data.cifar import build_cifar_lt
from ltcore.data.files import (ImageEntry, ImageListDataset, check_images_exist, default_transform, parse_split_file,
                               read_class_names)
from ltcore.data.inat import build_inat2018
from ltcore.data.oltr import build_oltr_lt
from ltcore.data.registry import DATASETS

TINY = dict(image_size=8, resize_size=10)  # tiny default transforms: shorter side 10, 8 x 8 crop


def color_of(label: int) -> tuple[int, int, int]:
    return (30 + 60 * label, 200 - 50 * label, 17 * label)


def write_image(path, label, size=(14, 11), fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color_of(label)).save(path, fmt)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ---------------------------------------------------------------- split files


def test_parse_split_file_reads_entries_with_their_line(tmp_path):
    split = write_lines(tmp_path / "s.txt", ["a/x.jpg 0", "", "b/dir with space/y.jpg 2", "  c/z.png   1  "])
    entries = parse_split_file(split, num_classes=3)
    assert [(e.path, e.label) for e in entries] == [("a/x.jpg", 0), ("b/dir with space/y.jpg", 2), ("c/z.png", 1)]
    assert entries[1].origin == f"{split}, line 3"


@pytest.mark.parametrize("bad_line, message", [
    ("lonely_path.jpg", "malformed line"),
    ("a.jpg seven", "label 'seven' is not an integer"),
    ("a.jpg 1.0", "label '1.0' is not an integer"),
    ("a.jpg 3", "label 3 outside [0, 3)"),
    ("a.jpg -2", "label -2 outside [0, 3)"),
    ("a.jpg -1", "open-set label -1 is only allowed in an open split"),
])
def test_parse_split_file_errors_name_file_and_line(tmp_path, bad_line, message):
    split = write_lines(tmp_path / "train.txt", ["a.jpg 0", "b.jpg 1", bad_line, "c.jpg 2"])
    with pytest.raises(ValueError) as err:
        parse_split_file(split, num_classes=3)
    assert f"{split}, line 3" in str(err.value) and message in str(err.value)


def test_open_split_allows_minus_one_only(tmp_path):
    split = write_lines(tmp_path / "open.txt", ["a.jpg -1", "b.jpg 2"])
    assert [e.label for e in parse_split_file(split, num_classes=3, open_split=True)] == [-1, 2]
    write_lines(split, ["a.jpg -1", "b.jpg -2"])
    with pytest.raises(ValueError, match=r"line 2: label -2 outside \[0, 3\) or -1"):
        parse_split_file(split, num_classes=3, open_split=True)


def test_empty_and_missing_split_files(tmp_path):
    empty = write_lines(tmp_path / "empty.txt", ["", "   "])
    with pytest.raises(ValueError, match=rf"{empty}: empty split"):
        parse_split_file(empty, num_classes=3)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        parse_split_file(tmp_path / "nope.txt", num_classes=3)


def test_missing_images_are_reported_with_their_line(tmp_path):
    write_image(tmp_path / "a.png", 0)
    split = write_lines(tmp_path / "s.txt", ["a.png 0", "gone.png 1", "also_gone.png 1"])
    entries = parse_split_file(split, num_classes=2)
    with pytest.raises(FileNotFoundError) as err:
        check_images_exist(tmp_path, entries, str(split))
    message = str(err.value)
    assert "2 of 3 images" in message
    assert f"{split}, line 2: {tmp_path / 'gone.png'}" in message and f"{split}, line 3" in message
    with pytest.raises(FileNotFoundError, match="image root .* does not exist"):
        check_images_exist(tmp_path / "no_root", entries, str(split))


def test_read_class_names(tmp_path):
    names = write_lines(tmp_path / "names.txt", ["cat", "dog"])
    assert read_class_names(names, 2) == ["cat", "dog"]
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        read_class_names(names, 3)


# ---------------------------------------------------------------- images


def test_image_list_items_are_tensor_label_index(tmp_path):
    write_image(tmp_path / "red.png", 2)
    Image.new("L", (5, 7), 128).save(tmp_path / "gray.png")
    entries = [ImageEntry("red.png", 2, "x"), ImageEntry("gray.png", 0, "y")]
    dataset = ImageListDataset(tmp_path, entries)
    image, label, index = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 11, 14) and (label, index) == (2, 0)
    assert torch.allclose(image[:, 0, 0], torch.tensor(color_of(2)) / 255.0)
    gray, label, index = dataset[1]
    assert gray.shape == (3, 7, 5) and (label, index) == (0, 1)  # grayscale converted to RGB
    assert torch.allclose(gray, torch.full_like(gray, 128 / 255.0))
    assert dataset.labels.tolist() == [2, 0]
    resized = dataset.with_transform(default_transform(False, **TINY))
    assert resized[0][0].shape == (3, 8, 8) and len(resized) == 2


def test_image_list_fingerprint_follows_files_labels_and_transform_without_decoding(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", 1)
    write_image(tmp_path / "b.png", 2)
    entries = [ImageEntry("a.png", 1, "x"), ImageEntry("b.png", 2, "y")]
    dataset = ImageListDataset(tmp_path, entries)
    first = dataset.fingerprint()
    monkeypatch.setattr(ImageListDataset, "image_tensor", lambda self, i: pytest.fail("decoded an image"))
    assert ImageListDataset(tmp_path, entries).fingerprint() == first
    assert ImageListDataset(tmp_path, [entries[0], ImageEntry("b.png", 0, "y")]).fingerprint() != first
    assert dataset.with_transform(default_transform(False, **TINY)).fingerprint() != first
    write_image(tmp_path / "b.png", 3, size=(15, 11))                   # the file changes
    assert dataset.fingerprint() != first


def test_default_transforms_sizes_and_normalize():
    image = torch.rand(3, 20, 30)
    for train in (True, False):
        assert default_transform(train, **TINY)(image).shape == (3, 8, 8)
    flat = torch.full((3, 12, 12), 0.5)
    normalized = default_transform(False, 8, 10, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))(flat)
    assert torch.allclose(normalized, torch.zeros(3, 8, 8), atol=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        default_transform(True, image_size=12, resize_size=10)


def test_truncated_and_garbage_images_raise_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    dataset = ImageListDataset(tmp_path, [ImageEntry(n, 0, n) for n in ("full.jpg", "half.jpg", "junk.png")])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert dataset[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match=r"half\.jpg: unreadable or truncated image .*truncated"):
        dataset[1]
    with pytest.raises(ValueError, match=r"junk\.png: unreadable or truncated image"):
        dataset[2]


def test_refuses_to_load_when_truncated_images_are_silently_allowed(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", 0)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES is True"):
        ImageListDataset(tmp_path, [ImageEntry("a.png", 0, "x")])[0]


# ---------------------------------------------------------------- OLTR benchmarks

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
                   "LTCORE_IMAGENET_LT_ROOT", DATASETS["imagenet_lt"].how_to_get):
        assert needle in message
    with pytest.raises(ValueError, match="unknown OLTR benchmark"):
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
    with pytest.raises(ValueError, match="num_classes must be positive"):
        build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=0, **TINY)
    with pytest.raises(ValueError, match=r"ImageNet_LT_train\.txt, line 5: label 1 outside \[0, 1\)"):
        build_oltr_lt("ImageNet_LT", root=tmp_path, num_classes=1, **TINY)


# ---------------------------------------------------------------- iNaturalist 2018

INAT_CATEGORIES = [{"id": 9, "name": "Zebra"}, {"id": 2, "name": "Aster"}, {"id": 5, "name": "Moss"}]


def inat_json(root, split, category_per_image):
    """A COCO-like annotation json and its images; labels follow the sorted category ids (2, 5, 9 -> 0, 1, 2)."""
    images, annotations = [], []
    for k, category_id in enumerate(category_per_image):
        file_name = f"{split}_val2018/Plantae/{category_id}/{k}.jpg"
        write_image(root / file_name, [2, 5, 9].index(category_id), fmt="JPEG")
        images.append({"id": 1000 + k, "file_name": file_name, "width": 14, "height": 11})
        annotations.append({"id": k, "image_id": 1000 + k, "category_id": category_id})
    return {"images": images, "annotations": annotations, "categories": INAT_CATEGORIES}


def write_inat(root, train=None, val=None):
    root.mkdir(parents=True, exist_ok=True)
    train = train or inat_json(root, "train", [2, 2, 2, 5, 5, 9])
    val = val or inat_json(root, "val", [2, 5, 9])
    (root / "train2018.json").write_text(json.dumps(train))
    (root / "val2018.json").write_text(json.dumps(val))
    return train, val


def test_inat2018_builds_from_json(tmp_path, monkeypatch):
    write_inat(tmp_path)
    monkeypatch.setenv("LTCORE_INAT2018_ROOT", str(tmp_path))
    splits = build_inat2018(**TINY)
    assert splits.val is None  # the released val split is the test set
    assert splits.class_names == ["Aster", "Moss", "Zebra"] and splits.class_counts.tolist() == [3, 2, 1]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 2] and splits.test.labels.tolist() == [0, 1, 2]
    for i in range(3):
        image, label, index = splits.test[i]
        assert image.shape == (3, 8, 8) and (label, index) == (i, i)
        assert torch.allclose(image[:, 4, 4], torch.tensor(color_of(label)) / 255.0, atol=3 / 255)
    assert build_dataset("inat2018", root=tmp_path, **TINY).summary()["train"] == 6


def inat_break(data, how):
    if how == "unknown image":
        data["annotations"][1]["image_id"] = 7
    elif how == "unknown category":
        data["annotations"][2]["category_id"] = 4
    elif how == "unannotated":
        del data["annotations"][3]
    elif how == "two annotations":
        data["annotations"].append({"id": 99, "image_id": 1000, "category_id": 5})
    elif how == "no file_name":
        del data["images"][4]["file_name"]
    elif how == "no images":
        data["images"], data["annotations"] = [], []
    elif how == "no categories key":
        del data["categories"]
    return data


@pytest.mark.parametrize("how, message", [
    ("unknown image", r"train2018\.json, annotations\[1\]: image_id 7 is not in 'images'"),
    ("unknown category", r"train2018\.json, annotations\[2\]: category_id 4 is not a training category"),
    ("unannotated", r"1 image\(s\) without annotation, first: .*train2018\.json, images\[3\]"),
    ("two annotations", r"train2018\.json, annotations\[6\]: image 1000 has a second annotation"),
    ("no file_name", r"train2018\.json, images\[4\]: missing key 'file_name'"),
    ("no images", r"train2018\.json: empty split"),
    ("no categories key", r"train2018\.json: missing or non-list key 'categories'"),
])
def test_inat2018_bad_annotations(tmp_path, how, message):
    train, _ = write_inat(tmp_path)
    (tmp_path / "train2018.json").write_text(json.dumps(inat_break(train, how)))
    with pytest.raises(ValueError, match=message):
        build_inat2018(tmp_path, **TINY)


def test_inat2018_missing_or_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_inat2018(tmp_path)
    assert str(tmp_path / "train2018.json") in str(err.value) and DATASETS["inat2018"].how_to_get in str(err.value)
    write_inat(tmp_path)
    (tmp_path / "val2018.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"val2018\.json: not valid json"):
        build_inat2018(tmp_path)
    write_inat(tmp_path)
    (tmp_path / "train_val2018/Plantae/9/5.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"train2018\.json, images\[5\]: .*9/5\.jpg"):
        build_inat2018(tmp_path)


# ---------------------------------------------------------------- CIFAR-LT

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
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({"data": data[part], "labels": labels[part].tolist()}, f)
    test_labels = np.repeat(np.arange(10), n_test_per_class)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.full((len(test_labels), 3072), 7, np.uint8), "labels": test_labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"name{c}" for c in range(10)]}, f)
    return labels


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
    with pytest.raises(ValueError, match="val_per_class must be >= 0"):     # not silently "no validation"
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
    with pytest.raises(ValueError, match="md5.*verify_checksums=False"):  # the fixture is not the official release
        build_cifar_lt(10, root=cifar10_root[0])
    with pytest.raises(ValueError, match="num_classes must be 10"):
        build_cifar_lt(20, root=tmp_path)


def test_cifar100_lt_from_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    labels = np.repeat(np.arange(100), 20)
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": np.zeros((2000, 3072), np.uint8), "fine_labels": labels.tolist()}, f)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": np.zeros((100, 3072), np.uint8), "fine_labels": list(range(100))}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{c}" for c in range(100)]}, f)
    splits = build_dataset("cifar100_lt", root=tmp_path, verify_checksums=False, n_max=20, imbalance_ratio=10)
    assert splits.class_counts.tolist() == longtail_counts(20, 100, 10).tolist()
    assert len(splits.train) == longtail_counts(20, 100, 10).sum() and len(splits.test) == 100
    assert splits.class_names[99] == "f99" and splits.name == "cifar100_lt_exp10"


def test_cifar_truncated_pickle_names_the_folder(tmp_path):
    write_cifar10(tmp_path, [2] * 10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cifar-10-batches-py: unreadable CIFAR pickle"):
        build_cifar_lt(10, 2, root=tmp_path, verify_checksums=False, n_max=2)
