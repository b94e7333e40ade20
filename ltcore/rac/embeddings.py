"""The image keys of RAC's retrieval module, computed once per dataset and cached on disk.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022, Sec. 3.4:

    "Prior to training RAC, the retrieval module is initialized by producing image keys Z = {z_j} such that
    z_j = E(i_j) for all j, and storing the resultant representations in a fast approximate k-NN index."

:func:`embed_dataset` applies a frozen E (:mod:`ltcore.rac.image_encoders`) to every image of a dataset. With
``cache`` the result is stored as a ``.npy`` file keyed by what determines it (:func:`embedding_cache_path`:
the encoder's name, its weights' identity, the preprocessing and the dataset's content), written to a temporary
name and renamed into place, next to a JSON note of that key. A cache file is read with
``np.load(allow_pickle=False)``, so it can hold numbers only and reading it runs no code; an entry that cannot
be read that way, or is not a finite float32 [N, D] array for the N images, is recomputed and overwritten with a
warning naming the file.

Taught in notebook 04, *The encoders*.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ltcore import paths
from ltcore.config import progress_disabled
from ltcore.io import atomic_write
from ltcore.rac.image_encoders import ImageEncoder, Preprocessing
from ltcore.rac.weights import short_reason

CACHE_FORMAT_VERSION = 1


def dataset_fingerprint(dataset: torch.utils.data.Dataset, batch_size: int = 1024) -> str:
    """A string that changes when the dataset's content changes.

    A dataset may provide it as a ``fingerprint`` attribute or method (cheap); otherwise every item
    (image, label, index) is hashed in order, which reads the whole dataset once.
    """
    provided = getattr(dataset, "fingerprint", None)
    if provided is not None:
        return str(provided() if callable(provided) else provided)
    digest = hashlib.sha256(f"{type(dataset).__qualname__}:{len(dataset)}".encode())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        for part in batch if isinstance(batch, (list, tuple)) else (batch,):
            array = np.ascontiguousarray(torch.as_tensor(part).numpy())
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def embedding_cache_path(
    encoder: ImageEncoder, preprocessing: Preprocessing, fingerprint: str, cache_dir: str | os.PathLike | None
) -> tuple[Path, dict]:
    """Cache file for (encoder name, weights identity, preprocessing incl. image size, dataset fingerprint)."""
    key = {
        "version": CACHE_FORMAT_VERSION,
        "encoder": encoder.name,
        "weights_id": encoder.weights_id,
        "preprocessing": asdict(preprocessing),
        "dataset": fingerprint,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    size = preprocessing.image_size or "native"
    folder = Path(cache_dir) if cache_dir is not None else paths.cache_dir("embeddings")
    return folder / f"{encoder.name}-{size}-{digest}.npy", key


def read_cached_embeddings(path: Path, rows: int) -> np.ndarray | None:
    """The cached float32 [rows, D] array at ``path``, or None (with a warning) when the file is not one.

    Numbers only: ``allow_pickle=False`` refuses object arrays, whose loading would unpickle, and so run, code.
    """
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        reason = f"is unreadable as a numbers-only .npy file ({short_reason(error)})"
    else:
        if cached.ndim == 2 and cached.shape[0] == rows and cached.dtype == np.float32 and np.isfinite(cached).all():
            return cached
        reason = f"holds a {cached.dtype} array of shape {cached.shape}, not finite float32 [{rows}, D]"
    warnings.warn(f"embedding cache {path} {reason}: recomputed and overwritten", RuntimeWarning, stacklevel=3)
    return None


def _write_npy(array: np.ndarray, filename: str) -> None:
    with open(filename, "wb") as handle:  # a file object: np.save would append ".npy" to a bare name
        np.save(handle, array, allow_pickle=False)


def embed_dataset(
    encoder: ImageEncoder,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 128,
    image_size: int | None = None,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """E applied to every image of ``dataset``: float32 [N, D], row i = dataset[i] (items: image, label, index).

    Images are dataset tensors [C, H, W] in [0, 1] (grayscale C = 1 is repeated to 3 channels), resized to
    ``image_size`` (default: the encoder's) and normalised with the encoder's mean/std. With ``cache`` the
    result is stored under ``cache_dir`` (default ``ltcore.paths.cache_dir("embeddings")``, i.e.
    ``$LTCORE_CACHE/embeddings`` or ``<repo>/.cache/ltcore/embeddings``) keyed by the encoder name, its
    weights identity, the preprocessing and the dataset fingerprint, written to a temporary file and renamed.
    Embed the un-augmented dataset (``dataset.with_transform(None)``): with a random transform the content,
    and so the fingerprint, changes on every pass. A dataset with a ``fingerprint`` attribute spares the
    hashing pass of :func:`dataset_fingerprint`.
    """
    preprocessing = encoder.preprocessing
    if image_size is not None:
        preprocessing = replace(preprocessing, image_size=image_size)
    if cache:
        path, key = embedding_cache_path(encoder, preprocessing, dataset_fingerprint(dataset), cache_dir)
        if path.is_file():
            cached = read_cached_embeddings(path, len(dataset))
            if cached is not None:
                return cached
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = []
    for batch in tqdm(loader, desc=f"embed {encoder.name}", unit="batch", disable=progress_disabled(progress)):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        chunks.append(encoder.embed(images, preprocessing).cpu().numpy().astype(np.float32, copy=False))
    embeddings = np.concatenate(chunks, axis=0) if chunks else np.empty((0, encoder.embed_dim or 0), np.float32)
    if cache:
        atomic_write(path, lambda tmp: _write_npy(embeddings, tmp))
        meta = key | {"shape": list(embeddings.shape), "weights": encoder.weights}
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return embeddings
