"""Tests of ltcore.rac.embeddings: E's keys of a whole dataset and their cache on disk (Sec. 3.4)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ltcore.rac.embeddings import dataset_fingerprint, embed_dataset, embedding_cache_path
from ltcore.rac.image_encoders import build_image_encoder


class TinyImages(torch.utils.data.Dataset):
    """Items (image [1, 28, 28] in [0, 1], label, index), like the Fashion-MNIST datasets."""

    def __init__(self, n: int = 10, seed: int = 0) -> None:
        self.images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 3, index


def test_embed_dataset_matches_direct_embedding_and_caches(tmp_path, monkeypatch):
    encoder = build_image_encoder("test_efficientnet", pretrained=False, image_size=32)
    dataset = TinyImages()
    embeddings = embed_dataset(encoder, dataset, batch_size=4, cache_dir=tmp_path, progress=False)
    assert embeddings.dtype == np.float32 and embeddings.shape == (10, encoder.embed_dim)
    np.testing.assert_allclose(embeddings, encoder.embed(dataset.images).numpy(), rtol=1e-5, atol=1e-5)
    assert len(list(tmp_path.glob("*.npy"))) == 1 and not list(tmp_path.glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("cache miss: the encoder ran again")

    monkeypatch.setattr(encoder, "embed", fail)
    np.testing.assert_array_equal(embed_dataset(encoder, dataset, cache_dir=tmp_path, progress=False), embeddings)
    with pytest.raises(AssertionError, match="cache miss"):  # other content -> other key
        embed_dataset(encoder, TinyImages(seed=1), cache_dir=tmp_path, progress=False)
    with pytest.raises(AssertionError, match="cache miss"):  # other image size -> other key
        embed_dataset(encoder, dataset, image_size=48, cache_dir=tmp_path, progress=False)
    other_weights = build_image_encoder("test_efficientnet", pretrained=False, image_size=32, seed=1)
    monkeypatch.setattr(other_weights, "embed", fail)
    with pytest.raises(AssertionError, match="cache miss"):  # other weights -> other key
        embed_dataset(other_weights, dataset, cache_dir=tmp_path, progress=False)


def test_default_cache_is_under_ltcore_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LTCORE_CACHE", str(tmp_path))
    embed_dataset(build_image_encoder("raw_pixels"), TinyImages(n=3), progress=False)
    written = list((tmp_path / "embeddings").glob("raw_pixels-native-*.npy"))
    assert len(written) == 1 and np.load(written[0]).shape == (3, 784)


def test_fingerprint_follows_the_content_or_the_datasets_own():
    assert dataset_fingerprint(TinyImages()) == dataset_fingerprint(TinyImages())
    assert dataset_fingerprint(TinyImages()) != dataset_fingerprint(TinyImages(seed=1))
    marked = TinyImages()
    marked.fingerprint = "v1"
    assert dataset_fingerprint(marked) == "v1"


def _cache_file(encoder, dataset, folder):
    path, _ = embedding_cache_path(encoder, encoder.preprocessing, dataset_fingerprint(dataset), folder)
    return path


@pytest.mark.hostile
def test_a_cache_entry_holding_a_pickle_payload_runs_no_code_and_is_recomputed(tmp_path):
    """A planted object array (loading it would unpickle, so run, its payload) is read numbers-only: refused,
    recomputed with a warning naming the file, and overwritten."""
    encoder, dataset = build_image_encoder("raw_pixels"), TinyImages(n=3)
    path = _cache_file(encoder, dataset, tmp_path)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.save(handle, np.array([Payload()], dtype=object), allow_pickle=True)
    assert b"system" in path.read_bytes()  # the payload is really in the file
    with pytest.warns(RuntimeWarning, match=f"embedding cache {path} is unreadable as a numbers-only .npy file"):
        embeddings = embed_dataset(encoder, dataset, cache_dir=tmp_path, progress=False)
    assert not marker.exists(), "the payload ran"
    np.testing.assert_array_equal(embeddings, dataset.images.reshape(3, -1).numpy())
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), embeddings)  # overwritten with numbers


@pytest.mark.parametrize("stored", [
    np.zeros((2, 784), np.float32),                   # wrong number of rows
    np.zeros((3, 784), np.float64),                   # wrong dtype
    np.full((3, 784), np.nan, np.float32),            # not finite
    b"\x93NUMPY truncated",                           # damaged file
])
def test_a_damaged_cache_entry_is_recomputed_with_a_warning(tmp_path, stored):
    encoder, dataset = build_image_encoder("raw_pixels"), TinyImages(n=3)
    path = _cache_file(encoder, dataset, tmp_path)
    if isinstance(stored, bytes):
        path.write_bytes(stored)
    else:
        np.save(path, stored)
    with pytest.warns(RuntimeWarning, match=f"embedding cache {path}.*recomputed and overwritten"):
        embeddings = embed_dataset(encoder, dataset, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(embeddings, dataset.images.reshape(3, -1).numpy())

