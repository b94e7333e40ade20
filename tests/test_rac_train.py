"""Tests of ltcore.rac.train: RAC's training recipe on tiny synthetic data (test_resnet, tiny text encoders)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ltcore.data.datasets import ArrayDataset, LTSplits, RandomCropFlip
from ltcore.rac import fuse_logits
from ltcore.rac.classifier import RACClassifier
from ltcore.rac.image_encoders import build_image_encoder
from ltcore.rac.text_encoders import build_text_encoder
from ltcore.rac.train import (RACSettings, build_rac_classifier, build_retrieval_module, build_retrieval_setup,
                              precompute_neighbour_tables, text_embedding_table, train_rac)
from ltcore.train import TrainConfig
from synthetic import class_images

CLASS_NAMES = ["T-shirt/top", "Trouser", "Ankle boot", "Bag"]
TRAIN_COUNTS = np.array([24, 12, 6, 3])
K = 3


def tiny_splits(augment: bool = True) -> LTSplits:
    train_images, train_labels = class_images(TRAIN_COUNTS, seed=0)
    val_images, val_labels = class_images([2] * 4, seed=1)
    test_images, test_labels = class_images([3] * 4, seed=2)
    transform = RandomCropFlip(generator=torch.Generator().manual_seed(0)) if augment else None
    return LTSplits(
        name="tiny",
        train=ArrayDataset(train_images, train_labels, transform, class_names=CLASS_NAMES),
        val=ArrayDataset(val_images, val_labels, class_names=CLASS_NAMES),
        test=ArrayDataset(test_images, test_labels, class_names=CLASS_NAMES),
        class_counts=TRAIN_COUNTS,
        class_names=CLASS_NAMES,
    )


@pytest.fixture(scope="module")
def splits() -> LTSplits:
    return tiny_splits()


@pytest.fixture(scope="module")
def raw_setup(splits, tmp_path_factory):
    """E = raw pixels (no weights), HNSW index (M = 32) over the 45 training images."""
    return build_retrieval_setup(splits, build_image_encoder("raw_pixels"),
                                 cache_dir=tmp_path_factory.mktemp("emb"), progress=False)


@pytest.fixture(scope="module")
def cnn_setup(splits, tmp_path_factory):
    """E = timm's tiny test EfficientNet (conv + batch norm, random weights) at 32 px."""
    encoder = build_image_encoder("test_efficientnet", pretrained=False, image_size=32)
    return build_retrieval_setup(splits, encoder, cache_dir=tmp_path_factory.mktemp("emb"), progress=False)


CONFIG = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=0, progress=False, eval_batch_size=64)
LACE = RACSettings().loss(TRAIN_COUNTS)  # the common loss: LACE, tau = 1, label smoothing 0.1


# ================================================================================================ set-up
def test_setup_embeds_every_split_and_indexes_the_training_keys(splits, raw_setup):
    assert {name: emb.shape for name, emb in raw_setup.embeddings.items()} == {
        "train": (45, 784), "val": (8, 784), "test": (12, 784)}
    assert raw_setup.index.ntotal == 45 and raw_setup.index.kind == "hnsw" and raw_setup.index.hnsw_m == 32
    assert raw_setup.texts[:2] == ["T-shirt/top", "T-shirt/top"] and raw_setup.texts[-1] == "Bag"
    # the keys are the un-augmented images, although the training split augments
    np.testing.assert_allclose(raw_setup.embeddings["train"][5], splits.train.image_tensor(5).flatten().numpy())


def test_setup_rejects_bad_arguments(splits):
    with pytest.raises(ValueError, match="must contain 'train'"):
        build_retrieval_setup(splits, build_image_encoder("raw_pixels"), embed_splits=("test",))
    with pytest.raises(ValueError, match="image_size applies"):
        build_retrieval_setup(splits, build_image_encoder("raw_pixels"), image_size=64)
    with pytest.raises(ValueError, match="class_names"):
        build_retrieval_setup(dataclasses.replace(splits, class_names=[]), build_image_encoder("raw_pixels"))


# ===================================================================================== precomputed retrieval
def test_precomputed_neighbours_equal_live_search(raw_setup, splits):
    module = build_retrieval_module(raw_setup, build_text_encoder("bow_random", 4), k=K)
    tables = precompute_neighbour_tables(module, raw_setup.embeddings)
    assert {name: tuple(t.shape) for name, t in tables.items()} == {"train": (45, K), "val": (8, K), "test": (12, K)}
    encoder = raw_setup.image_encoder
    train_images = torch.stack([splits.train.image_tensor(i) for i in range(45)])
    module.train()  # training rule: k + 1 searched, first dropped
    torch.testing.assert_close(module.neighbours(encoder.embed(train_images)), tables["train"])
    module.eval()
    test_images = torch.stack([splits.test[i][0] for i in range(12)])
    torch.testing.assert_close(module.neighbours(encoder.embed(test_images)), tables["test"])


