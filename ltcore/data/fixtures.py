"""Small long-tailed datasets written in the real on-disk formats the loaders read, for tests and smoke runs.

``make_fixture(format, root)`` writes, in a second or less at the defaults, a dataset that
:func:`ltcore.data.build_dataset` reads through the same loader, file names and checks as the real one
(:func:`build_options` gives the call). ``FIXTURE_FORMATS`` and what each fixture reproduces:

- ``imagenet_lt``, ``places_lt``, ``sun_lt``: the OLTR split files of Liu et al., CVPR 2019
  (``{benchmark}_train.txt``, ``_val.txt``, ``_test.txt`` and, for ImageNet-LT and Places-LT, ``_open.txt``: one
  ``relative/path label`` per line, label -1 in the open split) beside a JPEG tree laid out like the source
  dataset's. ImageNet-LT: train and val images in ``train/<wnid>/<wnid>_<n>.JPEG`` (ImageNet-LT draws its val split
  from ImageNet's training images), test images in ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``, open-set images in
  ``ImageNet_LT_open/<wnid>_<n>.JPEG``. Places-LT: ``data_256/<initial>/<scene>/<8 digits>.jpg``,
  ``val_256/Places365_val_<8 digits>.jpg`` and ``Places_LT_open/<scene>_<8 digits>.jpg``. SUN-LT: SUN397's
  ``<initial>/<scene>/sun_<16 letters>.jpg`` for every split, and no open split (SUN-LT has none). Labels follow
  the sorted wnids / scene names, as in the real files.
- ``inat2018``: ``train2018.json`` and ``val2018.json`` in iNaturalist 2018's COCO-like layout (``info``,
  ``images`` with ``id``, ``file_name``, ``width``, ``height``, ``license``; ``annotations`` with ``id``,
  ``image_id``, ``category_id``; ``categories`` with ``id``, ``name``, ``supercategory``; ``licenses``), category ids
  ``0..C-1`` as iNat's, val's image ids continuing train's, and both splits' images under
  ``train_val2018/<supercategory>/<category id>/<32 hex digits>.jpg``.
- ``cifar10``, ``cifar100``: the "python version" pickles in torchvision's layout (``cifar-10-batches-py/
  data_batch_1..5``, ``test_batch``, ``batches.meta``; ``cifar-100-python/train``, ``test``, ``meta``), dicts with
  the real keys (``data`` uint8 ``[N, 3072]`` channel-major, ``labels`` or ``fine_labels`` and ``coarse_labels``,
  ``filenames``, ``batch_label``; ``label_names`` or ``fine_label_names`` and ``coarse_label_names``), pickled with
  protocol 2. As in the real release the files are balanced, ``max_per_class`` training images of every class in
  a shuffled order, and the loader makes the long tail (CIFAR-LT is built that way, :mod:`ltcore.data.cifar`).

Sizes. With ``n = max_per_class``, class ``i`` of ``C`` has ``int(n * r ** (-i / (C - 1)))`` training images,
``r = min(10, n)``: LDAM-DRW's exp profile (:func:`ltcore.data.longtail.longtail_counts`) from ``n`` down to
``max(1, n // 10)``, head first. The OLTR val and test splits are balanced, as ImageNet-LT's and Places-LT's are:
``max(1, n // 10)`` and ``max(2, n // 4)`` images a class; iNaturalist's val2018.json (the loader's test split) has
3 a class, as the real one; CIFAR's test split has ``max(2, n // 4)`` a class and there is no val split, as in
LDAM-DRW. For CIFAR, ``build_cifar_lt(n_max=n, imbalance_ratio=r)`` keeps exactly the counts above. The OLTR
open split holds ``max(2, n // 4)`` images of each of 3 classes outside the ``C`` known ones (ids ``C..C+2``).
:func:`fixture_counts` returns all of these.

Images. Class ``c`` is a colour (hue ``c`` times the golden ratio, mod 1) modulated by stripes at
``(5c mod 12) * 15`` degrees with ``2 + c mod 4`` periods across the shorter side and a random phase, plus Gaussian
noise (sd 12): learnable from colour and stripes, and from the stripes alone where an image is grey. The image
trees carry real data's quirks: sizes from 37 to 120 pixels a side, drawn per image and never square, and one
image in 12 each stored as a grayscale (mode "L") JPEG, a CMYK JPEG, or a PNG under the format's JPEG name
(ImageNet's training set holds all three: grey JPEGs, 22 CMYK JPEGs and one PNG named ``.JPEG``). CIFAR's images
are 32 x 32 RGB, as CIFAR's are. The same seed writes the same bytes (with the same numpy and Pillow).

What the fixtures do not reproduce: the scale (ImageNet-LT has 1,000 classes of 1,280 down to 5 training
images, Places-LT 365, SUN-LT 397, iNaturalist 2018 8,142, CIFAR 10 or 100 of 5,000 or 500 images; a fixture may
have at most the real class count, exactly it for CIFAR); the images' content; the class names and wnids
(made up: ``n0...``, ``scene_003``, ``species_0003``, ``class_03``); the open set's source (ImageNet-2010's
additional classes for ImageNet-LT, Places-Extra69 for Places-LT; here 3 more synthetic classes); where the head
classes sit (spread over the ids in the real sets, the lowest ids here); CIFAR-100's fine-to-coarse map (here
``fine // 5``); the official md5 sums (load CIFAR fixtures with ``verify_checksums=False``); and the exact
prefixes of the real split files' paths, which are shaped after the source datasets' layouts but were not checked
against the OLTR release.

The folder. ``make_fixture`` writes into a new or empty folder, or into one holding the same fixture (same format,
classes, max_per_class and seed), whose files it writes again with the same bytes; any other content is refused,
never overwritten or deleted. Its record ``ltcore_fixture.json`` (not part of any real format; the loaders ignore
it) is written first, so calling again completes an interrupted write. Every file is written to a temporary name
and renamed into place (:func:`ltcore.io.atomic_write`).
"""
from __future__ import annotations

