"""Tests of ltcore.rac.text_encoders: RAC's text encoder T (Sec. 3.3-3.4, Fig. 4)."""

from __future__ import annotations

import pytest
import torch

from ltcore.rac.text_encoders import TINY_CLIP_OVERRIDES, OpenCLIPTextEncoder, build_text_encoder, has_transformer

RETRIEVED = [
    ["T-shirt/top", "Shirt", "Ankle boot"],
    ["Bag"] * 40,  # long enough to be truncated at 77 positions
]


def test_clip_tokens_equal_tokenising_the_joined_string():
    encoder = build_text_encoder("clip_tiny", 10)
    ids, mask = encoder.tokenize(RETRIEVED)
    direct = encoder.tokenizer([", ".join(texts) for texts in RETRIEVED])  # open_clip's own truncation
    torch.testing.assert_close(ids, direct)
    assert ids.shape == (2, 77) and mask.sum(1).tolist() == [int((direct[0] > 0).sum()), 77]
    assert ids[1, -1] == encoder.tokenizer.eot_token_id


def test_clip_trainable_parameters_follow_the_flag():
    trained = build_text_encoder("clip_tiny", 10, train_transformer=True)
    frozen = build_text_encoder("clip_tiny", 10, train_transformer=False)
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
    first = build_text_encoder("bow_random", 5, seed=7)
    second = build_text_encoder("bow_random", 5, seed=7)
    second.text_ids("ankle boot")  # a different order of first sight must not change the vectors
    for word in ["shirt", "ankle", "boot", "t"]:
        torch.testing.assert_close(first.word_vector(word), second.word_vector(word))
    vector = first.word_vector("shirt")
    assert vector.shape == (300,) and 0.0 <= vector.min() and vector.max() < 1.0
    assert not torch.equal(vector, build_text_encoder("bow_random", 5, seed=8).word_vector("shirt"))
    embedded = first.embed([["T-shirt/top", "Shirt"]])[0]
    words = ["t", "shirt", "top", "shirt"]
    torch.testing.assert_close(embedded, torch.stack([first.word_vector(w) for w in words]).mean(0))
    assert {n for n, _ in first.trainable_parameters()} == {"head.weight", "head.bias"}
    torch.testing.assert_close(first(RETRIEVED), first.head(first.embed(RETRIEVED)))


def test_bag_of_words_truncates_at_76_words():
    encoder = build_text_encoder("bow_random", 2)
    ids, mask = encoder.tokenize([["word"] * 100, ["one two"]])
    assert mask.sum(1).tolist() == [76, 2]


def test_train_transformer_does_not_apply_to_the_bag_of_words():
    """The factory takes the flag for every T; the bag of words has no transformer, so only its head trains."""
    assert [has_transformer(name) for name in ("clip", "clip_tiny", "minilm", "bow_random")] == [True] * 3 + [False]
    for flag in (False, True):
        bag = build_text_encoder("bow_random", 3, train_transformer=flag)
        assert not bag.train_transformer and {n for n, _ in bag.trainable_parameters()} == {"head.weight", "head.bias"}
    assert build_text_encoder("clip_tiny", 3, train_transformer=True).train_transformer


@pytest.mark.parametrize("build, message", [
    (lambda: build_text_encoder("bow_random", 2)(["a bare string per query"]), "list of strings"),
    (lambda: build_text_encoder("bow_random", 2)([]), "non-empty list of lists"),
    (lambda: build_text_encoder("glove", 2), r"text encoder must be one of \['bow_random', 'clip'"),
    (lambda: has_transformer("glove"), "text encoder must be one of"),
    (lambda: build_text_encoder("bow_random", 0), "num_classes must be an integer >= 1"),
    (lambda: build_text_encoder("bow_random", 2, pooling="max"), "pooling must be one of"),
])
def test_text_input_is_validated(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.slow  # importing sentence-transformers takes ~7 s on this machine
def test_minilm_loads_offline_and_embeds_sensibly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    encoder = build_text_encoder("minilm", 10, train_transformer=False)
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