def test_training_mode_drops_the_self_hit(raw_setup):
    module = build_retrieval_module(raw_setup, build_text_encoder("bow_random", 4), k=K)
    train = {"train": raw_setup.embeddings["train"]}
    ids = torch.arange(45)[:, None]
    assert not (precompute_neighbour_tables(module, train)["train"] == ids).any(), "no image retrieves itself"
    # as an evaluation query a training image finds itself first (the database finds itself)
    as_eval = module.eval().precompute_neighbours(raw_setup.embeddings["train"], drop=False, progress=False)
    torch.testing.assert_close(as_eval[:, :1], ids)
    torch.testing.assert_close(precompute_neighbour_tables(module, train)["train"], as_eval.new_tensor(
        module.index.search(raw_setup.embeddings["train"], K + 1)[1][:, 1:]))
    by_id = build_retrieval_module(raw_setup, build_text_encoder("bow_random", 4), k=K, drop_self="id")
    assert not (precompute_neighbour_tables(by_id, train)["train"] == ids).any()
    with pytest.raises(ValueError, match="the training rows must be the index keys"):
        precompute_neighbour_tables(module, {"train": raw_setup.embeddings["train"][:40]})


def test_cached_text_embeddings_equal_encoding_each_query():
    text = build_text_encoder("bow_random", 4)
    queries = [["Bag", "Trouser"], ["Trouser", "Bag"], ["Bag", "Trouser"], ["Ankle boot", "Ankle boot"]]
    table = text_embedding_table(text, queries, batch_size=2)
    torch.testing.assert_close(table, torch.cat([text.embed([row]) for row in queries]))
    torch.testing.assert_close(table[0], table[2])
    with pytest.raises(ValueError, match="cannot be cached"):
        text_embedding_table(build_text_encoder("clip_tiny", 4, train_transformer=True), queries)


def test_cached_and_live_retrieval_give_the_same_logits(raw_setup):
    """Un-augmented data: on-line retrieval (E + search + T on every batch) == precomputed tables + cached T."""
    plain = tiny_splits(augment=False)
    cached = build_rac_classifier(plain, RACSettings(k=K), setup=raw_setup, backbone="test_resnet")
    live = RACClassifier(cached.model)  # the same weights, no tables: retrieval runs on the batch images
    assert cached.text_tables and not live.neighbour_tables
    for split, mode in (("train", "train"), ("test", "eval")):  # training rule on train, evaluation on test
        dataset = getattr(plain, split)
        images, _, indices = next(iter(torch.utils.data.DataLoader(dataset, batch_size=10, shuffle=True)))
        getattr(cached, mode)(), getattr(live, mode)()
        got, want = cached(images, indices), live(images, indices)
        for branch in ("fused", "base", "retrieval"):
            torch.testing.assert_close(getattr(got, branch), getattr(want, branch), msg=f"{branch} on {split}")


# ======================================================================================= training and scoring
def test_one_fit_epoch_runs_and_every_branch_is_scored(splits, raw_setup):
    result = train_rac(splits, CONFIG, RACSettings(k=K), setup=raw_setup, backbone="test_resnet", progress=False)
    assert len(result["history"].epochs) == 1 and np.isfinite(result["history"].last()["loss"])
    assert "val_top1" in result["history"].last()
    predictions = result["predictions"]
    assert {key: predictions[key].shape for key in ("logits", "base", "retrieval")} == {
        "logits": (12, 4), "base": (12, 4), "retrieval": (12, 4)}
    np.testing.assert_allclose(predictions["logits"], fuse_logits(torch.from_numpy(predictions["retrieval"]),
                                                                  torch.from_numpy(predictions["base"])).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert list(result["rows"]) == ["fused", "base", "retrieval"]
    assert [row["method"] for row in result["rows"].values()] == ["RAC", "RAC: base branch", "RAC: retrieval branch"]
    row = result["row"]
    assert row["k"] == K and row["text_encoder"] == "bow_random" and row["text_encoder_mode"] == "frozen, cached"
    retrieval_acc = (predictions["retrieval"].argmax(1) == predictions["labels"]).mean()
    assert result["rows"]["retrieval"]["overall"] == pytest.approx(100 * retrieval_acc, abs=0.01)  # balanced test


@pytest.mark.parametrize("mode, keys", [("base", {"logits", "base"}), ("retrieval", {"logits", "retrieval"})])
def test_single_branch_modes(splits, raw_setup, mode, keys):
    result = train_rac(splits, CONFIG, RACSettings(k=K), setup=raw_setup if mode == "retrieval" else None,
                       mode=mode, backbone="test_resnet", progress=False)
    assert set(result["predictions"]) - {"labels", "indices"} == keys
    np.testing.assert_array_equal(result["predictions"]["logits"], result["predictions"][mode])
    assert list(result["rows"]) == ["fused"] and result["row"]["method"] == mode.capitalize()
    assert result["row"]["text_encoder_mode"] == (None if mode == "base" else "frozen, cached")


def test_training_step_is_lace_with_label_smoothing_on_the_fused_logits(splits, raw_setup):
    classifier = build_rac_classifier(splits, RACSettings(k=K), setup=raw_setup, backbone="test_resnet").train()
    images, labels, indices = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=8)))
    loss = classifier.training_step(images, labels, indices, LACE, 0)
    fused = classifier(images, indices).fused
    direct = torch.nn.functional.cross_entropy(
        fused + torch.log(torch.tensor(TRAIN_COUNTS / TRAIN_COUNTS.sum(), dtype=torch.float32)), labels,
        label_smoothing=0.1)
    torch.testing.assert_close(loss, direct)