import colorsys
import io
import json
import os
import pickle
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ltcore.checks import check_choice, check_int
from ltcore.data.datasets import OPEN_LABEL
from ltcore.data.longtail import longtail_counts
from ltcore.data.oltr import BENCHMARKS
from ltcore.io import atomic_write, read_json


@dataclass(frozen=True)
class FixtureFormat:
    name: str
    dataset: str      # its loader's name in ltcore.data.registry
    num_classes: int  # the real dataset's: the most classes a fixture may have (CIFAR: exactly this many)
    family: str       # "oltr", "inat" or "cifar": which writer
    benchmark: str = ""  # OLTR's file prefix, e.g. "ImageNet_LT"


FORMATS = {spec.name: spec for spec in [
    *(FixtureFormat(b.registry_name, b.registry_name, b.num_classes, "oltr", b.name) for b in BENCHMARKS.values()),
    FixtureFormat("inat2018", "inat2018", 8142, "inat"),
    FixtureFormat("cifar10", "cifar10_lt", 10, "cifar"),
    FixtureFormat("cifar100", "cifar100_lt", 100, "cifar"),
]}
FIXTURE_FORMATS = tuple(FORMATS)
DEFAULT_CLASSES = 12
TAIL_RATIO = 10          # head / tail of the training counts, when max_per_class allows it
OPEN_CLASSES = 3         # unseen classes of the OLTR open split
INAT_VAL_PER_CLASS = 3   # as iNaturalist 2018's val2018.json
RECORD_FILE = "ltcore_fixture.json"

# OLTR image paths: {wnid}, {scene}, {initial}, {n} (the image's number in its class, from 1), {k} (its number in
# the fixture, from 1) and {token} (16 random letters) are filled in per image.
OLTR_LAYOUT = {
    "ImageNet_LT": {"train": "train/{wnid}/{wnid}_{n}.JPEG", "val": "train/{wnid}/{wnid}_{n}.JPEG",
                    "test": "val/{wnid}/ILSVRC2012_val_{k:08d}.JPEG", "open": "ImageNet_LT_open/{wnid}_{n}.JPEG"},
    "Places_LT": {"train": "data_256/{initial}/{scene}/{n:08d}.jpg", "val": "data_256/{initial}/{scene}/{n:08d}.jpg",
                  "test": "val_256/Places365_val_{k:08d}.jpg", "open": "Places_LT_open/{scene}_{n:08d}.jpg"},
    "SUN_LT": {split: "{initial}/{scene}/sun_{token}.jpg" for split in ("train", "val", "test")},
}
INAT_PATH = "train_val2018/{supercategory}/{category}/{token}.jpg"
INAT_SUPERCATEGORIES = ("Plantae", "Insecta", "Aves", "Reptilia", "Mammalia", "Fungi", "Amphibia", "Mollusca",
                        "Animalia", "Arachnida", "Actinopterygii", "Chromista", "Protozoa", "Bacteria")
