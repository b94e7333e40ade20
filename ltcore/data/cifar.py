"""CIFAR-10-LT and CIFAR-100-LT, built from torchvision's CIFAR files the LDAM-DRW way.

Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019
(LDAM-DRW), keep ``int(n_max * imbalance_ratio ** (-i / (C - 1)))`` training images of class ``i``
(:func:`ltcore.data.longtail.longtail_counts`, "exp") with ``n_max`` = 5000 for CIFAR-10 and 500 for
CIFAR-100, and test on the balanced official test split. At ratio 100 CIFAR-10-LT has 12,406 training
images (5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50) and CIFAR-100-LT 10,847.

The files are torchvision's on-disk layout (``<root>/cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta``; ``<root>/cifar-100-python/train``, ``test``, ``meta``: pickles), read
with torchvision's file lists and checksums. The root is ``root``, else ``$LTCORE_CIFAR_ROOT``, else
``$LTCORE_DATA`` (where ``torchvision.datasets.CIFAR10($LTCORE_DATA, download=True)`` puts them).
Nothing is downloaded unless ``download=True``.

Reading without running code: the files are Python pickles, and unpickling can run code (a crafted file's
``__reduce__`` calls whatever it names). ltcore never hands them to ``pickle.load``: :class:`CifarUnpickler`
rebuilds only what CIFAR's files hold -- dicts, lists, strings, numbers and numpy uint8 arrays -- and refuses
every other object before it is built, with an error naming the file and the object. This holds with and
without ``verify_checksums``, so a re-pickled copy or a test fixture (``verify_checksums=False``) is read as
safely as the official release. With ``verify_checksums`` (the default) each file's md5 must also match the
official release's (torchvision's list), and a mismatch names the file.

Each batch is checked on its own, errors naming the batch file: ``data`` is a uint8 array ``[N, 3072]``,
there are as many labels as images (counting over all batches could pair images with another batch's
labels), labels are integers in ``[0, num_classes)``, and the meta file names ``num_classes`` classes.

Our reading / choices: LDAM-DRW has no validation split (it reports on the test split), so ``val`` is None
by default. ``val_per_class > 0`` draws a balanced validation split from the training images the long tail
left unused; with the standard ``n_max`` the head class uses all of its images, so that needs a smaller
``n_max`` (an error says so). Images are served in ``[0, 1]`` without mean/std normalisation, like every
ltcore ArrayDataset; the train augmentation is LDAM-DRW's 4-pixel pad-and-crop plus horizontal flip.

Taught in notebook 01, *How the standard benchmarks are built*.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ltcore.checks import check_choice, check_int
from ltcore.data.datasets import ArrayDataset, LTSplits, RandomCropFlip
from ltcore.data.files import resolve_root
from ltcore.data.longtail import longtail_counts, longtail_indices, validation_indices

ENV_VAR = "LTCORE_CIFAR_ROOT"
N_MAX = {10: 5000, 100: 500}
IMAGE_BYTES = 3 * 32 * 32  # one image, channel-major: 1024 red, 1024 green, 1024 blue bytes


def torchvision_class(num_classes: int):
    """``torchvision.datasets.CIFAR10`` / ``CIFAR100``: their file lists, md5 sums, meta key and download url."""
    from torchvision.datasets import CIFAR10, CIFAR100

    check_choice("num_classes", num_classes, N_MAX)
    return CIFAR10 if num_classes == 10 else CIFAR100


def expected_files(num_classes: int, root: Path) -> list[Path]:
    """The pickles of CIFAR-``num_classes`` under ``root``, in torchvision's layout."""
    cls = torchvision_class(num_classes)
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [root / cls.base_folder / name for name in names]


def latin1_bytes(text: str, encoding: str) -> bytes:
    """What a protocol-2 pickle calls to rebuild ``bytes`` (``_codecs.encode(text, "latin1")``), and nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def numpy_rebuilders() -> dict[tuple[str, str], Any]:
    """The callables a pickled numpy array may name, under numpy 1's and numpy 2's module paths."""
    array = np.zeros(1, np.uint8)
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): latin1_bytes}
    for package in ("numpy.core", "numpy._core"):
        found[(f"{package}.multiarray", "_reconstruct")] = array.__reduce__()[0]
        found[(f"{package}.multiarray", "scalar")] = np.uint8(0).__reduce__()[0]
        found[(f"{package}.numeric", "_frombuffer")] = array.__reduce_ex__(5)[0]
    return found


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, strings, numbers and numpy arrays, and refuses anything else.

    Every object a pickle builds beyond the built-in containers goes through :meth:`find_class`, so refusing there
    stops a code-running payload before it runs.
    """

    allowed = numpy_rebuilders()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(
                f"refused to build {module}.{name}: a CIFAR file holds only dicts, lists, strings, numbers and "
                "numpy arrays, and building other objects could run code")
        return self.allowed[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: CIFAR files have none")


def read_cifar_pickle(path: Path, md5: Optional[str]) -> Any:
    """The object pickled in ``path`` (after checking its md5 against ``md5`` unless None), built safely."""
    if md5 is not None:
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        if digest != md5:
            raise ValueError(
                f"{path}: md5 {digest} differs from the official release's {md5} (corrupted, or not the official "
                "release); re-download it, or pass verify_checksums=False to read the files as they are "
                "(still without running any code they might contain)")
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, encoding="latin1").load()  # latin1: the official files are Python 2 pickles
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: unreadable CIFAR pickle ({type(exc).__name__}: {exc})") from exc


