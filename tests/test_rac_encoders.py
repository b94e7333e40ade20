"""Tests of ltcore.rac.encoders: RAC's frozen image encoder E and text encoders T (Sec. 3.3-3.4, 4.4-4.5)."""

from __future__ import annotations

import socket

import numpy as np

import pytest
import timm
import torch

from ltcore.models import IMAGENET_MEAN_STD
from ltcore.rac import encoders
from ltcore.rac.encoders import (
    TINY_CLIP_OVERRIDES,
    OpenCLIPTextEncoder,
    Preprocessing,
    PretrainedWeightsUnavailable,
    embed_dataset,
    image_encoder,
    load_efficientnet_lite0,
    load_state_dict_by_position,
    text_encoder,
)

TABBY_CAT, ESPRESSO = 281, 967  # ImageNet-1k class ids


# ================================================================================================ image side
@pytest.fixture(scope="module")
def imagenet_photos() -> torch.Tensor:
    """scikit-image's chelsea (a tabby cat) and coffee (an espresso) as [2, 3, 224, 224], ImageNet eval crop."""
    skimage_data = pytest.importorskip("skimage.data")
    preprocessing = Preprocessing(224, *IMAGENET_MEAN_STD, crop_pct=0.875)
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    return torch.cat([preprocessing(torch.from_numpy(p).permute(2, 0, 1)[None].float() / 255) for p in photos])


def test_bundled_lite0_weights_classify_imagenet_photos(imagenet_photos):
    with torch.no_grad():
        probabilities = load_efficientnet_lite0(pretrained=True)(imagenet_photos).softmax(-1)  # (2, 1000)
    assert probabilities.argmax(-1).tolist() == [TABBY_CAT, ESPRESSO]
    assert probabilities[0, TABBY_CAT] > 0.3 and probabilities[1, ESPRESSO] > 0.8


def test_random_lite0_does_not(imagenet_photos):
    with torch.no_grad():
        probabilities = load_efficientnet_lite0(pretrained=False, seed=1)(imagenet_photos).softmax(-1)
    assert probabilities.argmax(-1).tolist() != [TABBY_CAT, ESPRESSO]
    assert probabilities[0, TABBY_CAT] < 0.05 and probabilities[1, ESPRESSO] < 0.05


def test_positional_mapping_names_the_mismatching_key(tmp_path):
    model = load_efficientnet_lite0(pretrained=False)
    state = torch.load(encoders.bundled_lite0_weights(), map_location="cpu", weights_only=True)
    state["_blocks.3._project_conv.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"_blocks\.3\._project_conv\.weight.*blocks\.2\.0\.conv_pwl\.weight"):
        load_state_dict_by_position(model, state, source="edited.pth")
    del state["_fc.bias"]
    with pytest.raises(ValueError, match="edited.pth: 295 tensors"):
        load_state_dict_by_position(model, state, source="edited.pth")


def test_lite0_weights_file_in_timm_naming_loads_by_name(tmp_path):
    source = load_efficientnet_lite0(pretrained=False, seed=3)
    path = tmp_path / "lite0_timm.pth"
    torch.save(source.state_dict(), path)
    encoder = image_encoder("efficientnet_lite0", weights_file=path)
    torch.testing.assert_close(encoder.backbone.conv_stem.weight, source.conv_stem.weight)
    assert encoder.weights == f"file:{path}"


def test_image_encoder_is_frozen_and_embeds_grayscale():
    encoder = image_encoder("efficientnet_lite0", image_size=64)
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.rand(3, 1, 28, 28)  # Fashion-MNIST-like grayscale in [0, 1]
    embeddings = encoder.embed(images)
    assert embeddings.shape == (3, 1280) and not embeddings.requires_grad
    rgb = encoder.embed(images.expand(-1, 3, -1, -1))
    torch.testing.assert_close(embeddings, rgb)


def test_preprocessing_repeats_resizes_and_normalises():
    preprocessing = Preprocessing(4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    images = torch.full((1, 1, 2, 2), 0.75)
    out = preprocessing(images)
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 2.0, 0.75]))  # (0.75 - mean) / std
    with pytest.raises(ValueError, match="channels"):
        preprocessing(torch.rand(1, 2, 4, 4))


