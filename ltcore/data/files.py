"""Image-list machinery shared by the real-dataset loaders (OLTR split files, iNaturalist json).

A real long-tailed benchmark is a list of ``(relative image path, label)`` pairs joined to an
image root. This module parses such lists with errors that name the file and the 1-based line,
checks that the listed images exist, and serves them as ``(image, label, index)`` items like
:class:`ltcore.data.datasets.ArrayDataset`.

The default transforms follow Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention
for Long-Tailed Visual Recognition", CVPR 2020, Sec. 4.2: "The shorter side of each image is
first resized to 256, and then we randomly sample a 224 x 224 crop from the resized image. The
images are randomly flipped."
Our reading: that sentence describes training; for evaluation we resize the shorter side to 256
and take the centre 224 x 224 crop (the OLTR evaluation transform the paper follows [21]).

Choices written down here:

- Split-file lines are ``relative/path label``; the label is the last whitespace-separated field
  (so a path may contain spaces). Blank lines carry no entry and are skipped; every other line
  is an entry or an error -- nothing is silently dropped.
- The existence check of the listed images is *eager* (``check_files=True``): one ``stat()`` per
  image at construction (measured: 1.1 s for 116,000 files in 1,000 folders, local disk, warm cache),
  so a wrong root fails at once instead of hours into training. ``check_files=False`` skips it
  (e.g. on a slow network filesystem); a missing image then fails when it is loaded, still naming
  the file.
- Images are decoded with PIL, converted to RGB, and turned into a float tensor ``[3, H, W]`` in
  ``[0, 1]`` *before* the transform, so every dataset of ltcore hands its transform the same kind
  of input (ArrayDataset does the same). No mean/std normalisation by default: pretrained encoders
  bring their own; pass ``normalize=(mean, std)`` (e.g. ``ltcore.models.IMAGENET_MEAN_STD``) to add it.
- A truncated image is an error: PIL raises on ``load()`` as long as
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is False, and we refuse to load while some other code has
  set it to True, because PIL would then silently pad the missing part with grey.

Taught in notebook 01, *Real long-tailed benchmarks*.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from ltcore.data.datasets import OPEN_LABEL


@dataclass(frozen=True)
class ImageEntry:
    """One listed image: its path relative to the image root, its label, and where it was listed.

    ``origin`` is a human-readable location used in error messages, e.g.
    ``"/data/ImageNet_LT_train.txt, line 17"`` or ``"/data/val2018.json, images[3]"``.
    """

    path: str
    label: int
    origin: str


def parse_split_file(split_file: str | os.PathLike, num_classes: int, open_split: bool = False) -> list[ImageEntry]:
    """Parse an OLTR-style split file (``relative/path label`` per line) into entries.

    Labels must lie in ``[0, num_classes)``; ``open_split=True`` also allows the open-set label -1.
    Raises FileNotFoundError for a missing file and ValueError naming the file and the 1-based line
    for a malformed line, a non-integer label or an out-of-range label, and for a file with no entry.
    """
    split_file = Path(split_file)
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file}")
    try:
        lines = split_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{split_file}: not a UTF-8 text split file ({exc})") from exc
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{split_file}, line {number}"
        fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(f"{where}: malformed line {line!r}; expected 'relative/path label'")
        path, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(f"{where}: label {label_text!r} is not an integer") from None
        check_label(label, num_classes, open_split, where)
        entries.append(ImageEntry(path, label, where))
    if not entries:
        raise ValueError(f"{split_file}: empty split (no 'relative/path label' line)")
    return entries


def check_label(label: int, num_classes: int, open_split: bool, where: str) -> None:
    """Raise a ValueError naming ``where`` unless ``label`` is in ``[0, num_classes)`` (or -1 in an open split)."""
    if 0 <= label < num_classes or (open_split and label == OPEN_LABEL):
        return
    if label == OPEN_LABEL:
        raise ValueError(f"{where}: open-set label -1 is only allowed in an open split")
    allowed = f"[0, {num_classes})" + (" or -1" if open_split else "")
    raise ValueError(f"{where}: label {label} outside {allowed}")


def check_images_exist(root: str | os.PathLike, entries: Sequence[ImageEntry], listing: str) -> None:
    """Raise FileNotFoundError naming every missing image (the first few with their line) under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} (for {listing}) does not exist or is not a folder")
    missing = [entry for entry in entries if not (root / entry.path).is_file()]
    if missing:
        shown = "; ".join(f"{entry.origin}: {root / entry.path}" for entry in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(entries)} images listed in {listing} are missing under {root}: {shown}{more}"
        )


def require_files(paths: Iterable[Path], what: str, how_to_get: str, hint: str = "") -> None:
    """Raise one FileNotFoundError listing every missing path, where we looked, and how to get the files."""
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{what}: missing {', '.join(missing)}. {hint}To get them: {how_to_get}."
        )


