"""Open-set images for the OLTR protocol on our offline benchmark.

ImageNet-LT's open set is "the additional classes of images in ImageNet-2010" (IEM 4.1): images of
classes never seen in training, labelled -1. For Fashion-MNIST-LT we need images from another source
that ships offline: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797 8x8
grayscale images, part of the scikit-learn package), upsampled to 28x28 with bilinear interpolation
and rescaled to [0, 255] so that their intensity range matches Fashion-MNIST's.

> **Our reading:** any out-of-distribution source serves the protocol; digits are far from clothing,
> so this open set is easier than ImageNet-2010's extra classes are for ImageNet-LT.

Taught in notebook 06, *Closed set and open set*.
"""
from __future__ import annotations

import numpy as np
import torch

from ltcore.checks import check_int
from ltcore.data.datasets import OPEN_LABEL, ArrayDataset


def digits_open_set(n: int | None = 1000, size: int = 28, seed: int = 0) -> ArrayDataset:
    """``n`` scikit-learn digit images as an open set (label -1), ``size`` x ``size`` uint8."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # scikit-learn is a declared dependency; say how to get it
        raise ImportError("the digits open set needs scikit-learn: pip install scikit-learn") from exc
    images = load_digits().images  # (1797, 8, 8), values 0..16
    if n is not None:
        n = check_int("n", n, 1, len(images))
        images = images[np.sort(np.random.default_rng(seed).permutation(len(images))[:n])]
    # (N, 8, 8) -> (N, 1, 8, 8) -> (N, 1, size, size) -> (N, size, size)
    resized = torch.nn.functional.interpolate(torch.from_numpy(images).float()[:, None], size=(size, size),
                                              mode="bilinear", align_corners=False)[:, 0]
    as_uint8 = (resized / 16.0 * 255.0).clamp(0, 255).round().to(torch.uint8).numpy()
    return ArrayDataset(as_uint8, np.full(len(as_uint8), OPEN_LABEL), class_names=["open"])