def read_batch(path: Path, md5: Optional[str], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's ``(images uint8 [N, 3072], labels int64 [N])``, checked; errors name the file."""
    batch = read_cifar_pickle(path, md5)
    labels = batch.get("labels", batch.get("fine_labels")) if isinstance(batch, dict) else None
    if labels is None or "data" not in batch:
        raise ValueError(f"{path}: not a CIFAR batch (a dict with 'data' and 'labels' or 'fine_labels')")
    images = batch["data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != IMAGE_BYTES:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array [N, {IMAGE_BYTES}], got {got}")
    if not isinstance(labels, list) or any(isinstance(y, bool) or not isinstance(y, (int, np.integer)) for y in labels):
        raise ValueError(f"{path}: labels must be a list of integers")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.size:
        raise ValueError(f"{path}: label {int(outside[0])} outside [0, {num_classes})")
    return images, labels


def read_meta(path: Path, md5: Optional[str], key: str, num_classes: int) -> list[str]:
    """The class names in the meta file (``key``: ``label_names`` or ``fine_label_names``), checked."""
    meta = read_cifar_pickle(path, md5)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected {key!r}, a list of {num_classes} class names")
    return names


def load_cifar(num_classes: int = 10, root: Optional[str | os.PathLike] = None, download: bool = False,
               verify_checksums: bool = True) -> dict:
    """The CIFAR arrays: ``{train,test}_images`` uint8 ``[N, 32, 32, 3]``, ``{train,test}_labels`` int64 ``[N]``
    and ``class_names``; clear errors naming the file for missing, corrupted, inconsistent or foreign files.

    No pickle is ever unpickled unrestricted (see the module docstring), with or without ``verify_checksums``.
    """
    from ltcore.data.registry import DATASETS

    cls = torchvision_class(num_classes)
    data_root = resolve_root(root, ENV_VAR, "", must_exist=not download)
    root = data_root.path
    missing = [str(path) for path in expected_files(num_classes, root) if not path.is_file()]
    if missing and download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    elif missing:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found under {data_root}: missing {', '.join(missing)}. Pass root= or set "
            f"{ENV_VAR} or LTCORE_DATA. To get it: {DATASETS[f'cifar{num_classes}_lt'].how_to_get} "
            "(or build_cifar_lt(..., download=True) here if this machine has internet access)."
        )
    folder = root / cls.base_folder
    arrays = {}
    for split, file_list in (("train", cls.train_list), ("test", cls.test_list)):
        batches = [read_batch(folder / name, md5 if verify_checksums else None, num_classes) for name, md5 in file_list]
        images = np.concatenate([batch_images for batch_images, _ in batches])
        arrays[f"{split}_images"] = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3072) -> (N, 32, 32, 3)
        arrays[f"{split}_labels"] = np.concatenate([labels for _, labels in batches])
    meta_md5 = cls.meta["md5"] if verify_checksums else None
    arrays["class_names"] = read_meta(folder / cls.meta["filename"], meta_md5, cls.meta["key"], num_classes)
    return arrays


def build_cifar_lt(num_classes: int = 10, imbalance_ratio: float = 100.0, profile: str = "exp",
                  root: Optional[str | os.PathLike] = None, seed: int = 0, val_per_class: int = 0,
                  download: bool = False, augment: bool = True, n_max: Optional[int] = None,
                  verify_checksums: bool = True) -> LTSplits:
    """CIFAR-10-LT / CIFAR-100-LT: a seeded long-tailed subset of the train split, the official test split.

    Items are ``(image [3, 32, 32] float in [0, 1], label, index)``; ``train.source_indices`` are the
    images' positions in the full CIFAR train split. ``n_max`` defaults to 5000 / 500 (LDAM-DRW).
    ``verify_checksums=False`` reads files that differ from the official release (a fixture, a re-pickled copy);
    they are still read without running any code they contain.
    """
    arrays = load_cifar(num_classes, root, download, verify_checksums)
    n_max = N_MAX[num_classes] if n_max is None else check_int("n_max", n_max, low=1)
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
