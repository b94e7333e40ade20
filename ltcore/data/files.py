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
  (so a path may contain spaces) and is an ASCII decimal integer (``-?[0-9]+``: ``int()`` alone would
  also take ``1_0`` or Arabic-Indic digits). Blank lines carry no entry and are skipped; every other
  line is an entry or an error -- nothing is silently dropped. A UTF-8 byte-order mark at the start of
  a listing is dropped; an invisible character inside a path (a byte-order mark further down, a
  control character) is an error naming it.
- A listed path stays inside its image root: it must be relative, and ``os.path.normpath`` of it must
  not start with ``..``. The check is lexical and never touches the file, so a listing cannot even
  learn whether ``/etc/passwd`` exists. Symlinks *inside* the root are followed: dataset folders are
  often assembled from links (``ImageNet_LT/train -> /datasets/imagenet/train``), and whoever can put a
  link in the root could put the image there too; the listing, the file a user may be handed, cannot
  reach outside. None of the formats read here uses absolute paths (OLTR lines look like
  ``train/n01440764/n01440764_10026.JPEG 0``, iNat ``file_name`` like ``train_val2018/Plantae/...``);
  OLTR's reference loader reads a leading ``/`` as relative to the root, which our error message says.
- One image per split: an image listed twice in a split (the same normalised path), with the same or
  another label, is an error naming both places. An image listed in two splits of one benchmark
  (train and test, say) is reported with a :class:`SplitOverlapWarning`, not refused: evaluating on
  training images is sometimes what one wants (a sanity check), but never unknowingly.
- The existence check of the listed images is *eager* (``check_files=True``): one ``stat()`` per
  image at construction (measured: 1.1 s for 116,000 files in 1,000 folders, local disk, warm cache),
  so a wrong root fails at once instead of hours into training. ``check_files=False`` skips it
  (e.g. on a slow network filesystem); a missing image then fails when it is loaded, still naming
  the file. The image root itself is checked either way.
- Images are decoded with PIL and turned into a float tensor ``[3, H, W]`` in ``[0, 1]`` *before* the
  transform, so every dataset of ltcore hands its transform the same kind of input (ArrayDataset does
  the same): 8-bit images through RGB (grey replicated), 16-bit greyscale divided by 65535 (PIL's RGB
  conversion would clip it at 255 and return white), 32-bit integer or float images refused (they
  have no fixed range). No mean/std normalisation by default: pretrained encoders bring their own;
  pass ``normalize=(mean, std)`` (e.g. ``ltcore.models.IMAGENET_MEAN_STD``) to add it.
- A truncated image is an error: PIL raises on ``load()`` as long as
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is False, and we refuse to load while some other code has
  set it to True, because PIL would then silently pad the missing part with grey.

Taught in notebook 01, *How the standard benchmarks are built*.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from ltcore.checks import check_int
from ltcore.data.datasets import OPEN_LABEL

LABEL_PATTERN = re.compile(r"-?[0-9]+")  # ASCII decimal integers only
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class SplitOverlapWarning(UserWarning):
    """The same image is listed in two splits of one benchmark (e.g. train and test)."""


def check_listed_path(path: str, where: str) -> None:
    """Raise a ValueError naming ``where`` unless ``path`` is a relative path that stays inside its root.

    Lexical only (``os.path.normpath``): nothing on disk is touched.
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: image path must be a non-empty string, got {path!r}")
    hidden = [] if path.isascii() and path.isprintable() else \
        [char for char in path if unicodedata.category(char) in ("Cc", "Cf")]
    if hidden:
        char = hidden[0]
        raise ValueError(f"{where}: image path {path!r} contains the invisible character U+{ord(char):04X} "
                         f"({unicodedata.name(char, 'control character')})")
    if os.path.isabs(path):
        raise ValueError(f"{where}: image path {path!r} is absolute; listed paths must be relative to the image "
                         "root (OLTR's reference loader reads a leading '/' as relative to the root: remove it)")
    normalised = os.path.normpath(path)
    if normalised == "." or normalised == os.pardir or normalised.startswith(os.pardir + os.sep):
        raise ValueError(f"{where}: image path {path!r} leaves the image root; listed paths must stay inside it")


@dataclass(frozen=True)
class ImageEntry:
    """One listed image: its path relative to the image root, its label, and where it was listed.

    ``origin`` is a human-readable location used in error messages, e.g.
    ``"/data/ImageNet_LT_train.txt, line 17"`` or ``"/data/val2018.json, images[3]"``.
    The path is checked at construction (:func:`check_listed_path`).
    """

    path: str
    label: int
    origin: str

    def __post_init__(self):
        check_listed_path(self.path, self.origin)

    @property
    def key(self) -> str:
        """The normalised path: two entries with the same key name the same file."""
        return os.path.normpath(self.path)


def read_listing(path: Path) -> str:
    """A listing's text as UTF-8, without a leading byte-order mark; errors name the file."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from exc