def test_the_common_loss_is_lace_with_tau_and_label_smoothing():
    fused = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 3, 0, 0, 1, 0])
    counts = torch.tensor([100.0, 30.0, 10.0, 3.0])
    direct = torch.nn.functional.cross_entropy(fused + torch.log(counts / counts.sum()), targets, label_smoothing=0.1)
    torch.testing.assert_close(RACSettings().loss(counts)(fused, targets), direct)
    direct_tau = torch.nn.functional.cross_entropy(fused + 2 * torch.log(counts / counts.sum()), targets)
    torch.testing.assert_close(RACSettings(tau=2.0, label_smoothing=0.0).loss(counts)(fused, targets), direct_tau)


def _one_step(classifier: RACClassifier, dataset) -> None:
    classifier.train()
    images, labels, indices = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)))
    loss = classifier.training_step(images, labels, indices, LACE, 0)
    loss.backward()


@pytest.mark.parametrize("precompute", [False, True])
def test_frozen_e_and_frozen_transformer_get_no_gradient(splits, cnn_setup, precompute):
    settings = RACSettings(text_encoder="clip_tiny", k=K, precompute=precompute)
    classifier = build_rac_classifier(splits, settings, setup=cnn_setup, backbone="test_resnet")
    assert bool(classifier.text_tables) == precompute  # frozen T + precomputed neighbours: cached
    encoder = classifier.model.retrieval.image_encoder
    text = classifier.model.retrieval.text_encoder
    bn_before = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}
    _one_step(classifier, splits.train)
    assert all(p.grad is None for p in encoder.parameters()) and not encoder.training, "E is frozen"
    for key, value in bn_before.items():
        torch.testing.assert_close(encoder.state_dict()[key], value, msg=f"E's batch-norm statistic {key} moved")
    assert all(p.grad is None for n, p in text.named_parameters() if not n.startswith("head.")), "T frozen"
    assert not text.clip.training
    base = classifier.model.base  # (timm zero-initialises each block's last BN scale: conv2 gets 0 at step 1)
    assert all(p.grad is not None for p in base.parameters()) and base.fc.weight.grad.abs().sum() > 0
    assert base.backbone.net.conv1.weight.grad.abs().sum() > 0
    assert text.head.weight.grad.abs().sum() > 0 and text.head.bias.grad.abs().sum() > 0
    assert classifier.transformer_parameters() == []
    assert len(classifier.configure_optimizers(CONFIG)) == 1


def test_fine_tuned_transformer_trains_with_its_own_optimizer(splits, cnn_setup):
    settings = RACSettings(text_encoder="clip_tiny", k=K, train_transformer=True)
    classifier = build_rac_classifier(splits, settings, setup=cnn_setup, backbone="test_resnet")
    assert not classifier.text_tables and classifier.neighbour_tables, "a training T is run on every batch"
    _one_step(classifier, splits.train)
    text = classifier.model.retrieval.text_encoder
    transformer = classifier.transformer_parameters()
    assert transformer and any(p.grad is not None and p.grad.abs().sum() > 0 for p in transformer)
    assert all(p.grad is None for p in classifier.model.retrieval.image_encoder.parameters())
    main, second = classifier.configure_optimizers(CONFIG)
    assert isinstance(second, torch.optim.AdamW) and second.param_groups[0]["lr"] == settings.transformer_lr
    assert {id(p) for p in second.param_groups[0]["params"]} == {id(p) for p in transformer}
    main_ids = {id(p) for p in main.param_groups[0]["params"]}
    assert id(text.head.weight) in main_ids and not main_ids & {id(p) for p in transformer}
    # a trained T is not cached, but its head is still centred, on the initial T's training-query embeddings
    retrieval = classifier.model.retrieval
    initial = torch.cat([text.embed(retrieval.retrieved_texts(classifier.neighbour_tables["train"][i:i + 16]))
                         for i in range(0, 45, 16)]).detach()
    torch.testing.assert_close(text.head.centre, initial.mean(0), atol=1e-6, rtol=1e-5)


