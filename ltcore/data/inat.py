"""iNaturalist 2018 from its COCO-like json annotations.

Van Horn et al., "The iNaturalist Species Classification and Detection Dataset", CVPR 2018; used by
Zhu & Yang, CVPR 2020, Sec. 4.1 ("iNaturalist 2018 [14], which is a fine-grained object recognition
dataset with high-class imbalance") and by Long et al. (RAC), CVPR 2022, Sec. 4.2 (8,142 species).

Each json holds ``images`` ``[{id, file_name, ...}]``, ``annotations`` ``[{image_id, category_id, ...}]``
(one per image) and ``categories`` ``[{id, name, ...}]``; ``file_name`` is relative to the image root.

The val split is the test set. RAC, supplementary: "For iNaturalist2018, following prior work, we report
results on the released validation split, as labels for the test set are not publicly available."
So ``LTSplits.test`` is ``val2018.json`` (3 images per class) and ``LTSplits.val`` is None: carve a
validation split from the training images yourself if you need one.

Our reading / choices: labels are the categories' ids in sorted order mapped to ``0..K-1`` (the identity
for iNat 2018, whose ids are already ``0..8141``); the categories of the training json define the
classes, and a val annotation naming any other category is an error, as is an image without exactly one
annotation -- nothing is silently dropped. Ids are json integers (iNat's and COCO's are): a string or
boolean id, which would sort or match unexpectedly (``true == 1``), is an error naming the file and the id.
Each ``file_name`` is a string relative to the image root that stays inside it, and names one image
only; an image in both jsons is reported with a :class:`ltcore.data.files.SplitOverlapWarning`.
The image root is ``root``, else ``$LTCORE_INAT2018_ROOT``, else ``$LTCORE_DATA/iNat2018`` (a root named
by the argument or the variable must exist); relative json paths are looked for in the root.

Taught in notebook 01, *How the standard benchmarks are built*.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from ltcore.data.datasets import LTSplits, class_counts_of
from ltcore.data.files import (ImageEntry, build_image_list, check_unique, read_listing, require_files, resolve_root,
                               split_transforms, warn_on_overlap)

ENV_VAR = "LTCORE_INAT2018_ROOT"
DATA_SUBDIR = "iNat2018"


def read_coco_json(path: Path) -> dict[str, Any]:
    """Load an annotation json and check its top-level keys, with errors naming the file."""
    try:
        data = json.loads(read_listing(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid json ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a json object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or non-list key {key!r}")
    return data


def field(record: Any, key: str, where: str, kind: type | None = None) -> Any:
    """``record[key]``, checked to be of ``kind`` (``int``: a json integer, not a boolean) when given."""
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where}: missing key {key!r}")
    value = record[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: {key} {value!r} is not an integer (iNaturalist ids are json integers)")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{where}: {key} {value!r} is not a string")
    return value


def category_index(data: dict[str, Any], path: Path) -> tuple[dict[Any, int], list[str]]:
    """Map of category id -> contiguous label (ids in sorted order), and the class names in label order."""
    names = {}
    for k, category in enumerate(data["categories"]):
        cid = field(category, "id", f"{path}, categories[{k}]", int)
        if cid in names:
            raise ValueError(f"{path}, categories[{k}]: duplicate category id {cid!r}")
        names[cid] = str(category.get("name", f"class_{cid}"))
    if not names:
        raise ValueError(f"{path}: no categories")
    ordered = sorted(names)
    return {cid: label for label, cid in enumerate(ordered)}, [names[cid] for cid in ordered]


def entries_from_json(data: dict[str, Any], path: Path, label_of: dict[Any, int]) -> list[ImageEntry]:
    """One entry per image, labelled by its single annotation; every inconsistency is an error naming the file."""
    images = {}
    for k, image in enumerate(data["images"]):
        where = f"{path}, images[{k}]"
        image_id = field(image, "id", where, int)
        if image_id in images:
            raise ValueError(f"{where}: duplicate image id {image_id!r}")
        images[image_id] = (field(image, "file_name", where, str), where)
    if not images:
        raise ValueError(f"{path}: empty split (no images)")
    label_by_image = {}
    for k, annotation in enumerate(data["annotations"]):
        where = f"{path}, annotations[{k}]"
        image_id = field(annotation, "image_id", where, int)
        category_id = field(annotation, "category_id", where, int)
        if image_id not in images:
            raise ValueError(f"{where}: image_id {image_id!r} is not in 'images'")
        if category_id not in label_of:
            raise ValueError(f"{where}: category_id {category_id!r} is not a training category")
        if image_id in label_by_image:
            raise ValueError(f"{where}: image {image_id!r} has a second annotation (expected exactly one)")
        label_by_image[image_id] = label_of[category_id]
    unlabelled = [where for image_id, (_, where) in images.items() if image_id not in label_by_image]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} image(s) without annotation, first: {unlabelled[0]}")
    entries = [ImageEntry(file_name, label_by_image[image_id], where)
               for image_id, (file_name, where) in images.items()]
    check_unique(entries)
    return entries


def build_inat2018(root: Optional[str | os.PathLike] = None, train_json: str | os.PathLike = "train2018.json",
                  val_json: str | os.PathLike = "val2018.json", transform: Optional[Callable] = None,
                  train_transform: Optional[Callable] = None, image_size: int = 224, resize_size: int = 256,
                  check_files: bool = True) -> LTSplits:
    """iNaturalist 2018: long-tailed train split and the released val split as the (balanced) test set.

    Args:
        root: image root the jsons' ``file_name`` entries are relative to; relative json paths are joined to it.
        transform: used for both splits when given; default the papers' train / eval transforms.
        train_transform: overrides the train split's transform only.
        image_size, resize_size: crop and shorter-side sizes of the default transforms (224 / 256).
        check_files: stat every listed image now (eager; see :mod:`ltcore.data.files`).

    Items are ``(image [3, image_size, image_size], label, index)``; ``val`` is None (see the module docstring).
    """
    from ltcore.data.registry import DATASETS

    data_root = resolve_root(root, ENV_VAR, DATA_SUBDIR)
    image_root = data_root.path
    train_path, val_path = image_root / train_json, image_root / val_json
    require_files([train_path, val_path], "iNaturalist 2018 annotations", DATASETS["inat2018"].how_to_get,
                  hint=f"The image root is {data_root}. Pass root= (or absolute train_json= / val_json=) or set "
                       f"{ENV_VAR} or LTCORE_DATA (looks in LTCORE_DATA/{DATA_SUBDIR}). ")
    train_data = read_coco_json(train_path)
    label_of, class_names = category_index(train_data, train_path)
    train_entries = entries_from_json(train_data, train_path, label_of)
    test_entries = entries_from_json(read_coco_json(val_path), val_path, label_of)
    warn_on_overlap({str(train_path): train_entries, str(val_path): test_entries})
    train_tf, eval_tf = split_transforms(transform, train_transform, image_size, resize_size)
    train = build_image_list(image_root, train_entries, str(train_path), train_tf, class_names, check_files)
    return LTSplits(
        name="inat2018",
        train=train,
        val=None,
        test=build_image_list(image_root, test_entries, str(val_path), eval_tf, class_names, check_files),
        class_counts=class_counts_of(train.labels, len(class_names)),
        class_names=class_names,
    )
