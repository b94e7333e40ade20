"""ltcore.data.inat: iNaturalist 2018 from COCO-like json annotations written by the tests."""
from __future__ import annotations

import json

import pytest
import torch

from ltcore.data import build_dataset
from ltcore.data.files import SplitOverlapWarning
from ltcore.data.inat import build_inat2018
from ltcore.data.registry import DATASETS
from test_data_files import TINY, color_of, write_image

INAT_CATEGORIES = [{"id": 9, "name": "Zebra"}, {"id": 2, "name": "Aster"}, {"id": 5, "name": "Moss"}]


def inat_json(root, split, category_per_image):
    """A COCO-like annotation json and its images; labels follow the sorted category ids (2, 5, 9 -> 0, 1, 2)."""
    images, annotations = [], []
    for k, category_id in enumerate(category_per_image):
        file_name = f"{split}_val2018/Plantae/{category_id}/{k}.jpg"
        write_image(root / file_name, [2, 5, 9].index(category_id), fmt="JPEG")
        images.append({"id": 1000 + k, "file_name": file_name, "width": 14, "height": 11})
        annotations.append({"id": k, "image_id": 1000 + k, "category_id": category_id})
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in INAT_CATEGORIES]}


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
    elif how == "string category id":
        data["categories"][1]["id"] = "2"
    elif how == "boolean category_id":
        data["annotations"][4]["category_id"] = True
    elif how == "string image id":
        data["images"][2]["id"] = "1002"
    elif how == "numeric file_name":
        data["images"][1]["file_name"] = 17
    elif how == "file_name leaves the root":
        data["images"][3]["file_name"] = "../../secret.jpg"
    elif how == "absolute file_name":
        data["images"][3]["file_name"] = "/etc/passwd"
    elif how == "file listed twice":
        data["images"][5]["file_name"] = "train_val2018/Plantae/2/./0.jpg"
    return data


@pytest.mark.parametrize("how, message", [
    ("unknown image", r"train2018\.json, annotations\[1\]: image_id 7 is not in 'images'"),
    ("unknown category", r"train2018\.json, annotations\[2\]: category_id 4 is not a training category"),
    ("unannotated", r"1 image\(s\) without annotation, first: .*train2018\.json, images\[3\]"),
    ("two annotations", r"train2018\.json, annotations\[6\]: image 1000 has a second annotation"),
    ("no file_name", r"train2018\.json, images\[4\]: missing key 'file_name'"),
    ("no images", r"train2018\.json: empty split"),
    ("no categories key", r"train2018\.json: missing or non-list key 'categories'"),
    pytest.param("string category id", r"train2018\.json, categories\[1\]: id '2' is not an integer",
                 marks=pytest.mark.hostile),
    pytest.param("boolean category_id", r"train2018\.json, annotations\[4\]: category_id True is not an integer",
                 marks=pytest.mark.hostile),
    pytest.param("string image id", r"train2018\.json, images\[2\]: id '1002' is not an integer",
                 marks=pytest.mark.hostile),
    pytest.param("numeric file_name", r"train2018\.json, images\[1\]: file_name 17 is not a string",
                 marks=pytest.mark.hostile),
    pytest.param("file_name leaves the root",
                 r"train2018\.json, images\[3\]: image path '../../secret.jpg' leaves the image root",
                 marks=pytest.mark.hostile),
    pytest.param("absolute file_name", r"train2018\.json, images\[3\]: image path '/etc/passwd' is absolute",
                 marks=pytest.mark.hostile),
    pytest.param("file listed twice", r"train2018\.json, images\[5\]: image '.*' is already listed at "
                                      r".*train2018\.json, images\[0\] \(labels 0 and 2\)",
                 marks=pytest.mark.hostile),
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


@pytest.mark.hostile
def test_inat2018_json_with_a_byte_order_mark_loads(tmp_path):
    write_inat(tmp_path)
    for name in ("train2018.json", "val2018.json"):
        path = tmp_path / name
        path.write_text("\ufeff" + path.read_text(), encoding="utf-8")
    assert len(build_inat2018(tmp_path, **TINY).train) == 6


@pytest.mark.hostile
def test_inat2018_image_in_train_and_val_is_reported(tmp_path):
    train, val = write_inat(tmp_path)
    val["images"][2]["file_name"] = train["images"][5]["file_name"]  # a training image of class 9, again class 9
    (tmp_path / "val2018.json").write_text(json.dumps(val))
    with pytest.warns(SplitOverlapWarning, match=r"1 image\(s\) listed in both .*train2018\.json and "
                                                 r".*val2018\.json.*train2018\.json, images\[5\]"):
        build_inat2018(tmp_path, **TINY)
