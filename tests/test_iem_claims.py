"""Tests of ltcore.iem.claims: the six methods of the IEM claims (Zhu & Yang, CVPR 2020, Tables 4a and 5, and our
uniform-attention control) trained on one paired run, on synthetic feature maps and images of the design's shapes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ltcore.claims import METHODS
from ltcore.iem.claims import (IEM_CLAIM_METHODS, MEMORY_VARIANTS, RECIPES, FeatureMapDataset, IEMClaimsRecipe,
                               build_claims_splits, compare_memory_variants, principal_channels, project_channels,
                               run_iem_claims_methods)
from ltcore.data.longtail import permuted_longtail_split
from ltcore.iem.model import IEM_VARIANTS
from ltcore.train import TrainConfig
from synthetic import class_images

CLASSES = 4
COUNTS_BY_RANK = np.array([101, 21, 8, 3])   # one many-shot class (> 100), one medium, two few (< 20)
PER_CLASS = 105                              # official training images per class: n_max 101 + 4 for validation
VAL_PER_CLASS = 3
CHANNELS, SIDE = 6, 3
CONFIG = TrainConfig(epochs=2, batch_size=8, lr=0.05, progress=False, device="cpu")
FROZEN = IEMClaimsRecipe(CONFIG, "test_frozen", dict(warmup_epochs=1))
E2E = IEMClaimsRecipe(dataclasses.replace(CONFIG, epochs=1), "test", dict(warmup_epochs=0), augment=True)
RESULT_KEYS = {"method", "seed", "permutation", "setting", "many", "medium", "few", "overall", "per_class",
               "val_overall", "curve", "classifier_overall", "memory_overall"}


def synthetic_maps(labels: np.ndarray, seed: int) -> np.ndarray:
    """float16 [N, C, 3, 3] maps: class c lights up channel c, most at its own cell, plus noise."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0.0, 0.5, size=(len(labels), CHANNELS, SIDE, SIDE))
    for i, label in enumerate(labels):
        maps[i, label] += 2.0
        maps[i, label, label % SIDE, label // SIDE] += 2.0
    return maps.astype(np.float16)


@pytest.fixture(scope="module")
def data() -> dict:
    train_labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    images, image_labels = class_images([PER_CLASS] * CLASSES, seed=0)
    assert np.array_equal(image_labels, train_labels)
    test_labels = np.repeat(np.arange(CLASSES), 5)
    test_images, _ = class_images([5] * CLASSES, seed=1)
    split = permuted_longtail_split(train_labels, COUNTS_BY_RANK, 1, VAL_PER_CLASS)
    return dict(train_labels=train_labels, split=split, maps=synthetic_maps(train_labels, 0), images=images,
                test_labels=test_labels, test_maps=synthetic_maps(test_labels, 1), test_images=test_images)


def frozen_run(data, seed=0, methods=IEM_CLAIM_METHODS, **kwargs) -> list[dict]:
    split = data["split"]
    return run_iem_claims_methods(data["maps"][split.pool], data["train_labels"], split, data["test_maps"],
                                  data["test_labels"], seed=seed, permutation=split.permutation,
                                  setting="frozen-features", methods=methods, **{"recipe": FROZEN, **kwargs})


@pytest.fixture(scope="module")
def frozen_results(data) -> list[dict]:
    return frozen_run(data)


# --------------------------------------------------------------------------- the results
def test_the_methods_are_the_claims_methods():
    assert set(IEM_CLAIM_METHODS) <= set(METHODS)
    assert IEM_CLAIM_METHODS == ("plain", "iem", "iem-wo-rsa", "iem-wo-local", "iem-wo-global",
                                 "iem-uniform-attention")
    assert set(RECIPES) == {"frozen-features", "e2e"}
    assert all(recipe.variant in IEM_VARIANTS for recipe in RECIPES.values())
    frozen, e2e = RECIPES["frozen-features"], RECIPES["e2e"]
    assert frozen.backbone == "precomputed" and not frozen.augment and frozen.map_channels == 64
    assert e2e.backbone == "resnet10_micro" and e2e.augment and e2e.map_channels is None
    assert not frozen.final_rewrite and not e2e.final_rewrite   # the paper's memory for the claims


def test_principal_channels_are_those_of_an_independent_svd():
    rng = np.random.default_rng(0)
    spread = np.array([5.0, 3.0, 1.0, 0.5, 0.1])[None, :, None, None]              # distinct variances
    maps = (rng.normal(size=(20, 5, 2, 3)) * spread).astype(np.float16)
    mean, components = principal_channels(maps, 2)
    vectors = maps.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, 5)          # every position's channels
    _, _, right = np.linalg.svd(vectors - vectors.mean(0), full_matrices=False)       # rows: directions, largest first
    np.testing.assert_allclose(mean.numpy(), vectors.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.abs(components.numpy().T @ right[:2].T), np.eye(2), atol=1e-4)  # up to sign
    projected = project_channels(maps, mean, components)                             # [N, 2, 2, 3]
    expected = np.einsum("nchw,ck->nkhw", maps.astype(np.float32) - mean.numpy()[None, :, None, None],
                         components.numpy())
    assert projected.shape == (20, 2, 2, 3)
    np.testing.assert_allclose(projected.numpy(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="map_channels"):
        principal_channels(maps, 6)


def test_a_run_on_reduced_maps_trains_on_their_principal_channels(data):
    reduced = dataclasses.replace(FROZEN, map_channels=3)
    results = frozen_run(data, methods=("plain",), recipe=reduced)
    assert results[0]["method"] == "plain" and len(results[0]["curve"]) == FROZEN.config.epochs
    split = data["split"]
    with pytest.raises(ValueError, match="frozen-features"):
        run_iem_claims_methods(data["images"][split.pool], data["train_labels"], split, data["test_images"],
                               data["test_labels"], seed=0, permutation=1, setting="e2e", methods=("plain",),
                               recipe=dataclasses.replace(E2E, map_channels=3))


def check_results(results: list[dict], setting: str, seed: int, permutation: int, epochs: int) -> None:
    assert [result["method"] for result in results] == list(IEM_CLAIM_METHODS)
    for result in results:
        assert set(result) == RESULT_KEYS
        assert (result["seed"], result["permutation"], result["setting"]) == (seed, permutation, setting)
        assert len(result["per_class"]) == CLASSES and len(result["curve"]) == epochs
        numbers = [result[key] for key in ("many", "medium", "few", "overall", "val_overall")]
        assert all(0.0 <= value <= 100.0 for value in numbers + result["per_class"] + result["curve"])
        assert result["overall"] == pytest.approx(np.mean(result["per_class"]))
        branches = (result["classifier_overall"], result["memory_overall"])
        if result["method"] == "plain":
            assert branches == (None, None)
        else:
            assert all(0.0 <= value <= 100.0 for value in branches), result["method"]


def test_frozen_features_give_one_result_per_method_in_points(frozen_results, data):
    check_results(frozen_results, "frozen-features", 0, 1, FROZEN.config.epochs)
    groups = {"many": data["split"].class_counts > 100, "few": data["split"].class_counts < 20}
    for result in frozen_results:   # shot groups from the class counts of the run's permutation
        for group, chosen in groups.items():
            assert result[group] == pytest.approx(np.mean(np.array(result["per_class"])[chosen]))
    assert max(result["overall"] for result in frozen_results) > 50.0   # the maps separate the classes


def test_e2e_trains_on_the_raw_images(data):
    split = data["split"]
    results = run_iem_claims_methods(data["images"][split.pool], data["train_labels"], split, data["test_images"],
                                     data["test_labels"], seed=3, permutation=1, setting="e2e", recipe=E2E)
    check_results(results, "e2e", 3, 1, E2E.config.epochs)


def test_a_run_is_repeatable_and_the_seed_matters(frozen_results, data):
    assert frozen_run(data, methods=("plain", "iem")) == frozen_results[:2]
    other_seed = frozen_run(data, seed=1, methods=("plain", "iem"))
    assert [result["per_class"] for result in other_seed] != [result["per_class"] for result in frozen_results[:2]]


def test_each_method_trains_alone_as_in_the_full_run(frozen_results, data):
    """A method's result does not depend on which methods ran before it in the same run."""
    alone = frozen_run(data, methods=("iem-uniform-attention",))
    assert alone == frozen_results[-1:]


def test_memory_variants_are_scored_on_validation(data):
    split = data["split"]
    scores = compare_memory_variants(data["maps"][split.pool], data["train_labels"], split, data["test_maps"],
                                     data["test_labels"], seeds=(0,), recipe=FROZEN)
    assert list(scores) == list(MEMORY_VARIANTS) and all(len(values) == 1 for values in scores.values())
    assert scores["paper"][0] == frozen_run(data, methods=("iem",))[0]["val_overall"]
    assert all(0.0 <= value <= 100.0 for values in scores.values() for value in values)


# --------------------------------------------------------------------------- the run's data
def test_the_splits_take_the_runs_images_from_the_pool(data):
    split = data["split"]
    splits = build_claims_splits(data["maps"][split.pool], data["train_labels"], split, data["test_maps"],
                                 data["test_labels"], "frozen-features")
    assert len(splits.train) == COUNTS_BY_RANK.sum() and len(splits.val) == CLASSES * VAL_PER_CLASS
    assert np.array_equal(splits.class_counts, split.class_counts)
    for subset, indices in ((splits.train, split.train), (splits.val, split.val)):
        maps, labels = zip(*[(subset[i][0], subset[i][1]) for i in range(len(subset))])
        assert torch.equal(torch.stack(maps), torch.as_tensor(data["maps"][indices]))
        assert list(labels) == data["train_labels"][indices].tolist()
    assert len(splits.test) == len(data["test_labels"])   # the full test split
    images = build_claims_splits(data["images"][split.pool], data["train_labels"], split, data["test_images"],
                                 data["test_labels"], "e2e")
    assert np.array_equal(images.train.images, data["images"][split.train])
    assert np.array_equal(images.val.images, data["images"][split.val])


@pytest.mark.parametrize("change, match", [
    (dict(permutation=2), "drawn for permutation 1"),
    (dict(setting="both"), "setting"),
    (dict(methods=("plain", "rac")), "method"),
    (dict(seed=-1), "seed"),
    (dict(memory_variant="value two"), "memory_variant"),
    (dict(pool_inputs="short"), "split.pool"),
    (dict(test_inputs="short"), "test_labels"),
    (dict(split="outside"), "not in split.pool"),
])
def test_bad_runs_are_clear_errors(data, change, match):
    split = data["split"]
    arguments = dict(pool_inputs=data["maps"][split.pool], train_labels=data["train_labels"], split=split,
                     test_inputs=data["test_maps"], test_labels=data["test_labels"], seed=0,
                     permutation=split.permutation, setting="frozen-features", recipe=FROZEN)
    if change.get("pool_inputs") == "short":
        change = dict(pool_inputs=arguments["pool_inputs"][:-1])
    if change.get("test_inputs") == "short":
        change = dict(test_inputs=arguments["test_inputs"][:-1])
    if change.get("split") == "outside":   # a training index that the pool does not hold
        change = dict(split=split._replace(train=np.append(split.train, np.setdiff1d(
            np.arange(len(data["train_labels"])), split.pool)[:1])))
    with pytest.raises(ValueError, match=match):
        run_iem_claims_methods(**{**arguments, **change})


def test_cached_maps_are_neither_augmented_nor_transformed(data):
    split = data["split"]
    with pytest.raises(ValueError, match="augment"):
        build_claims_splits(data["maps"][split.pool], data["train_labels"], split, data["test_maps"],
                            data["test_labels"], "frozen-features", augment=True)
    dataset = FeatureMapDataset(data["maps"][:4], data["train_labels"][:4])
    assert dataset.with_transform(None) is dataset
    with pytest.raises(ValueError, match="no transform"):
        dataset.with_transform(lambda x: x)
    with pytest.raises(ValueError, match="one label each"):
        FeatureMapDataset(data["maps"][:4], data["train_labels"][:3])
