"""CIFAR-10-LT and CIFAR-100-LT, built from torchvision's CIFAR files the LDAM-DRW way.

Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019
(LDAM-DRW), keep ``int(n_max * imbalance_ratio ** (-i / (C - 1)))`` training images of class ``i``
(:func:`ltcore.data.longtail.longtail_counts`, "exp") with ``n_max`` = 5000 for CIFAR-10 and 500 for
CIFAR-100, and test on the balanced official test split. At ratio 100 CIFAR-10-LT has 12,406 training
images (5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50) and CIFAR-100-LT 10,847.

The files are torchvision's on-disk layout (``<root>/cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta``; ``<root>/cifar-100-python/train``, ``test``, ``meta``: pickles), read
through ``torchvision.datasets.CIFAR10/100``. The root is ``root``, else ``$LTCORE_CIFAR_ROOT``, else
``$LTCORE_DATA`` (where ``torchvision.datasets.CIFAR10($LTCORE_DATA, download=True)`` puts them).
Nothing is downloaded unless ``download=True``.

Checksums: torchvision compares every file with the md5 of the official release. ``verify_checksums=False``
reads files that are not byte-identical to it (e.g. a test fixture, or a re-pickled copy) through a
subclass of the torchvision class whose file lists carry ``md5=None``: torchvision's own
``check_integrity(path, md5=None)`` then only checks that the file exists, and loading is unchanged.

Our reading / choices: LDAM-DRW has no validation split (it reports on the test split), so ``val`` is None
by default. ``val_per_class > 0`` draws a balanced validation split from the training images the long tail
left unused; with the standard ``n_max`` the head class uses all of its images, so that needs a smaller
``n_max`` (an error says so). Images are served in ``[0, 1]`` without mean/std normalisation, like every
ltcore ArrayDataset; the train augmentation is LDAM-DRW's 4-pixel pad-and-crop plus horizontal flip.

Taught in notebook 01, *Real long-tailed benchmarks*.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Optional

import numpy as np

from ltcore.data.datasets import ArrayDataset, LTSplits, RandomCropFlip
from ltcore.data.files import resolve_root
from ltcore.data.longtail import longtail_counts, longtail_indices, validation_indices

ENV_VAR = "LTCORE_CIFAR_ROOT"
N_MAX = {10: 5000, 100: 500}


def torchvision_class(num_classes: int, verify_checksums: bool = True):
    """``torchvision.datasets.CIFAR10`` / ``CIFAR100``, or its subclass that only checks files exist."""
    from torchvision.datasets import CIFAR10, CIFAR100

    if num_classes not in N_MAX:
        raise ValueError(f"num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes}")
    cls = CIFAR10 if num_classes == 10 else CIFAR100
    if verify_checksums:
        return cls
    return type(f"{cls.__name__}WithoutChecksums", (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def expected_files(num_classes: int, root: Path) -> list[Path]:
    """The pickles torchvision reads for CIFAR-``num_classes`` under ``root``."""
    cls = torchvision_class(num_classes)
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [root / cls.base_folder / name for name in names]


def load_cifar(num_classes: int = 10, root: Optional[str | os.PathLike] = None, download: bool = False,
               verify_checksums: bool = True) -> dict:
    """The CIFAR arrays via torchvision: ``{train,test}_images`` uint8 ``[N, 32, 32, 3]``, ``{train,test}_labels``
    int64 ``[N]`` and ``class_names``; clear errors for missing, corrupted or foreign files."""
    from ltcore.data.registry import DATASETS

    root = resolve_root(root, ENV_VAR, "")
    cls = torchvision_class(num_classes, verify_checksums)
    missing = [str(path) for path in expected_files(num_classes, root) if not path.is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found under {root}: missing {', '.join(missing)}. Pass root= or set {ENV_VAR} "
            f"or LTCORE_DATA. To get it: {DATASETS[f'cifar{num_classes}_lt'].how_to_get} "
            "(or build_cifar_lt(..., download=True) here if this machine has internet access)."
        )
    arrays = {}
    for split in ("train", "test"):
        try:
            dataset = cls(str(root), train=split == "train", download=download)
        except RuntimeError as exc:  # torchvision's "not found or corrupted": the files exist, so the md5 failed
            raise ValueError(
                f"CIFAR-{num_classes} files under {root / cls.base_folder} fail torchvision's integrity (md5) check "
                "(corrupted, or not the official release); re-download them, or pass verify_checksums=False to read "
                f"them as they are ({exc})"
            ) from exc
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{root / cls.base_folder}: unreadable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
        labels = np.asarray(dataset.targets, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{root / cls.base_folder}: {split} label outside [0, {num_classes})")
        arrays[f"{split}_images"] = dataset.data  # (N, 32, 32, 3) uint8, a strided view of torchvision's (N, 3, 32, 32)
        arrays[f"{split}_labels"] = labels
        arrays["class_names"] = list(dataset.classes)
    return arrays


def build_cifar_lt(num_classes: int = 10, imbalance_ratio: float = 100.0, profile: str = "exp",
                  root: Optional[str | os.PathLike] = None, seed: int = 0, val_per_class: int = 0,
                  download: bool = False, augment: bool = True, n_max: Optional[int] = None,
                  verify_checksums: bool = True) -> LTSplits:
    """CIFAR-10-LT / CIFAR-100-LT: a seeded long-tailed subset of the train split, the official test split.

    Items are ``(image [3, 32, 32] float in [0, 1], label, index)``; ``train.source_indices`` are the
    images' positions in the full CIFAR train split. ``n_max`` defaults to 5000 / 500 (LDAM-DRW).
    """
    arrays = load_cifar(num_classes, root, download, verify_checksums)
    n_max = N_MAX[num_classes] if n_max is None else int(n_max)
    labels = arrays["train_labels"]
    counts = longtail_counts(n_max, num_classes, imbalance_ratio, profile)
    train_idx = longtail_indices(labels, counts, seed)
    images, names = arrays["train_images"], arrays["class_names"]
    val_idx = validation_indices(labels, train_idx, val_per_class, num_classes, n_max, seed)  # rejects < 0
    val = ArrayDataset(images[val_idx], labels[val_idx], None, val_idx, names) if val_per_class else None
    return LTSplits(
        name=f"cifar{num_classes}_lt_{profile}{imbalance_ratio:g}",
        train=ArrayDataset(images[train_idx], labels[train_idx], RandomCropFlip(padding=4) if augment else None,
                           train_idx, names),
        val=val,
        test=ArrayDataset(arrays["test_images"], arrays["test_labels"], None, None, names),
        class_counts=counts,
        class_names=list(names),
    )