def parse_split_file(split_file: str | os.PathLike, num_classes: int, open_split: bool = False) -> list[ImageEntry]:
    """Parse an OLTR-style split file (``relative/path label`` per line) into entries.

    Labels must lie in ``[0, num_classes)``; ``open_split=True`` also allows the open-set label -1.
    Raises FileNotFoundError for a missing file and ValueError naming the file and the 1-based line
    for a malformed line, a label that is not an ASCII decimal integer, an out-of-range label, a path
    that is absolute or leaves the root, an image listed twice, and for a file with no entry.
    """
    split_file = Path(split_file)
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file}")
    entries = []
    for number, line in enumerate(read_listing(split_file).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{split_file}, line {number}"
        fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(f"{where}: malformed line {line!r}; expected 'relative/path label'")
        path, label_text = fields
        if not LABEL_PATTERN.fullmatch(label_text):
            raise ValueError(f"{where}: label {label_text!r} is not an integer (ASCII digits, optional '-')")
        label = int(label_text)
        check_label(label, num_classes, open_split, where)
        entries.append(ImageEntry(path, label, where))
    if not entries:
        raise ValueError(f"{split_file}: empty split (no 'relative/path label' line)")
    check_unique(entries)
    return entries


def check_label(label: int, num_classes: int, open_split: bool, where: str) -> None:
    """Raise a ValueError naming ``where`` unless ``label`` is in ``[0, num_classes)`` (or -1 in an open split)."""
    if 0 <= label < num_classes or (open_split and label == OPEN_LABEL):
        return
    if label == OPEN_LABEL:
        raise ValueError(f"{where}: open-set label -1 is only allowed in an open split")
    allowed = f"[0, {num_classes})" + (" or -1" if open_split else "")
    raise ValueError(f"{where}: label {label} outside {allowed}")


def check_unique(entries: Sequence[ImageEntry]) -> None:
    """Raise a ValueError naming both places when one split lists an image twice (same normalised path)."""
    first_seen: dict[str, ImageEntry] = {}
    for entry in entries:
        earlier = first_seen.setdefault(entry.key, entry)
        if earlier is not entry:
            labels = f"label {entry.label} both times" if earlier.label == entry.label else \
                f"labels {earlier.label} and {entry.label}"
            raise ValueError(f"{entry.origin}: image {entry.path!r} is already listed at {earlier.origin} "
                             f"({labels}); a split lists each image once")


def warn_on_overlap(listings: dict[str, Sequence[ImageEntry]]) -> None:
    """Warn (:class:`SplitOverlapWarning`) for every pair of listings that share an image, naming an example."""
    names = list(listings)
    for i, first in enumerate(names):
        by_key = {entry.key: entry for entry in listings[first]}
        for second in names[i + 1:]:
            shared = [entry for entry in listings[second] if entry.key in by_key]
            if shared:
                example = shared[0]
                warnings.warn(
                    f"{len(shared)} image(s) listed in both {first} and {second}, e.g. {example.path!r} "
                    f"({by_key[example.key].origin}; {example.origin}): the splits are not disjoint, so results "
                    "on one may be measured on images of the other", SplitOverlapWarning, stacklevel=3)


def check_images_exist(root: str | os.PathLike, entries: Sequence[ImageEntry], listing: str) -> None:
    """Raise FileNotFoundError naming every missing image (the first few with their line) under ``root``."""
    root = Path(root)
    check_image_root(root, listing)
    missing = [entry for entry in entries if not (root / entry.path).is_file()]
    if missing:
        shown = "; ".join(f"{entry.origin}: {root / entry.path}" for entry in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(entries)} images listed in {listing} are missing under {root}: {shown}{more}"
        )


