"""Tests of ltcore.features: frozen pretrained features (pooled vector and spatial map), extracted once and cached."""

from __future__ import annotations

import os
import shlex

import numpy as np
import pytest
import torch

from ltcore.features import FeatureArrays, extract_features, images_encoded
from ltcore.rac.image_encoders import build_image_encoder
from ltcore.rac.weights import load_efficientnet_lite


@pytest.fixture(scope="module")
def tiny_encoder():
    """timm's tiny ``test_efficientnet`` (256 features, the Lite layout in miniature), seeded random weights."""
    return build_image_encoder("test_efficientnet", pretrained=False, seed=0)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


def test_pooled_vector_is_what_the_lite0_classifier_sees(images):
    features = extract_features(images, "efficientnet_lite0", 64, cache=False, progress=False)
    model = load_efficientnet_lite("efficientnet_lite0")  # with its ImageNet classifier
    encoder = build_image_encoder("efficientnet_lite0", image_size=64)
    inputs = encoder.preprocessing(torch.from_numpy(images)[:, None].float() / 255)  # (5, 28, 28) -> (5, 3, 64, 64)
    with torch.no_grad():
        feature_map = model.forward_features(inputs)  # (5, 1280, 2, 2)
        pooled = model.forward_head(feature_map, pre_logits=True)  # (5, 1280)
        logits = model(inputs)
    assert isinstance(features, FeatureArrays)
    assert features.pooled.dtype == np.float32 and features.pooled.shape == (5, 1280)
    assert features.feature_map.dtype == np.float16 and features.feature_map.shape == (5, 1280, 2, 2)
    torch.testing.assert_close(torch.from_numpy(features.pooled), pooled, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(features.feature_map).float(), feature_map, atol=1e-2, rtol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(torch.from_numpy(features.pooled)), logits, atol=1e-3, rtol=1e-3)
    assert (features.encoder, features.image_size, features.map_layer) == ("efficientnet_lite0", 64, "head")
    assert features.weights_id == encoder.weights_id


def test_head_map_averages_to_the_pooled_vector_and_last_block_is_before_the_head(tiny_encoder, images):
    head = extract_features(images, tiny_encoder, 64, cache=False, progress=False)
    block = extract_features(images, tiny_encoder, 64, cache=False, progress=False, map_layer="last_block")
    np.testing.assert_allclose(head.feature_map.astype(np.float32).mean(axis=(2, 3)), head.pooled, atol=2e-2)
    np.testing.assert_array_equal(block.pooled, head.pooled)
    backbone = tiny_encoder.backbone
    assert head.feature_map.shape == (5, backbone.num_features, 2, 2)
    assert block.feature_map.shape == (5, backbone.conv_head.in_channels, 2, 2)
    with torch.no_grad():
        head_from_block = backbone.bn2(backbone.conv_head(torch.from_numpy(block.feature_map).float()))
    torch.testing.assert_close(head_from_block, torch.from_numpy(head.feature_map).float(), atol=0.1, rtol=0.05)


def test_grayscale_is_rgb_with_three_equal_channels(tiny_encoder, images):
    gray = extract_features(images, tiny_encoder, 32, cache=False, progress=False)
    rgb = extract_features(np.repeat(images[..., None], 3, axis=-1), tiny_encoder, 32, cache=False, progress=False)
    np.testing.assert_allclose(gray.pooled, rgb.pooled, atol=1e-5)
    batched = extract_features(images, tiny_encoder, 32, batch_size=2, cache=False, progress=False)
    np.testing.assert_allclose(batched.pooled, gray.pooled, atol=1e-5)  # row i is images[i] whatever the batches


def test_a_second_call_is_answered_from_the_cache(tiny_encoder, images, tmp_path):
    before = images_encoded()
    first = extract_features(images, tiny_encoder, 32, cache_dir=tmp_path, progress=False)
    assert images_encoded() - before == len(images)
    assert sorted(p.suffixes[-2] if p.suffix == ".npy" else p.suffix for p in tmp_path.iterdir()) == \
        [".json", ".map", ".pooled"]
    second = extract_features(images, tiny_encoder, 32, cache_dir=tmp_path, progress=False)
    assert images_encoded() - before == len(images), "the encoder ran again"
    np.testing.assert_array_equal(second.pooled, first.pooled)
    np.testing.assert_array_equal(second.feature_map, first.feature_map)
    assert second._replace(pooled=None, feature_map=None) == first._replace(pooled=None, feature_map=None)


