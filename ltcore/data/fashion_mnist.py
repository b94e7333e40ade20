"""Fashion-MNIST and Fashion-MNIST-LT, the project's offline default dataset.

Xiao et al., "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", 2017: 60,000 train / 10,000 test grayscale 28x28 images,
10 balanced classes. The Debian package ``dataset-fashion-mnist`` ships the
four IDX files under ``/usr/share/datasets/fashion-mnist``.

Fashion-MNIST-LT (our default benchmark) keeps an "exp" long tail of the train
split (ratio 100, ``n_max=1000``: 1000, 599, 359, 215, 129, 77, 46, 27, 16, 10
images), carves a small balanced validation split from the unused train images,
and tests on the official balanced test split.

Where the files are looked for (:func:`candidate_dirs`): the folder given as ``root=``, else
``$LTCORE_FASHION_MNIST``, and only that folder -- if it lacks a file, the error names it; else the
default places in order, where a folder holding only some of the four files is an error too.

Taught in notebook 01, *A long-tailed Fashion-MNIST*.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np

from ltcore.data.datasets import ArrayDataset, LTSplits, RandomCropFlip
from ltcore.data.longtail import longtail_counts, longtail_indices, validation_indices
from ltcore.paths import data_dir

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "LTCORE_FASHION_MNIST"
INSTALL_HINT = (f"install it with `sudo apt-get install {DEBIAN_PACKAGE}` (Debian/Ubuntu), or put the four "
                f"IDX .gz files in a folder and set {ENV_VAR}=<folder>, or run `python -m ltcore data fetch "
                "fashion_mnist` on a machine with internet access")


def candidate_dirs(root: Optional[str | os.PathLike] = None) -> list[tuple[Path, str]]:
    """Folders searched for the IDX files, in order, each with where it came from.

    A folder the user named -- ``root``, else ``$LTCORE_FASHION_MNIST`` -- is the only candidate: if it does
    not hold the files, that is an error naming it, never a quiet switch to another copy. Otherwise the
    default places: ``$LTCORE_DATA/fashion-mnist``, ``$LTCORE_DATA/FashionMNIST/raw`` (torchvision's download)
    and the Debian package's folder. ``LTCORE_DATA`` is shared by every dataset, so a data folder without
    Fashion-MNIST falls through to the Debian copy (the same official files).
    """
    if root is not None:
        return [(Path(root), "the root= argument")]
    if os.environ.get(ENV_VAR):
        return [(Path(os.environ[ENV_VAR]), f"${ENV_VAR}")]
    return [(data_dir() / "fashion-mnist", "the data folder, LTCORE_DATA"),
            (data_dir() / "FashionMNIST" / "raw", "torchvision's download into the data folder"),
            (DEBIAN_DIR, f"the Debian package {DEBIAN_PACKAGE}")]


def find_fashion_mnist(root: Optional[str | os.PathLike] = None) -> Path:
    """The candidate folder holding all four IDX files, or a clear error naming where we looked.

    Errors: a folder named by ``root`` or ``$LTCORE_FASHION_MNIST`` without all four files, and a default
    folder holding only some of them (a partial copy is not skipped: it is probably an interrupted download).
    """
    looked = candidate_dirs(root)
    named_by_user = root is not None or bool(os.environ.get(ENV_VAR))
    for folder, source in looked:
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if not missing:
            return folder
        if named_by_user or len(missing) < len(FILES):
            state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
            raise FileNotFoundError(
                f"Fashion-MNIST folder {folder} (from {source}) {state}; it must hold all of "
                f"{', '.join(FILES.values())}. To get them, {INSTALL_HINT}."
            )
    raise FileNotFoundError(
        "Fashion-MNIST not found. Looked for " + ", ".join(FILES.values()) + " in: "
        + ", ".join(f"{folder} ({source})" for folder, source in looked) + f". To get it, {INSTALL_HINT}."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a (gzipped) IDX file into a uint8 array, with errors that name the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path}: truncated or padded IDX file: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(root: Optional[str | os.PathLike] = None) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays: train/test images ``[N, 28, 28]`` uint8 and labels ``[N]``."""
    folder = find_fashion_mnist(root)
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(f"{folder / FILES[f'{split}_images']} holds {len(images)} images but "
                             f"{folder / FILES[f'{split}_labels']} holds {len(labels)} labels")
        if labels.max() >= len(CLASS_NAMES):
            raise ValueError(f"{folder / FILES[f'{split}_labels']}: label {labels.max()} outside [0, 10)")
    return arrays


def fetch_fashion_mnist(root: Optional[str | os.PathLike] = None) -> Path:
    """Make sure the files exist: already present, else apt-get (as root), else torchvision's downloader.

    Returns the folder holding the files; raises the clear not-found error when every way failed.
    """
    try:
        return find_fashion_mnist(root)
    except FileNotFoundError:
        pass
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"Installing the Debian package {DEBIAN_PACKAGE} ...", flush=True)
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if subprocess.run(["apt-get", "install", "-y", DEBIAN_PACKAGE], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", DEBIAN_PACKAGE], **quiet)
        try:
            return find_fashion_mnist(root)
        except FileNotFoundError:
            pass
    try:  # needs internet; torchvision keeps the .gz files under <data>/FashionMNIST/raw
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(data_dir()), train=train, download=True)
    except Exception as exc:
        print(f"torchvision download failed: {exc}")
    return find_fashion_mnist(root)


def build_fashion_mnist_lt(imbalance_ratio: float = 100.0, n_max: int = 1000, profile: str = "exp",
                          val_per_class: int = 20, test_per_class: Optional[int] = None, seed: int = 0,
                          augment: bool = True, root: Optional[str | os.PathLike] = None) -> LTSplits:
    """Fashion-MNIST-LT: long-tailed train split, balanced val (unused train images) and the official test split.

    With the defaults the train split has 2,478 images in 10 classes (many: 5, medium: 3, few: 2 classes
    under the classifier-balancing convention) and ``val_per_class`` * 10 validation images
    (``val_per_class=0``: no validation split, ``val`` is None, as for CIFAR-LT).
    ``test_per_class`` keeps a seeded balanced subset of the official test split (None: all 1,000 per class);
    the quick CPU profiles use it to keep evaluation short.
    """
    arrays = load_fashion_mnist(root)
    train_labels = arrays["train_labels"].astype(np.int64)
    counts = longtail_counts(n_max, len(CLASS_NAMES), imbalance_ratio, profile)
    train_idx = longtail_indices(train_labels, counts, seed)
    val_idx = validation_indices(train_labels, train_idx, val_per_class, len(CLASS_NAMES), n_max, seed)  # rejects < 0
    transform = RandomCropFlip() if augment else None
    images = arrays["train_images"]
    test_labels = arrays["test_labels"].astype(np.int64)
    test_idx = np.arange(len(test_labels)) if test_per_class is None else \
        longtail_indices(test_labels, np.full(len(CLASS_NAMES), test_per_class), seed + 2)
    return LTSplits(
        name=f"fashion_mnist_lt_{profile}{imbalance_ratio:g}",
        train=ArrayDataset(images[train_idx], train_labels[train_idx], transform, train_idx, CLASS_NAMES),
        val=ArrayDataset(images[val_idx], train_labels[val_idx], None, val_idx, CLASS_NAMES) if val_per_class else None,
        test=ArrayDataset(arrays["test_images"][test_idx], test_labels[test_idx], None, test_idx, CLASS_NAMES),
        class_counts=counts,
        class_names=list(CLASS_NAMES),
    )
