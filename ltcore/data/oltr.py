"""ImageNet-LT, Places-LT and SUN-LT from the OLTR split files.

Liu et al., "Large-Scale Long-Tailed Recognition in an Open World" (OLTR), CVPR 2019, released the
splits as text files, one ``relative/path label`` per line: ``{benchmark}_train.txt``, ``_val.txt``,
``_test.txt`` and, for ImageNet-LT and Places-LT, ``_open.txt`` (open-set images, label -1).
Zhu & Yang, CVPR 2020, Sec. 4.1: "We follow [21] to construct the ImageNet-LT dataset. In ImageNet-LT,
there are 1K categories and 115.8K images, with maximally 1,280 images per class and minimally 5 images
per class. The test set is balanced. The open set is constructed by the additional classes of images in
ImageNet-2010." Places-LT has 365 classes (Places365), SUN-LT 397 (SUN397).

Where files are looked for: the image root is ``root``, else ``$LTCORE_<BENCHMARK>_ROOT``
(``LTCORE_IMAGENET_LT_ROOT``, ``LTCORE_PLACES_LT_ROOT``, ``LTCORE_SUN_LT_ROOT``), else
``$LTCORE_DATA/<benchmark>``; the split files are in ``split_dir`` (default: the image root).
Class counts are the training-split label histogram; class names come from
``{benchmark}_classnames.txt`` or ``classnames.txt`` in ``split_dir`` (one per line) if present,
else ``class_{i}``.

A root named by ``root`` or the environment variable must exist (an error names it); it is never
replaced by another folder. Each split lists an image once (a repeat is an error naming both lines);
an image listed in two splits is reported with a :class:`ltcore.data.files.SplitOverlapWarning`.

Our reading: the OLTR open split is evaluated with the same transform as the test split; the open
split is optional (SUN-LT has none) and may only carry labels in ``[0, num_classes)`` or -1.

Taught in notebook 01, *How the standard benchmarks are built*.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ltcore.checks import check_choice, check_int
from ltcore.data.datasets import LTSplits, class_counts_of
from ltcore.data.files import (build_image_list, default_class_names, parse_split_file, read_class_names,
                               require_files, resolve_root, split_transforms, warn_on_overlap)


@dataclass(frozen=True)
class OLTRBenchmark:
    name: str            # file prefix of the split files, e.g. "ImageNet_LT"
    num_classes: int
    registry_name: str   # its name in ltcore.data.registry

    @property
    def env_var(self) -> str:
        return f"LTCORE_{self.name.upper()}_ROOT"


BENCHMARKS = {b.name: b for b in [
    OLTRBenchmark("ImageNet_LT", 1000, "imagenet_lt"),
    OLTRBenchmark("Places_LT", 365, "places_lt"),
    OLTRBenchmark("SUN_LT", 397, "sun_lt"),
]}
REQUIRED_SPLITS = ("train", "val", "test")


def split_files(benchmark: OLTRBenchmark, split_dir: Path) -> dict[str, Path]:
    """Paths of the four split files (the open one may not exist)."""
    return {split: split_dir / f"{benchmark.name}_{split}.txt" for split in (*REQUIRED_SPLITS, "open")}


def find_class_names(benchmark: OLTRBenchmark, split_dir: Path, num_classes: int,
                     class_names_file: Optional[str | os.PathLike]) -> list[str]:
    candidates = [Path(class_names_file)] if class_names_file is not None else [
        split_dir / f"{benchmark.name}_classnames.txt", split_dir / "classnames.txt"]
    if class_names_file is not None and not candidates[0].is_file():
        raise FileNotFoundError(f"class_names_file not found: {class_names_file}")
    for path in candidates:
        if path.is_file():
            return read_class_names(path, num_classes)
    return default_class_names(num_classes)


def build_oltr_lt(benchmark: str, root: Optional[str | os.PathLike] = None,
                 split_dir: Optional[str | os.PathLike] = None, transform: Optional[Callable] = None,
                 train_transform: Optional[Callable] = None, num_classes: Optional[int] = None,
                 image_size: int = 224, resize_size: int = 256, check_files: bool = True,
                 class_names_file: Optional[str | os.PathLike] = None) -> LTSplits:
    """An OLTR benchmark (ImageNet_LT, Places_LT or SUN_LT) from its split files and images.

    Args:
        benchmark: "ImageNet_LT", "Places_LT" or "SUN_LT".
        root: image root the split-file paths are relative to (see the module docstring for defaults).
        split_dir: folder of ``{benchmark}_{train,val,test,open}.txt``; default ``root``.
        transform: used for every split when given (e.g. a frozen encoder's preprocessing); default:
            the papers' train transform for train and the eval transform for val / test / open.
        train_transform: overrides the train split's transform only.
        num_classes: default 1000 / 365 / 397.
        image_size, resize_size: crop and shorter-side sizes of the default transforms (224 / 256).
        check_files: stat every listed image now (eager; see :mod:`ltcore.data.files`).
        class_names_file: one class name per line; default looked for in ``split_dir``.

    Items are ``(image [3, image_size, image_size], label, index)``; open-set items have label -1.
    """
    spec = BENCHMARKS[check_choice("benchmark", benchmark, BENCHMARKS)]
    num_classes = spec.num_classes if num_classes is None else check_int("num_classes", num_classes, low=1)
    data_root = resolve_root(root, spec.env_var, spec.name)
    image_root = data_root.path
    split_dir = image_root if split_dir is None else Path(split_dir)
    files = split_files(spec, split_dir)
    from ltcore.data.registry import DATASETS  # the registry imports builders lazily: no import cycle

    require_files(
        [files[split] for split in REQUIRED_SPLITS], f"{benchmark} split files not found in {split_dir}",
        DATASETS[spec.registry_name].how_to_get,
        hint=f"The image root is {data_root}. Pass split_dir= / root=, or set {spec.env_var} (images) or "
             f"LTCORE_DATA (looks in LTCORE_DATA/{benchmark}). ",
    )
    class_names = find_class_names(spec, split_dir, num_classes, class_names_file)
    train_tf, eval_tf = split_transforms(transform, train_transform, image_size, resize_size)

    def load(split: str, tf: Callable, open_split: bool = False):
        entries = parse_split_file(files[split], num_classes, open_split=open_split)
        return build_image_list(image_root, entries, str(files[split]), tf, class_names, check_files)

    splits = {split: load(split, train_tf if split == "train" else eval_tf, open_split=split == "open")
              for split in (*REQUIRED_SPLITS, "open") if split in REQUIRED_SPLITS or files[split].is_file()}
    warn_on_overlap({str(files[split]): dataset.entries for split, dataset in splits.items()})
    return LTSplits(
        name=spec.registry_name,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        class_counts=class_counts_of(splits["train"].labels, num_classes),
        class_names=class_names,
        open_set=splits.get("open"),
    )