@pytest.mark.parametrize("change", ["pixel", "image_size", "map_layer", "weights", "no_cache"])
def test_the_cache_is_keyed_by_content_size_layer_and_weights(tiny_encoder, images, tmp_path, change):
    extract_features(images, tiny_encoder, 32, cache_dir=tmp_path, progress=False)
    options = dict(image_size=32, map_layer="head", cache=True)
    encoder = tiny_encoder
    if change == "pixel":
        images = images.copy()
        images[2, 3, 4] ^= 1
    elif change == "image_size":
        options["image_size"] = 40
    elif change == "map_layer":
        options["map_layer"] = "last_block"
    elif change == "weights":
        encoder = build_image_encoder("test_efficientnet", pretrained=False, seed=1)
    else:
        options["cache"] = False
    before = images_encoded()
    extract_features(images, encoder, options.pop("image_size"), cache_dir=tmp_path, progress=False, **options)
    assert images_encoded() - before == len(images)


def test_default_cache_is_under_ltcore_cache(tiny_encoder, images, tmp_path, monkeypatch):
    monkeypatch.setenv("LTCORE_CACHE", str(tmp_path))
    extract_features(images, tiny_encoder, 32, progress=False)
    assert len(list((tmp_path / "features").glob("test_efficientnet-32px-head-*.npy"))) == 2


@pytest.mark.parametrize("images, encoder, options, error, message", [
    (np.zeros((2, 8, 8), np.float32), "tiny", {}, ValueError, "images must be a uint8 numpy array"),
    ([[[0]]], "tiny", {}, ValueError, "got a list"),
    (np.zeros((2, 8, 8, 4), np.uint8), "tiny", {}, ValueError, r"\[N, H, W, 3\].*got shape \(2, 8, 8, 4\)"),
    (np.zeros((0, 8, 8), np.uint8), "tiny", {}, ValueError, "N >= 1"),
    (np.zeros((2, 8, 8), np.uint8), "resnet50", {}, ValueError, "encoder must be one of"),
    (np.zeros((2, 8, 8), np.uint8), 3, {}, TypeError, "encoder must be one of .* or an ImageEncoder, got int"),
    (np.zeros((2, 8, 8), np.uint8), "tiny", {"image_size": 0}, ValueError, "image_size must be an integer >= 1"),
    (np.zeros((2, 8, 8), np.uint8), "tiny", {"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
    (np.zeros((2, 8, 8), np.uint8), "tiny", {"map_layer": "middle"}, ValueError, "map_layer must be one of"),
    (np.zeros((2, 8, 8), np.uint8), "raw_pixels", {}, ValueError, "'raw_pixels' has no spatial feature map"),
    (np.zeros((2, 8, 8), np.uint8), "test_vit", {}, ValueError, "not a spatial map"),
    (np.zeros((2, 8, 8), np.uint8), "test_resnet", {"map_layer": "last_block"}, ValueError, "EfficientNet-style"),
])
def test_bad_requests_are_clear_errors(tiny_encoder, tmp_path, images, encoder, options, error, message):
    if encoder == "tiny":
        encoder = tiny_encoder
    elif encoder in ("raw_pixels", "test_vit", "test_resnet"):
        encoder = build_image_encoder(encoder, pretrained=False)
    options = {"image_size": 32} | options
    with pytest.raises(error, match=message):
        extract_features(images, encoder, options.pop("image_size"), cache_dir=tmp_path, progress=False, **options)
    assert not any(tmp_path.iterdir()), "nothing was cached"


# ========================================================================================== hostile inputs
class Payload:
    """Unpickling it creates ``marker`` through a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.mark.hostile
@pytest.mark.parametrize("which", ["pooled", "map"])
@pytest.mark.parametrize("content", ["payload", "garbage", "nan", "wrong_rows"])
def test_a_crafted_or_damaged_cache_file_runs_nothing_and_is_recomputed(tiny_encoder, images, tmp_path, which,
                                                                        content):
    cache, marker = tmp_path / "cache", tmp_path / "payload-ran"
    clean = extract_features(images, tiny_encoder, 32, cache_dir=cache, progress=False)
    [path] = cache.glob(f"*.{which}.npy")
    if content == "payload":
        np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    elif content == "garbage":
        path.write_bytes(b"not an array")
    else:
        array = np.load(path)
        if content == "nan":
            array.reshape(-1)[0] = np.nan
        np.save(path, array[:2] if content == "wrong_rows" else array)
    before = images_encoded()
    with pytest.warns(RuntimeWarning, match=f"feature cache {path}.*recomputed and overwritten"):
        again = extract_features(images, tiny_encoder, 32, cache_dir=cache, progress=False)
    assert not marker.exists(), "the payload ran"
    assert images_encoded() - before == len(images)
    np.testing.assert_array_equal(again.pooled, clean.pooled)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), getattr(clean, "pooled" if which == "pooled"
                                                                             else "feature_map"))


@pytest.mark.hostile
def test_non_finite_features_are_an_error_and_never_cached(images, tmp_path):
    encoder = build_image_encoder("test_efficientnet", pretrained=False, seed=0)
    with torch.no_grad():
        encoder.backbone.conv_stem.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="test_efficientnet at 32px gave non-finite pooled features"):
        extract_features(images, encoder, 32, cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