def test_optimizer_choice_and_its_learning_rate(splits, raw_setup):
    adamw = RACSettings(k=K)
    assert adamw.train_config(CONFIG).lr == 3e-3 and adamw.train_config(CONFIG).weight_decay == 0.02
    sgd = RACSettings(k=K, optimizer="sgd")
    assert sgd.train_config(CONFIG) == CONFIG
    assert RACSettings(optimizer="sgd", lr=0.5).train_config(CONFIG).lr == 0.5
    for settings, kind in ((adamw, torch.optim.AdamW), (sgd, torch.optim.SGD)):
        classifier = build_rac_classifier(splits, settings, setup=raw_setup, backbone="test_resnet")
        (optimizer,) = classifier.configure_optimizers(settings.train_config(CONFIG))
        assert isinstance(optimizer, kind)
        trained = {id(p) for p in optimizer.param_groups[0]["params"]}
        assert trained == {id(p) for p in classifier.parameters() if p.requires_grad}
        assert id(classifier.model.retrieval.text_encoder.head.weight) in trained


def test_head_is_centred_on_the_training_queries(splits, raw_setup):
    classifier = build_rac_classifier(splits, RACSettings(k=K), setup=raw_setup, backbone="test_resnet")
    head = classifier.model.retrieval.text_encoder.head
    train_table = classifier.text_tables["train"]
    torch.testing.assert_close(head.centre, train_table.mean(0))
    x = classifier.text_tables["test"][:5]
    torch.testing.assert_close(head(x), (x - train_table.mean(0)) @ head.weight.T + head.bias)
    plain = build_rac_classifier(splits, RACSettings(k=K, centre_text=False), setup=raw_setup, backbone="test_resnet")
    assert type(plain.model.retrieval.text_encoder.head) is torch.nn.Linear
    torch.testing.assert_close(plain.model.retrieval.text_encoder.head.weight, head.weight)  # same seeded init
    # on-line retrieval centres on the same training queries (computed from the un-augmented images)
    live = build_rac_classifier(splits, RACSettings(k=K, precompute=False), setup=raw_setup, backbone="test_resnet")
    torch.testing.assert_close(live.model.retrieval.text_encoder.head.centre, head.centre)


# ================================================================================================ bad input
@pytest.mark.parametrize("options, message", [
    ({"k": 0}, "k must be an integer >= 1"),
    ({"k": 2.5}, "k must be an integer >= 1"),
    ({"drop_self": "last"}, "drop_self must be one of"),
    ({"text_encoder": "glove"}, "text_encoder must be one of"),
    ({"optimizer": "adam"}, "optimizer must be one of"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be a finite number in \[0.0, 1.0\)"),
    ({"tau": -1.0}, "tau must be a finite number >= 0.0"),
    ({"lr": 0.0}, "lr must be a finite number > 0.0"),
    ({"cache_text": True, "precompute": False}, "needs precompute=True"),
    ({"text_encoder": "minilm", "cache_text": True, "train_transformer": True}, "frozen T"),
])
def test_bad_settings_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        RACSettings(**options)


@pytest.mark.hostile
@pytest.mark.parametrize("name", ["tau", "lr", "weight_decay", "transformer_lr", "transformer_weight_decay"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_settings_are_refused(name, value):
    """``x < 0`` lets NaN through: every float setting must be finite."""
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        RACSettings(**{name: value})


def test_the_bag_of_words_ignores_train_transformer(splits, raw_setup):
    settings = RACSettings(k=K, train_transformer=True, cache_text=True)  # no transformer to train: cacheable
    assert not settings.fine_tunes_transformer and RACSettings(text_encoder="clip", train_transformer=True
                                                               ).fine_tunes_transformer
    classifier = build_rac_classifier(splits, settings, setup=raw_setup, backbone="test_resnet")
    assert classifier.text_encoder_mode == "frozen, cached" and classifier.transformer_parameters() == []


@pytest.mark.parametrize("mode, setup, message", [
    ("ensemble", None, r"mode must be one of \['base', 'rac', 'retrieval'\]"),
    ("retrieval", None, "needs a RetrievalSetup"),
])
def test_bad_builds_are_errors(splits, mode, setup, message):
    with pytest.raises(ValueError, match=message):
        build_rac_classifier(splits, mode=mode, setup=setup)