def test_raw_pixels_and_random_init():
    raw = image_encoder("raw_pixels")
    images = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(raw.embed(images), images.reshape(2, 784))
    random_a = image_encoder("random_init", image_size=32)
    random_b = image_encoder("random_init", image_size=32, seed=1)
    pretrained = image_encoder("efficientnet_lite0", image_size=32)
    assert random_a.weights_id == image_encoder("random_init", image_size=32).weights_id  # seeded
    assert len({random_a.weights_id, random_b.weights_id, pretrained.weights_id}) == 3
    assert type(random_a.backbone) is type(pretrained.backbone)


def test_timm_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("test_vit", pretrained=False)
    torch.nn.init.normal_(source.patch_embed.proj.weight)  # make it differ from any default init
    path = tmp_path / "test_vit.pth"
    torch.save(source.state_dict(), path)
    encoder = image_encoder("test_vit", weights_file=path)
    loaded = encoder.backbone.state_dict()
    saved = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert encoder.embed(torch.rand(2, 1, 28, 28)).shape == (2, source.num_features)


def test_missing_weights_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        image_encoder("test_vit", weights_file=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="unknown image encoder"):
        image_encoder("no_such_encoder")


@pytest.fixture
def hub_offline(monkeypatch):
    """Make the Hugging Face hub unreachable at once (instead of after ~45 s of retries)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_unreachable_hub_gives_a_clear_error_for_timm(hub_offline, tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        image_encoder("test_resnet", pretrained=True, cache_dir=tmp_path)
    message = str(caught.value)
    assert "test_resnet" in message and "weights_file=" in message
    assert caught.value.__suppress_context__, "no chained deep traceback"


def test_unreachable_hub_gives_a_clear_error_for_open_clip(hub_offline, tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable, match=r"openai.*pretrained='/path"):
        text_encoder("clip", 3, cache_dir=tmp_path)


@pytest.fixture
def dns_fails(monkeypatch):
    """An offline machine without proxy: every host name lookup fails at once."""
    import huggingface_hub.constants

    def no_lookup(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)


def test_unresolvable_hub_fails_at_once_without_trying_to_download(dns_fails, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: calls.append(kwargs))
    with pytest.raises(PretrainedWeightsUnavailable, match=r"cannot resolve huggingface.co.*not in the Hub cache"):
        image_encoder("test_resnet", pretrained=True, cache_dir=tmp_path)
    with pytest.raises(PretrainedWeightsUnavailable, match=r"cannot resolve huggingface.co.*pretrained='/path"):
        text_encoder("clip", 3, cache_dir=tmp_path)
    assert calls == [], "no download was attempted"


def test_unresolvable_hub_loads_a_copy_already_in_the_hub_cache(dns_fails, tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False)
    snapshot = tmp_path / "models--timm--test_resnet.r160_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(source.state_dict(), snapshot / "model.safetensors")
    (tmp_path / "models--timm--test_resnet.r160_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--test_resnet.r160_in1k" / "refs" / "main").write_text("0123abcd")
    encoder = image_encoder("test_resnet", pretrained=True, cache_dir=tmp_path)
    assert encoder.weights == "timm:timm/test_resnet.r160_in1k"
    loaded = dict(encoder.backbone.named_parameters())
    for name, weight in source.named_parameters():
        if not name.startswith("fc."):                      # the classifier is dropped (num_classes=0)
            assert torch.equal(loaded[name], weight), name


# ========================================================================================= embedding cache
class TinyImages(torch.utils.data.Dataset):
    """Items (image [1, 28, 28] in [0, 1], label, index), like the lead's Fashion-MNIST datasets."""

    def __init__(self, n: int = 10, seed: int = 0) -> None:
        self.images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 3, index


def test_embed_dataset_matches_direct_embedding_and_caches(tmp_path, monkeypatch):
    encoder = image_encoder("test_efficientnet", pretrained=False, image_size=32)
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
    other_weights = image_encoder("test_efficientnet", pretrained=False, image_size=32, seed=1)
    monkeypatch.setattr(other_weights, "embed", fail)
    with pytest.raises(AssertionError, match="cache miss"):  # other weights -> other key
        embed_dataset(other_weights, dataset, cache_dir=tmp_path, progress=False)


def test_default_cache_is_under_ltcore_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LTCORE_CACHE", str(tmp_path))
    embed_dataset(image_encoder("raw_pixels"), TinyImages(n=3), progress=False)
    written = list((tmp_path / "embeddings").glob("raw_pixels-native-*.npy"))
    assert len(written) == 1 and np.load(written[0]).shape == (3, 784)