def check_image_root(root: Path, listing: str) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} (for {listing}) does not exist or is not a folder")


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
    names = [line.strip() for line in read_listing(path).splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names for {num_classes} classes (one name per line)")
    return names


def default_class_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image fully into a float tensor ``[3, H, W]`` in ``[0, 1]`` (see the module docstring).

    Truncated, unreadable or range-less (32-bit) images raise a ValueError naming the file.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported code); truncated images would be "
            f"silently padded with grey. Set it back to False before loading {path}."
        )
    try:
        with Image.open(path) as image:
            image.load()  # decodes everything now, so truncation raises here rather than later
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})") from exc
    return image_to_tensor(image, path)


def image_to_tensor(image: Image.Image, path: str | os.PathLike = "image") -> torch.Tensor:
    """A decoded PIL image as a float tensor ``[3, H, W]`` in ``[0, 1]``: 16-bit greyscale scaled by 1/65535."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):  # PNG has no 32-bit grey
        grey = torch.from_numpy(np.asarray(image).astype(np.float32) / 65535.0)  # (H, W)
        return grey.unsqueeze(0).repeat(3, 1, 1)  # (H, W) -> (3, H, W)
    if image.mode in ("I", "F"):
        raise ValueError(f"{path}: {image.mode!r} image (32-bit integer or float pixels) has no fixed value range; "
                         "convert it to 8 or 16 bits")
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (H, W, 3) -> (3, H, W)


def default_transform(train: bool, image_size: int = 224, resize_size: int = 256,
                      normalize: Optional[tuple[Sequence[float], Sequence[float]]] = None) -> Callable:
    """The papers' transform on a float tensor ``[3, H, W]`` -> ``[3, image_size, image_size]``.

    train: shorter side to ``resize_size``, random ``image_size`` crop, random horizontal flip.
    eval:  shorter side to ``resize_size``, centre ``image_size`` crop.
    """
    from torchvision import transforms

    check_int("image_size", image_size, low=1)
    check_int("resize_size", resize_size, low=1)
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


class DataRoot(NamedTuple):
    """A dataset folder and where it came from (``root=``, an environment variable, or the default), for errors."""

    path: Path
    source: str

    def __str__(self) -> str:
        return f"{self.path} (from {self.source})"


def resolve_root(root: Optional[str | os.PathLike], env_var: str, data_subdir: str,
                 must_exist: bool = True) -> DataRoot:
    """A dataset folder: the argument, else ``$env_var``, else ``$LTCORE_DATA/data_subdir``.

    A folder the user named (the argument or ``$env_var``) is used or refused, never replaced by another:
    with ``must_exist`` it must be an existing folder, else a FileNotFoundError names it and where it came from.
    """
    from ltcore.paths import data_dir

    if root is not None:
        if not str(root):
            raise ValueError("root= is an empty path; pass the dataset folder or None for the default")
        found = DataRoot(Path(root), "the root= argument")
    elif os.environ.get(env_var):
        found = DataRoot(Path(os.environ[env_var]), f"${env_var}")
    else:
        source = "$LTCORE_DATA" if os.environ.get("LTCORE_DATA") else "the default data folder (LTCORE_DATA unset)"
        return DataRoot(data_dir() / data_subdir, source + (f", subfolder {data_subdir}" if data_subdir else ""))
    if must_exist and not found.path.is_dir():
        raise FileNotFoundError(f"dataset folder {found} does not exist or is not a folder")
    return found


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
        return load_image(self.image_path(i))

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
    """An :class:`ImageListDataset` whose root is a folder, after the eager existence check of every image unless
    ``check_files`` is False."""
    if check_files:
        check_images_exist(root, entries, listing)
    else:
        check_image_root(Path(root), listing)
    return ImageListDataset(root, entries, transform, class_names)
