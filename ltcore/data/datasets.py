"""Dataset containers shared by every loader.

Every dataset item is ``(image, label, index)``: ``index`` is the item's position
in its dataset, so retrieval tables and memory writes can point back at the
training image they came from.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


OPEN_LABEL: int = -1  # label of open-set test samples and prediction of rejected samples


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 array.

    Args:
        images: uint8 array ``[N, H, W]`` (grayscale) or ``[N, H, W, C]``.
        labels: int array ``[N]``.
        transform: optional callable on the float image tensor ``[C, H, W]`` in ``[0, 1]``.
        source_indices: index of each item in the dataset it was drawn from (kept for provenance).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[Callable] = None,
                 source_indices: Optional[np.ndarray] = None, class_names: Sequence[str] = ()):
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.source_indices = np.arange(len(labels)) if source_indices is None else np.asarray(source_indices)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def image_tensor(self, i: int) -> torch.Tensor:
        """The ``i``-th image as a float tensor ``[C, H, W]`` in ``[0, 1]``, untransformed."""
        image = torch.from_numpy(np.array(self.images[i])).float().div_(255.0)  # copy: arrays may be read-only
        return image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)

    def __getitem__(self, i: int):
        image = self.image_tensor(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i]), int(i)

    def fingerprint(self) -> str:
        """A short hash of the images and labels (not the transform): keys caches of embeddings."""
        digest = hashlib.sha256(f"{self.images.shape}{self.images.dtype}".encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()[:16]

    def with_transform(self, transform: Optional[Callable]) -> "ArrayDataset":
        """The same images and labels with another transform (no copy of the arrays)."""
        return ArrayDataset(self.images, self.labels, transform, self.source_indices, self.class_names)


@dataclass
class LTSplits:
    """A long-tailed benchmark: long-tailed train split, balanced val and test splits.

    ``class_counts[c]`` is the number of training images of class ``c``; the
    many / medium / few groups of :func:`ltcore.metrics.shot_accuracy` are defined on it.
    ``open_set`` holds out-of-distribution images (label -1) where the benchmark has them.
    """

    name: str
    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    class_counts: np.ndarray
    class_names: list = field(default_factory=list)
    open_set: Optional[Dataset] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "classes": self.num_classes,
            "train": len(self.train),
            "val": 0 if self.val is None else len(self.val),
            "test": len(self.test),
            "open": 0 if self.open_set is None else len(self.open_set),
            "head": int(self.class_counts.max()),
            "tail": int(self.class_counts.min()),
        }


def class_counts_of(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Histogram of integer labels over ``[0, num_classes)``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


class RandomCropFlip:
    """Training augmentation for small images: pad-and-crop plus horizontal flip.

    Operates on a float tensor ``[C, H, W]``; ``generator`` makes it reproducible.
    """

    def __init__(self, padding: int = 2, flip: bool = True, generator: Optional[torch.Generator] = None):
        self.padding = padding
        self.flip = flip
        self.generator = generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        p = self.padding
        padded = torch.nn.functional.pad(image, (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,), generator=self.generator).tolist()
        image = padded[:, top:top + h, left:left + w]
        if self.flip and torch.rand((), generator=self.generator) < 0.5:
            image = image.flip(-1)
        return image


def evaluation_view(dataset: Dataset, reference: Dataset) -> Dataset:
    """``dataset`` with the transform of ``reference`` (the test split): un-augmented training images."""
    if not hasattr(dataset, "with_transform"):
        raise TypeError(f"{type(dataset).__name__} has no with_transform(); cannot drop its augmentation")
    return dataset.with_transform(getattr(reference, "transform", None))
