"""Frozen pretrained features, extracted once and cached: the inputs of the claims' heads on frozen features.

Issue 11 asks every claim of both papers to be measured in a setting that gives each mechanism a fair chance.
The RAC paper's own Base is a pretrained network (Long et al., CVPR 2022, Sec. 4, footnote 2: a from-scratch
base "is not a fair comparison"); its retrieval module reads a frozen pretrained encoder E (Sec. 3.4). IEM
(Zhu & Yang, CVPR 2020) reads the backbone's last spatial feature map, not only its pooled vector: RSA (Sec. 3.2)
attends over the map's regions and the local memory stores region features (Sec. 3.3). So one pass of a frozen
ImageNet-pretrained EfficientNet-Lite (:mod:`ltcore.rac.image_encoders`) keeps both:

* ``pooled`` float32 [N, D]: the global-average-pooled last features, what the encoder's classifier sees
  (timm's ``forward_head(forward_features(x), pre_logits=True)``);
* ``feature_map`` float16 [N, C, h, w]: a spatial map, h = w = ceil(S / 32) at input side S.
  ``map_layer="head"`` (default): the map ``pooled`` is the spatial mean of (after the 1x1 head convolution,
  its batch norm and ReLU6; C = D = 1280), so a head on the map's mean and a head on ``pooled`` see the same
  numbers. ``map_layer="last_block"``: the output of the last inverted-residual block, before the head
  convolution (C = 320 for Lite0-2, a quarter of the size).

Everything is cached on disk (``$LTCORE_CACHE/features``), keyed by the images' content, the encoder's name
and weights, the preprocessing (size, mean/std, interpolation) and the map layer: two ``.npy`` files written
with ``allow_pickle=False`` to a temporary name and renamed into place, and a JSON note of the key. A cached
file is read with ``np.load(allow_pickle=False)``, so reading it runs no code; one that is not the finite
array the key promises is recomputed and overwritten with a warning naming the file.

Cost and quality on Fashion-MNIST (28 px images resized), measured on this project's 2-core machine with one
thread. Seconds are CPU seconds for the pool and the test split of the claims (21,000 images), extrapolated from
1,024 images; the machine was shared with other jobs (load 4-8), so wall time was about 3x longer. End to end,
Lite0 @64 took 57 CPU s (159 s wall) cold and 2.2 s warm. Accuracies are on validation images only (the
1,000 of ``permuted_longtail_split(..., val_per_class=100)``, permutation 0) from the 2,478 long-tailed training
images' pooled features: cosine 10-NN, a class-balanced logistic regression, and that regression's "few" classes.

    encoder @ size            map [C, h, w]  map MB  CPU s  images/s  10-NN  linear  linear few
    efficientnet_lite0 @48    1280x2x2          215     40       525   54.8    71.1        66.0
    efficientnet_lite0 @64    1280x2x2          215     69       303   58.0    73.1        63.5
    efficientnet_lite0 @96    1280x3x3          484    159       132   66.9    76.7        72.0
    efficientnet_lite0 @128   1280x4x4          860    280        75   67.6    76.3        75.0
    efficientnet_lite1 @64    1280x2x2          215     64       326   53.3    71.4        59.0
    efficientnet_lite2 @64    1280x2x2          215     65       321   59.4    71.1        64.5
    efficientnet_lite2 @96    1280x3x3          484    190       110   62.7    75.4        68.0

``pooled`` takes 108 MB for 21,000 images at every size; ``map_layer="last_block"`` maps take a quarter of the
``head`` sizes above.

Taught in notebook 08, *Frozen pretrained features, extracted once*.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ltcore import paths
from ltcore.checks import check_choice, check_int
from ltcore.config import progress_disabled
from ltcore.io import atomic_write
from ltcore.rac.image_encoders import ImageEncoder, Preprocessing, build_image_encoder
from ltcore.rac.weights import short_reason

__all__ = ["FEATURE_ENCODERS", "MAP_LAYERS", "FeatureArrays", "extract_features", "images_encoded"]

CACHE_FORMAT_VERSION = 1
FEATURE_ENCODERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
MAP_LAYERS = ("head", "last_block")

_images_encoded = 0  # images this process has run through an encoder here; cache hits add none


class FeatureArrays(NamedTuple):
    """What :func:`extract_features` returns: the pooled vectors and spatial maps of N images, and their origin."""

    pooled: np.ndarray  # float32 [N, D]
    feature_map: np.ndarray  # float16 [N, C, h, w]
    encoder: str  # the image encoder's name
    image_size: int  # the side S the images were resized to
    weights_id: str  # identity of the encoder's weights (ImageEncoder.weights_id)
    map_layer: str = "head"  # where feature_map was taken (MAP_LAYERS)


def images_encoded() -> int:
    """How many images this process has run through an encoder in :func:`extract_features`.

    A call answered from the cache adds nothing, so the difference before and after a call tells whether the
    encoder ran.
    """
    return _images_encoded


def extract_features(
    images: np.ndarray,
    encoder: str | ImageEncoder,
    image_size: int,
    *,
    batch_size: int = 128,
    cache: bool = True,
    progress: bool = True,
    map_layer: str = "head",
    cache_dir: str | os.PathLike | None = None,
) -> FeatureArrays:
    """The frozen ``encoder``'s pooled features and spatial map for every image, computed once and cached.

    images:     uint8 [N, H, W] (grayscale, repeated to 3 channels) or [N, H, W, 3] (RGB).
    encoder:    a name of :data:`FEATURE_ENCODERS` (the offline ImageNet-pretrained EfficientNet-Lite0/1/2), or a
                built :class:`~ltcore.rac.image_encoders.ImageEncoder` over a convolutional timm backbone (e.g.
                a tiny ``test_efficientnet`` for tests; its name and weights key the cache).
    image_size: the side S images are resized to (the encoder's interpolation, antialiased), then normalised
                with the encoder's mean/std (ImageNet's for the Lites).
    map_layer:  ``"head"`` (the map ``pooled`` is the mean of) or ``"last_block"`` (see the module docstring).
    cache:      read and write the cache under ``cache_dir`` (default ``ltcore.paths.cache_dir("features")``,
                i.e. ``$LTCORE_CACHE/features``).
    progress:   a progress bar over the images (off when ``TQDM_DISABLE`` is set).

    Row i of both arrays belongs to ``images[i]``. A non-finite feature is an error, never a cached value.
    """
    images = _check_images(images)
    image_size = check_int("image_size", image_size, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    check_choice("map_layer", map_layer, MAP_LAYERS)
    if isinstance(encoder, str):
        check_choice("encoder", encoder, FEATURE_ENCODERS)
        encoder = build_image_encoder(encoder, image_size=image_size)
    elif not isinstance(encoder, ImageEncoder):
        raise TypeError(f"encoder must be one of {list(FEATURE_ENCODERS)} or an ImageEncoder, "
                        f"got {type(encoder).__name__}")
    _check_convolutional(encoder, map_layer)
    preprocessing = replace(encoder.preprocessing, image_size=image_size)
    meta = dict(encoder=encoder.name, image_size=image_size, weights_id=encoder.weights_id, map_layer=map_layer)

    if cache:
        pooled_path, map_path, note_path, key = _cache_paths(
            encoder, preprocessing, _images_digest(images), map_layer, cache_dir)
        cached = _read_cached(pooled_path, map_path, len(images), map_layer)
        if cached is not None:
            return FeatureArrays(*cached, **meta)
    pooled, feature_map = _encode(images, encoder, preprocessing, batch_size, map_layer, progress)
    if cache:
        atomic_write(pooled_path, lambda tmp: _write_npy(pooled, tmp))
        atomic_write(map_path, lambda tmp: _write_npy(feature_map, tmp))
        note = key | {"pooled_shape": list(pooled.shape), "map_shape": list(feature_map.shape),
                      "weights": encoder.weights}
        atomic_write(note_path, lambda tmp: Path(tmp).write_text(json.dumps(note, indent=2)))
    return FeatureArrays(pooled, feature_map, **meta)


# ================================================================================================ encoding
@torch.no_grad()
def _encode(images: np.ndarray, encoder: ImageEncoder, preprocessing: Preprocessing, batch_size: int,
            map_layer: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    global _images_encoded
    # channels-last runs the depthwise convolutions about 1.6x faster on CPU; a copy leaves the caller's
    # encoder as it was
    backbone = copy.deepcopy(encoder.backbone).to(memory_format=torch.channels_last)
    device = next(iter(encoder.parameters()), torch.empty(0)).device
    pooled_parts, map_parts = [], []
    bar = tqdm(total=len(images), desc=f"features {encoder.name} @{preprocessing.image_size}px", unit="img",
               disable=progress_disabled(progress))
    with bar:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device).float() / 255
            if batch.ndim == 3:
                batch = batch.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W), repeated to 3 channels by preprocessing
            else:
                batch = batch.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
            inputs = preprocessing(batch).contiguous(memory_format=torch.channels_last)
            head_map, block_map = _forward_maps(backbone, inputs, map_layer)
            if head_map.ndim != 4:
                raise ValueError(f"image encoder {encoder.name!r} gives features of shape {tuple(head_map.shape)}, "
                                 f"not a spatial map [B, C, h, w]; use a convolutional encoder")
            pooled = backbone.forward_head(head_map, pre_logits=True)  # (B, D, h, w) -> (B, D)
            kept_map = head_map if map_layer == "head" else block_map
            pooled_parts.append(pooled.float().cpu().numpy())
            map_parts.append(kept_map.cpu().numpy().astype(np.float16))
            _images_encoded += len(batch)
            bar.update(len(batch))
    pooled = np.concatenate(pooled_parts).astype(np.float32, copy=False)
    feature_map = np.concatenate(map_parts)
    for name, array in (("pooled features", pooled), (f"{map_layer} feature map (float16)", feature_map)):
        if not np.isfinite(array).all():
            raise ValueError(f"{encoder.name} at {preprocessing.image_size}px gave non-finite {name}; "
                             f"nothing was cached")
    return pooled, feature_map


def _forward_maps(backbone: nn.Module, inputs: Tensor, map_layer: str) -> tuple[Tensor, Tensor | None]:
    """The map ``forward_head`` pools (B, D, h, w), and for ``last_block`` the last block's output (B, C, h, w).

    For ``last_block`` the steps of timm's EfficientNet ``forward_features`` are taken one by one
    (stem, blocks, head convolution), so the block output is seen on the way to the same head map.
    """
    if map_layer == "head":
        return backbone.forward_features(inputs), None
    stem = backbone.bn1(backbone.conv_stem(inputs))
    block_map = backbone.blocks(stem)
    return backbone.bn2(backbone.conv_head(block_map)), block_map


def _check_convolutional(encoder: ImageEncoder, map_layer: str) -> None:
    backbone = encoder.backbone
    if not (hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head")):
        raise ValueError(f"image encoder {encoder.name!r} has no spatial feature map (it is not a timm backbone)")
    if map_layer == "last_block" and not all(hasattr(backbone, part) for part in ("conv_stem", "blocks", "conv_head")):
        raise ValueError(f"map_layer='last_block' needs an EfficientNet-style backbone (conv_stem, blocks, "
                         f"conv_head); {encoder.name!r} is a {type(backbone).__name__}")


def _check_images(images) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = f"{images.dtype} array" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 numpy array [N, H, W] or [N, H, W, 3], got a {kind}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)) or len(images) == 0 \
            or 0 in images.shape:
        raise ValueError(f"images must be uint8 [N, H, W] (grayscale) or [N, H, W, 3] (RGB) with N >= 1, "
                         f"got shape {images.shape}")
    return np.ascontiguousarray(images)


def _images_digest(images: np.ndarray) -> str:
    digest = hashlib.sha256(f"{images.dtype}{images.shape}".encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()[:20]


# =================================================================================================== cache
def _cache_paths(encoder: ImageEncoder, preprocessing: Preprocessing, images_digest: str, map_layer: str,
                 cache_dir: str | os.PathLike | None) -> tuple[Path, Path, Path, dict]:
    """Cache files (pooled .npy, map .npy, JSON note) for these images, encoder, preprocessing and layer; the key."""
    key = {
        "version": CACHE_FORMAT_VERSION,
        "encoder": encoder.name,
        "weights_id": encoder.weights_id,
        "preprocessing": asdict(preprocessing),
        "map_layer": map_layer,
        "images": images_digest,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir) if cache_dir is not None else paths.cache_dir("features")
    stem = f"{encoder.name}-{preprocessing.image_size}px-{map_layer}-{digest}"
    return folder / f"{stem}.pooled.npy", folder / f"{stem}.map.npy", folder / f"{stem}.json", key


def _read_cached(pooled_path: Path, map_path: Path, rows: int, map_layer: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Both cached arrays, or None when a file is missing or (with a warning) not what the key promises."""
    if not (pooled_path.is_file() and map_path.is_file()):
        return None
    pooled = _read_npy(pooled_path, np.float32, 2, rows)
    feature_map = _read_npy(map_path, np.float16, 4, rows)
    if pooled is None or feature_map is None:
        return None
    if map_layer == "head" and feature_map.shape[1] != pooled.shape[1]:
        warnings.warn(f"feature cache {map_path} has {feature_map.shape[1]} channels but {pooled_path} has "
                      f"{pooled.shape[1]} features: recomputed and overwritten", RuntimeWarning, stacklevel=4)
        return None
    return pooled, feature_map


def _read_npy(path: Path, dtype: type, ndim: int, rows: int) -> np.ndarray | None:
    """The finite ``dtype`` array with ``ndim`` axes and ``rows`` rows at ``path``, or None with a warning.

    Numbers only: ``allow_pickle=False`` refuses object arrays, whose loading would unpickle, and so run, code.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        reason = f"is unreadable as a numbers-only .npy file ({short_reason(error)})"
    else:
        if array.dtype == dtype and array.ndim == ndim and array.shape[0] == rows and np.isfinite(array).all():
            return array
        reason = (f"holds a {array.dtype} array of shape {array.shape}, not a finite {np.dtype(dtype).name} "
                  f"array of {ndim} axes and {rows} rows")
    warnings.warn(f"feature cache {path} {reason}: recomputed and overwritten", RuntimeWarning, stacklevel=5)
    return None


def _write_npy(array: np.ndarray, filename: str) -> None:
    with open(filename, "wb") as handle:  # a file object: np.save would append ".npy" to a bare name
        np.save(handle, array, allow_pickle=False)