QUIRKS = {3: "L", 7: "CMYK", 11: "PNG"}  # an image's number in the fixture mod 12 -> how it is stored (else RGB JPEG)
GOLDEN = (5 ** 0.5 - 1) / 2  # hue step between classes: every class gets a hue of its own


def resolve(format: str, classes: Optional[int], max_per_class: int) -> tuple[FixtureFormat, int, int]:
    """The format's spec, the number of classes (None: the format's default) and max_per_class, checked."""
    spec = FORMATS[check_choice("format", format, FIXTURE_FORMATS)]
    exact = spec.family == "cifar"
    default = spec.num_classes if exact else DEFAULT_CLASSES
    classes = check_int("classes", default if classes is None else classes)
    if exact and classes != spec.num_classes:
        raise ValueError(f"{format} has exactly {spec.num_classes} classes (its files name {spec.num_classes}), "
                         f"got classes={classes}")
    if not 2 <= classes <= spec.num_classes:
        raise ValueError(f"{format} takes 2 to {spec.num_classes} classes (the real dataset has {spec.num_classes}), "
                         f"got classes={classes}")
    return spec, classes, check_int("max_per_class", max_per_class, low=1)


def fixture_counts(format: str, classes: Optional[int] = None, max_per_class: int = 20) -> dict[str, np.ndarray]:
    """Images per class of each split the loader returns for this fixture (module docstring, *Sizes*).

    ``train`` is head first; ``open`` counts the images of each unseen class (label -1 in the split file).
    For CIFAR, ``train`` is what the loader keeps of the balanced files with :func:`build_options`.
    """
    spec, classes, n = resolve(format, classes, max_per_class)
    train = longtail_counts(n, classes, min(TAIL_RATIO, n))
    test = np.full(classes, max(2, n // 4))
    if spec.family == "inat":
        return {"train": train, "test": np.full(classes, INAT_VAL_PER_CLASS)}
    if spec.family == "cifar":
        return {"train": train, "test": test}
    counts = {"train": train, "val": np.full(classes, max(1, n // 10)), "test": test}
    if "open" in OLTR_LAYOUT[spec.benchmark]:
        counts["open"] = np.full(OPEN_CLASSES, max(2, n // 4))
    return counts


def build_options(format: str, root: str | os.PathLike, classes: Optional[int] = None,
                  max_per_class: int = 20) -> tuple[str, dict]:
    """``(name, options)`` such that ``build_dataset(name, **options)`` loads the fixture written at ``root``."""
    spec, classes, n = resolve(format, classes, max_per_class)
    options = {"root": os.fspath(root)}
    if spec.family == "oltr":
        options["num_classes"] = classes  # the loader's default is the real benchmark's
    if spec.family == "cifar":
        options.update(n_max=n, imbalance_ratio=min(TAIL_RATIO, n), verify_checksums=False)
    return spec.dataset, options


def describe_fixture(format: str, root: str | os.PathLike, classes: Optional[int] = None,
                     max_per_class: int = 20) -> str:
    """What the fixture at ``root`` holds, split by split, and the call that loads it (the CLI prints this)."""
    spec, classes, n = resolve(format, classes, max_per_class)
    lines = []
    for split, counts in fixture_counts(format, classes, n).items():
        if split == "open":
            per_class = f"{counts[0]} of each of {len(counts)} classes outside the {classes}, label -1"
        elif (counts == counts[0]).all():
            per_class = f"{counts[0]} per class"
        else:
            per_class = f"{' '.join(map(str, counts))} per class, head first"
        lines.append(f"  {split + ':':6s} {per_class} ({counts.sum()} images)")
    if spec.family == "cifar":
        lines.append(f"  (the files hold {n} training images of every class; the loader keeps the counts above)")
    name, options = build_options(format, root, classes, n)
    arguments = ", ".join([repr(name)] + [f"{key}={value!r}" for key, value in options.items()])
    return "\n".join(lines + [f"load it with build_dataset({arguments})"])


def make_fixture(format: str, root: str | os.PathLike, classes: Optional[int] = None, max_per_class: int = 20,
                 seed: int = 0) -> Path:
    """Write a small long-tailed dataset in ``format``'s real on-disk layout into ``root``; returns the dataset root
    its loader takes (``root`` itself; see :func:`build_options`).

    ``classes`` defaults to 12 (CIFAR: 10 or 100, the only values it takes); the head class has ``max_per_class``
    training images. ``root`` must be new, empty, or hold this same fixture (module docstring, *The folder*).
    """
    spec, classes, max_per_class = resolve(format, classes, max_per_class)
    seed = check_int("seed", seed, low=0)
    if not os.fspath(root):
        raise ValueError("root is an empty path; pass the folder to write the fixture into")
    root = Path(root)
    record = {"format": spec.name, "classes": classes, "max_per_class": max_per_class, "seed": seed}
    check_destination(root, record)
    write_bytes(root / RECORD_FILE, (json.dumps(record, indent=2) + "\n").encode())
    rng = np.random.default_rng(seed)
    counts = fixture_counts(format, classes, max_per_class)
    if spec.family == "oltr":
        write_oltr(root, spec.benchmark, counts, rng)
    elif spec.family == "inat":
        write_inat(root, counts, rng)
    else:
        write_cifar(root, classes, max_per_class, counts["test"][0], rng)
    return root


# ---------------------------------------------------------------- the folder


def check_destination(root: Path, record: dict) -> None:
    """Raise FileExistsError unless ``root`` is absent, an empty folder, or holds the fixture ``record`` describes."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; give make_fixture a new or empty folder")
    if not root.is_dir() or not any(root.iterdir()):
        return
    found = recorded_fixture(root)
    if found is None:
        raise FileExistsError(f"{root} is not empty and holds no ltcore fixture (no readable {RECORD_FILE}); "
                              "refusing to write into it: choose a new or empty folder")
    if found != record:
        held = ", ".join(f"{key}={value!r}" for key, value in found.items())
        raise FileExistsError(f"{root} already holds another fixture ({held}); refusing to overwrite it: choose a "
                              "new or empty folder, or delete that one yourself")


def recorded_fixture(root: Path) -> Optional[dict]:
    """The format, classes, max_per_class and seed recorded in ``root``, or None without a readable record."""
    path = root / RECORD_FILE
    if not path.is_file():
        return None
    try:
        found = read_json(path, "fixture record")
    except ValueError:
        return None
    keys = ("format", "classes", "max_per_class", "seed")
    return {key: found.get(key) for key in keys} if isinstance(found, dict) else None


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_lines(path: Path, lines: list[str]) -> None:
    write_bytes(path, "".join(line + "\n" for line in lines).encode())


# ---------------------------------------------------------------- images


def class_pattern(label: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """An image of class ``label``, uint8 ``[height, width, 3]``: its colour times its stripes, plus noise."""
    colour = 255 * np.asarray(colorsys.hsv_to_rgb((label * GOLDEN) % 1.0, 0.75, 0.95))  # (3,)
    angle = np.pi * ((5 * label) % 12) / 12
    periods = 2 + label % 4  # across the shorter side, so resizing keeps the class's frequency
    y, x = np.mgrid[0:height, 0:width] / min(width, height)  # (H, W) each
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * periods * (x * np.cos(angle) + y * np.sin(angle)) + phase)  # (H, W)
    pixels = colour * (0.3 + 0.7 * stripes[..., None]) + rng.normal(0, 12, (height, width, 3))  # (H, W, 3)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """``(width, height)`` from 37 to 120 pixels, never square: the height is drawn from the other 83 sizes."""
    width, height = (int(side) for side in rng.integers((37, 37), (121, 120)))
    return width, height + (height >= width)


def encode(pixels: np.ndarray, quirk: Optional[str]) -> bytes:
    """``pixels`` ``[H, W, 3]`` as a file: an RGB JPEG, or the quirk's grayscale / CMYK JPEG or PNG."""
    image, buffer = Image.fromarray(pixels), io.BytesIO()
    if quirk == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.convert(quirk or "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class ImageTree:
    """Writes a fixture's images under ``root``, numbering them as it goes (the numbers pick the quirks)."""

    def __init__(self, root: Path, rng: np.random.Generator):
        self.root, self.rng = root, rng
        self.written = 0
        self.in_class: Counter = Counter()

    def add(self, template: str, label: int, **names) -> tuple[str, int, int]:
        """Write an image of class ``label`` at ``template`` filled in; returns ``(relative path, width, height)``."""
        self.written += 1
        self.in_class[label] += 1
        path = template.format(k=self.written, n=self.in_class[label], **names)
        width, height = image_size(self.rng)
        write_bytes(self.root / path, encode(class_pattern(label, width, height, self.rng),
                                             QUIRKS.get(self.written % 12)))
        return path, width, height


def letters(rng: np.random.Generator, count: int) -> str:
    return "".join(rng.choice(list(string.ascii_lowercase), count))


# ---------------------------------------------------------------- the formats


def wnid(label: int) -> str:
    """A made-up ImageNet synset id; they sort in label order, as the real ones do."""
    return f"n{1440764 + 7919 * label:08d}"


def write_oltr(root: Path, benchmark: str, counts: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """The split files ``{benchmark}_{split}.txt`` and their images; the open split's classes follow the known ones."""
    tree, layout = ImageTree(root, rng), OLTR_LAYOUT[benchmark]
    for split, per_class in counts.items():
        lines = []
        first = len(counts["train"]) if split == "open" else 0  # the open split's classes are ids C, C+1, ...
        for label, count in enumerate(per_class, start=first):
            scene = f"scene_{label:03d}"
            for _ in range(count):
                token = letters(rng, 16) if "{token}" in layout[split] else ""
                path, _, _ = tree.add(layout[split], label, wnid=wnid(label), scene=scene, initial=scene[0],
                                      token=token)
                lines.append(f"{path} {OPEN_LABEL if split == 'open' else label}")
        write_lines(root / f"{benchmark}_{split}.txt", lines)


def write_inat(root: Path, counts: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """``train2018.json`` and ``val2018.json`` (the loader's test split) and their images."""
    tree = ImageTree(root, rng)
    supercategory = [INAT_SUPERCATEGORIES[c % len(INAT_SUPERCATEGORIES)] for c in range(len(counts["train"]))]
    categories = [{"id": c, "name": f"species_{c:04d}", "supercategory": supercategory[c]}
                  for c in range(len(counts["train"]))]
    image_id = 0
    for split, file_name in (("train", "train2018.json"), ("test", "val2018.json")):
        images, annotations = [], []
        for label, count in enumerate(counts[split]):
            for _ in range(count):
                path, width, height = tree.add(INAT_PATH, label, supercategory=supercategory[label], category=label,
                                               token=rng.bytes(16).hex())
                images.append({"id": image_id, "file_name": path, "width": width, "height": height, "license": 0})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": label})
                image_id += 1
        annotation_file = {"info": {"description": f"ltcore fixture in the iNaturalist 2018 format ({split})"},
                           "images": images, "annotations": annotations, "categories": categories,
                           "licenses": [{"id": 0, "name": "synthetic images, no rights reserved", "url": ""}]}
        write_bytes(root / file_name, json.dumps(annotation_file).encode())


def cifar_batch(labels: np.ndarray, label_key: str, batch_label: str, names: list[str],
                rng: np.random.Generator) -> dict:
    """One batch dict with CIFAR's keys; ``data`` is uint8 ``[N, 3072]``, channel-major like CIFAR's."""
    pixels = np.stack([class_pattern(int(label), 32, 32, rng) for label in labels])  # (N, 32, 32, 3)
    data = pixels.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # (N, 32, 32, 3) -> (N, 3, 32, 32) -> (N, 3072)
    return {"batch_label": batch_label, label_key: labels.tolist(), "data": data,
            "filenames": [f"{names[label]}_s_{i:06d}.png" for i, label in enumerate(labels)]}


def write_cifar(root: Path, classes: int, per_class: int, test_per_class: int, rng: np.random.Generator) -> None:
    """The balanced pickles in torchvision's layout: ``per_class`` training images of every class, shuffled."""
    from ltcore.data.cifar import torchvision_class

    cls = torchvision_class(classes)
    folder, names = root / cls.base_folder, [f"class_{c:02d}" for c in range(classes)]
    label_key = "labels" if classes == 10 else "fine_labels"
    train_labels = rng.permutation(np.repeat(np.arange(classes), per_class))
    test_labels = rng.permutation(np.repeat(np.arange(classes), test_per_class))
    train_parts = np.array_split(train_labels, len(cls.train_list))
    batches = {name: cifar_batch(part, label_key, f"training batch {b} of {len(train_parts)}", names, rng)
               for b, ((name, _), part) in enumerate(zip(cls.train_list, train_parts), start=1)}
    batches[cls.test_list[0][0]] = cifar_batch(test_labels, label_key, "testing batch 1 of 1", names, rng)
    if classes == 100:  # CIFAR-100's batches also carry the 20 superclasses
        for batch in batches.values():
            batch["coarse_labels"] = [label // 5 for label in batch[label_key]]
        meta = {"fine_label_names": names, "coarse_label_names": [f"superclass_{s:02d}" for s in range(20)]}
    else:
        meta = {"num_cases_per_batch": len(train_parts[0]), "label_names": names, "num_vis": 3 * 32 * 32}
    batches[cls.meta["filename"]] = meta
    for name, content in batches.items():
        write_bytes(folder / name, pickle.dumps(content, protocol=2))