def read_class_names(path: str | os.PathLike, num_classes: int) -> list[str]:
    """Class names from a text file with one name per line, line ``i`` naming class ``i``."""
    path = Path(path)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names for {num_classes} classes (one name per line)")
    return names


def default_class_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and convert it to RGB; truncated or unreadable files raise a ValueError naming them."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported code); truncated images would be "
            f"silently padded with grey. Set it back to False before loading {path}."
        )
    try:
        with Image.open(path) as image:
            image.load()  # decodes everything now, so truncation raises here rather than later
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})") from exc


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float tensor ``[3, H, W]`` in ``[0, 1]``."""
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (H, W, 3) -> (3, H, W)


def default_transform(train: bool, image_size: int = 224, resize_size: int = 256,
                      normalize: Optional[tuple[Sequence[float], Sequence[float]]] = None) -> Callable:
    """The papers' transform on a float tensor ``[3, H, W]`` -> ``[3, image_size, image_size]``.

    train: shorter side to ``resize_size``, random ``image_size`` crop, random horizontal flip.
    eval:  shorter side to ``resize_size``, centre ``image_size`` crop.
    """
    from torchvision import transforms

    if image_size > resize_size:
        raise ValueError(f"image_size ({image_size}) must not exceed resize_size ({resize_size})")
    steps = [transforms.Resize(resize_size, antialias=True)]
    if train:
        steps += [transforms.RandomCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps += [transforms.CenterCrop(image_size)]
    if normalize is not None:
        steps.append(transforms.Normalize(*normalize))
    return transforms.Compose(steps)


def split_transforms(transform: Optional[Callable], train_transform: Optional[Callable], image_size: int,
                     resize_size: int) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms: ``transform`` for every split when given, ``train_transform`` for train only,
    else the papers' defaults (:func:`default_transform`)."""
    eval_tf = transform if transform is not None else default_transform(False, image_size, resize_size)
    if train_transform is not None:
        return train_transform, eval_tf
    return (transform if transform is not None else default_transform(True, image_size, resize_size)), eval_tf


def resolve_root(root: Optional[str | os.PathLike], env_var: str, data_subdir: str) -> Path:
    """A dataset folder: the argument, else ``$env_var``, else ``$LTCORE_DATA/data_subdir``."""
    from ltcore.paths import data_dir

    if root is not None:
        return Path(root)
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    return data_dir() / data_subdir


class ImageListDataset(Dataset):
    """Images listed by path under a root, loaded lazily with PIL; items are ``(image, label, index)``.

    Args:
        root: folder the entries' paths are relative to.
        entries: the listed images (see :func:`parse_split_file`).
        transform: optional callable on the float image tensor ``[3, H, W]`` in ``[0, 1]``.
        class_names: names of the classes, for display.

    ``labels`` (int64 ``[N]``) is available without touching the images, e.g. for class-balanced samplers.
    """

    def __init__(self, root: str | os.PathLike, entries: Sequence[ImageEntry], transform: Optional[Callable] = None,
                 class_names: Sequence[str] = ()):
        self.root = Path(root)
        self.entries = list(entries)
        self.labels = np.asarray([entry.label for entry in self.entries], dtype=np.int64)
        self.transform = transform
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, i: int) -> Path:
        return self.root / self.entries[i].path

    def image_tensor(self, i: int) -> torch.Tensor:
        """The ``i``-th image as a float tensor ``[3, H, W]`` in ``[0, 1]``, untransformed."""
        return pil_to_tensor(load_rgb(self.image_path(i)))

    def __getitem__(self, i: int):
        image = self.image_tensor(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i]), int(i)

    def with_transform(self, transform: Optional[Callable]) -> "ImageListDataset":
        """The same listing with another transform."""
        return ImageListDataset(self.root, self.entries, transform, self.class_names)

    def fingerprint(self) -> str:
        """A short hash of the listing (root, paths, labels, each file's size and modification time) and of the
        transform's repr: keys caches of embeddings without decoding every image (one ``stat`` per file)."""
        digest = hashlib.sha256(f"{self.root.resolve()}|{self.transform!r}".encode())
        for entry in self.entries:
            stat = (self.root / entry.path).stat()
            digest.update(f"{entry.path}|{entry.label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def build_image_list(root: str | os.PathLike, entries: Sequence[ImageEntry], listing: str,
                     transform: Optional[Callable], class_names: Sequence[str], check_files: bool) -> ImageListDataset:
    """An :class:`ImageListDataset`, after the eager existence check unless ``check_files`` is False."""
    if check_files:
        check_images_exist(root, entries, listing)
    return ImageListDataset(root, entries, transform, class_names)
