"""Tests of ltcore.rac.image_encoders: RAC's frozen image encoder E and its preprocessing (Sec. 3.4, Table 4)."""

from __future__ import annotations

import pytest
import timm
import torch

from ltcore.rac.image_encoders import Preprocessing, build_image_encoder
from ltcore.rac.weights import load_efficientnet_lite


def test_lite0_weights_file_in_timm_naming_loads_by_name(tmp_path):
    source = load_efficientnet_lite("efficientnet_lite0", pretrained=False, seed=3)
    path = tmp_path / "lite0_timm.pth"
    torch.save(source.state_dict(), path)
    encoder = build_image_encoder("efficientnet_lite0", weights_file=path)
    torch.testing.assert_close(encoder.backbone.conv_stem.weight, source.conv_stem.weight)
    assert encoder.weights == f"file:{path}"


def test_image_encoder_is_frozen_and_embeds_grayscale():
    encoder = build_image_encoder("efficientnet_lite0", image_size=64)
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.rand(3, 1, 28, 28)  # Fashion-MNIST-like grayscale in [0, 1]
    embeddings = encoder.embed(images)
    assert embeddings.shape == (3, 1280) and not embeddings.requires_grad
    rgb = encoder.embed(images.expand(-1, 3, -1, -1))
    torch.testing.assert_close(embeddings, rgb)


@pytest.mark.parametrize("name, size, checkpoint", [
    ("efficientnet_lite1", 240, "efficientnet-lite1-77cc7160.pth"),
    ("efficientnet_lite2", 260, "efficientnet-lite2-9656183e.pth"),
])
def test_lite1_and_lite2_are_offline_encoders_at_their_pretraining_size(name, size, checkpoint):
    encoder = build_image_encoder(name)
    assert encoder.weights == f"bundled:{checkpoint}" and encoder.preprocessing.image_size == size
    assert encoder.embed(torch.rand(2, 1, 28, 28)).shape == (2, 1280) == (2, encoder.embed_dim)
    lite0 = build_image_encoder("efficientnet_lite0")
    assert encoder.weights_id != lite0.weights_id and type(encoder.backbone) is type(lite0.backbone)


def test_preprocessing_repeats_resizes_and_normalises():
    preprocessing = Preprocessing(4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    images = torch.full((1, 1, 2, 2), 0.75)
    out = preprocessing(images)
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 2.0, 0.75]))  # (0.75 - mean) / std
    with pytest.raises(ValueError, match="channels"):
        preprocessing(torch.rand(1, 2, 4, 4))


@pytest.mark.parametrize("options, message", [
    ({"interpolation": "area"}, "interpolation must be one of"),
    ({"crop_pct": 0.0}, r"crop_pct must be a finite number in \(0.0, 1.0\]"),
    ({"crop_pct": float("nan")}, "crop_pct must be a finite number"),
    ({"image_size": 0}, "image_size must be an integer >= 1"),
])
def test_preprocessing_settings_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**({"image_size": 4, "mean": (0.5,), "std": (0.5,)} | options))


def test_raw_pixels_and_random_init():
    raw = build_image_encoder("raw_pixels")
    images = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(raw.embed(images), images.reshape(2, 784))
    random_a = build_image_encoder("random_init", image_size=32)
    random_b = build_image_encoder("random_init", image_size=32, seed=1)
    pretrained = build_image_encoder("efficientnet_lite0", image_size=32)
    assert random_a.weights_id == build_image_encoder("random_init", image_size=32).weights_id  # seeded
    assert len({random_a.weights_id, random_b.weights_id, pretrained.weights_id}) == 3
    assert type(random_a.backbone) is type(pretrained.backbone)


def test_timm_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("test_vit", pretrained=False)
    torch.nn.init.normal_(source.patch_embed.proj.weight)  # make it differ from any default init
    path = tmp_path / "test_vit.pth"
    torch.save(source.state_dict(), path)
    encoder = build_image_encoder("test_vit", weights_file=path)
    loaded = encoder.backbone.state_dict()
    saved = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert encoder.embed(torch.rand(2, 1, 28, 28)).shape == (2, source.num_features)


@pytest.mark.parametrize("name, options, error, message", [
    ("test_vit", {"weights_file": "absent.pth"}, FileNotFoundError, "absent.pth"),
    ("no_such_encoder", {}, ValueError, "unknown image encoder"),
    ("raw_pixels", {"weights_file": "any.pth"}, ValueError, "takes no weights_file"),
])
def test_bad_encoder_requests_are_reported(tmp_path, name, options, error, message):
    options = {key: tmp_path / value for key, value in options.items()}
    with pytest.raises(error, match=message):
        build_image_encoder(name, **options)