# ============================================================================================== text side
RETRIEVED = [
    ["T-shirt/top", "Shirt", "Ankle boot"],
    ["Bag"] * 40,  # long enough to be truncated at 77 positions
]


def test_clip_tokens_equal_tokenising_the_joined_string():
    encoder = text_encoder("clip_tiny", 10)
    ids, mask = encoder.tokenize(RETRIEVED)
    direct = encoder.tokenizer([", ".join(texts) for texts in RETRIEVED])  # open_clip's own truncation
    torch.testing.assert_close(ids, direct)
    assert ids.shape == (2, 77) and mask.sum(1).tolist() == [int((direct[0] > 0).sum()), 77]
    assert ids[1, -1] == encoder.tokenizer.eot_token_id


def test_clip_trainable_parameters_follow_the_flag():
    trained = text_encoder("clip_tiny", 10, train_transformer=True)
    frozen = text_encoder("clip_tiny", 10, train_transformer=False)
    assert {n for n, _ in frozen.trainable_parameters()} == {"head.weight", "head.bias"}
    names = {n for n, _ in trained.trainable_parameters()}
    assert {"head.weight", "clip.token_embedding.weight"} <= names and "clip.logit_scale" not in names
    frozen.train()
    assert frozen.training and not frozen.clip.training
    assert frozen(RETRIEVED).shape == (2, 10)


def test_open_clip_local_checkpoint_is_loaded(tmp_path):
    import open_clip

    source = open_clip.create_model("ViT-B-32", pretrained=None, **TINY_CLIP_OVERRIDES)
    torch.nn.init.normal_(source.token_embedding.weight)
    path = tmp_path / "tiny_clip.pt"
    torch.save(source.state_dict(), path)
    encoder = OpenCLIPTextEncoder(4, "ViT-B-32", pretrained=path, model_overrides=TINY_CLIP_OVERRIDES)
    for key, value in encoder.clip.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], msg=key)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        OpenCLIPTextEncoder(4, "ViT-B-32", pretrained=tmp_path / "nowhere.pt", model_overrides=TINY_CLIP_OVERRIDES)


def test_bag_of_words_is_deterministic_and_a_mean():
    first = text_encoder("bow_random", 5, seed=7)
    second = text_encoder("bow_random", 5, seed=7)
    second.text_ids("ankle boot")  # a different order of first sight must not change the vectors
    for word in ["shirt", "ankle", "boot", "t"]:
        torch.testing.assert_close(first.word_vector(word), second.word_vector(word))
    vector = first.word_vector("shirt")
    assert vector.shape == (300,) and 0.0 <= vector.min() and vector.max() < 1.0
    assert not torch.equal(vector, text_encoder("bow_random", 5, seed=8).word_vector("shirt"))
    embedded = first.embed([["T-shirt/top", "Shirt"]])[0]
    words = ["t", "shirt", "top", "shirt"]
    torch.testing.assert_close(embedded, torch.stack([first.word_vector(w) for w in words]).mean(0))
    assert {n for n, _ in first.trainable_parameters()} == {"head.weight", "head.bias"}
    torch.testing.assert_close(first(RETRIEVED), first.head(first.embed(RETRIEVED)))


def test_bag_of_words_truncates_at_76_words():
    encoder = text_encoder("bow_random", 2)
    ids, mask = encoder.tokenize([["word"] * 100, ["one two"]])
    assert mask.sum(1).tolist() == [76, 2]


def test_text_input_is_validated():
    encoder = text_encoder("bow_random", 2)
    with pytest.raises(ValueError, match="list of strings"):
        encoder(["a bare string per query"])
    with pytest.raises(ValueError, match="unknown text encoder"):
        text_encoder("glove", 2)


@pytest.mark.slow  # importing sentence-transformers takes ~7 s on this machine
def test_minilm_loads_offline_and_embeds_sensibly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    encoder = text_encoder("minilm", 10, train_transformer=False)
    embeddings = encoder.embed([["shirt"], ["t-shirt"], ["ankle boot"]])  # (3, 384), unit norm
    assert embeddings.shape == (3, 384)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    ids, _ = encoder.tokenize(RETRIEVED)
    direct = encoder.tokenizer(
        [", ".join(texts) for texts in RETRIEVED], truncation=True, max_length=77, padding=True, return_tensors="pt"
    )["input_ids"]
    torch.testing.assert_close(ids, direct)
    assert {n for n, _ in encoder.trainable_parameters()} == {"head.weight", "head.bias"}
    assert encoder(RETRIEVED).shape == (2, 10)
