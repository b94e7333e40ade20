"""Tests for ltcore.rac.claims: RAC's claim methods on synthetic pooled features of the design's shapes."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ltcore.claims import CLAIMS, METHODS
from ltcore.rac.claims import (
    RAC_CLAIM_METHODS,
    RACClaimsRecipe,
    build_retrieval_tables,
    choose_on_validation,
    run_rac_claims_methods,
    text_features,
)
from ltcore.data.longtail import longtail_counts, permuted_longtail_split
from ltcore.rac.text_encoders import build_text_encoder

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
C = len(CLASS_NAMES)
QUICK = RACClaimsRecipe(text_encoder="bow_random", epochs=4, lr=3e-3, batch_size=64)
DESIGN_KEYS = {"method", "seed", "permutation", "setting", "many", "medium", "few", "overall", "per_class",
               "val_overall", "curve"}


def _features(labels: np.ndarray, centres: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=(len(labels), centres.shape[1]))
    return (centres[labels] + 1.2 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def run_inputs() -> dict:
    """A long-tailed run (counts 150 .. 10 over 10 classes, permutation 1) with base and E features."""
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(C), 190)
    split = permuted_longtail_split(train_labels, longtail_counts(150, C, 15.0), 1, 20)
    test_labels = np.repeat(np.arange(C), 30)
    base_centres, retrieval_centres = rng.normal(size=(C, 24)), rng.normal(size=(C, 12))
    return dict(pool_base=_features(train_labels[split.pool], base_centres, 1),
                pool_retrieval=_features(train_labels[split.pool], retrieval_centres, 2),
                train_labels=train_labels, split=split, test_base=_features(test_labels, base_centres, 3),
                test_retrieval=_features(test_labels, retrieval_centres, 4), test_labels=test_labels,
                permutation=1, class_names=CLASS_NAMES)


@pytest.fixture(scope="module")
def results(run_inputs) -> dict:
    return {r["method"]: r for r in run_rac_claims_methods(**run_inputs, seed=0, recipe=QUICK)}


def test_the_methods_are_those_of_the_rac_and_control_claims():
    assert set(RAC_CLAIM_METHODS) <= set(METHODS)
    needed = {method for claim in CLAIMS.values() if claim.paper in ("RAC", "control")
              for method in (claim.method_a, claim.method_b)}
    assert needed == set(RAC_CLAIM_METHODS)


def test_every_method_returns_the_design_result(results, run_inputs):
    assert list(results) == list(RAC_CLAIM_METHODS)
    counts = run_inputs["split"].class_counts
    for method, result in results.items():
        assert set(result) == DESIGN_KEYS, method
        assert (result["seed"], result["permutation"], result["setting"]) == (0, 1, "frozen-features")
        assert len(result["per_class"]) == C and len(result["curve"]) == QUICK.epochs
        assert result["val_overall"] in result["curve"]
        assert result["overall"] == pytest.approx(np.mean(result["per_class"]))
        few = [acc for acc, n in zip(result["per_class"], counts) if n < 20]
        assert result["few"] == pytest.approx(np.mean(few))
        assert all(0 <= value <= 100 for value in result["per_class"] + result["curve"])
    assert results["rac"]["overall"] > 40  # well above the 10% of chance on these separable clusters


def test_the_negative_control_gives_the_same_results(results):
    """Ren et al.'s balanced softmax and LACE at tau = 1 are one loss: with the same seed, the same numbers."""
    lace, ren = results["base-lace"], results["balce-ren"]
    np.testing.assert_allclose(ren["per_class"], lace["per_class"], atol=0.5)
    np.testing.assert_allclose(ren["curve"], lace["curve"], atol=0.5)
    eq2 = results["balce-eq2"]
    assert eq2["per_class"] != lace["per_class"] or eq2["curve"] != lace["curve"]  # eq. 2 is another loss


def test_the_data_order_control_changes_only_the_order(run_inputs, results):
    """Same initial weights, another minibatch order: other numbers, close ones (the noise, not a method)."""
    lace, reordered = results["base-lace"], results["base-lace-reordered"]
    assert reordered["curve"] != lace["curve"]
    assert abs(reordered["overall"] - lace["overall"]) < 10
    first_epoch = dataclasses.replace(QUICK, epochs=1, lr=1e-9)  # barely trained: both are the initial weights
    a, b = run_rac_claims_methods(**run_inputs, seed=0, recipe=first_epoch, methods=("base-lace", "base-lace-reordered"))
    assert a["per_class"] == b["per_class"]


def test_rac_branches_are_scored_from_the_trained_rac_model(run_inputs, results):
    """The branches of one trained RAC model, not separately trained heads (Fig. 2)."""
    branch, = run_rac_claims_methods(**run_inputs, seed=0, recipe=QUICK, methods=("rac-base-branch",))
    assert branch == results["rac-base-branch"]
    assert results["rac-base-branch"]["per_class"] != results["base-lace"]["per_class"]
    assert results["rac-retrieval-branch"]["per_class"] != results["retrieval-only"]["per_class"]


def test_retrieval_only_takes_the_recipes_k(run_inputs, results):
    same = {key: value for key, value in results["retrieval-only"].items() if key != "method"}
    assert same == {key: value for key, value in results["retrieval-only-k30"].items() if key != "method"}
    k10, k30 = run_rac_claims_methods(**run_inputs, seed=0, recipe=dataclasses.replace(QUICK, k=10),
                                      methods=("retrieval-only", "retrieval-only-k30"))
    assert k30 == results["retrieval-only-k30"] and k10["per_class"] != k30["per_class"]


def test_a_seed_reproduces_its_run_and_another_seed_differs(run_inputs, results):
    methods = ("base-lace", "rac")
    again = run_rac_claims_methods(**run_inputs, seed=0, recipe=QUICK, methods=methods)
    assert again == [results[method] for method in methods]
    other = run_rac_claims_methods(**run_inputs, seed=1, recipe=QUICK, methods=methods)
    assert all(a["curve"] != b["curve"] for a, b in zip(other, again))


def test_shared_retrieval_tables_give_the_same_results(run_inputs, results):
    keys = ("pool_retrieval", "train_labels", "split", "test_retrieval", "class_names")
    tables = build_retrieval_tables(**{key: run_inputs[key] for key in keys})
    rac, = run_rac_claims_methods(**run_inputs, seed=0, recipe=QUICK, methods=("rac",), retrieval=tables)
    assert rac == results["rac"]


def test_training_queries_do_not_retrieve_themselves(run_inputs):
    """The paper drops the first hit of a training query (its own image); the rest are the nearest others."""
    split, train_labels = run_inputs["split"], run_inputs["train_labels"]
    keys = run_inputs["pool_retrieval"].copy()
    rows = np.searchsorted(split.pool, split.train)  # split.train is sorted, so its labels are sorted too
    half = len(rows) // 2  # no class holds half the images: position j and j + half are different classes
    directions = np.random.default_rng(5).normal(size=(half, keys.shape[1])).astype(np.float32)
    keys[rows[:half]] = directions
    keys[rows[half:2 * half]] = directions + 1e-3  # each image's nearest other image: its partner
    tables = build_retrieval_tables(keys, train_labels, split, run_inputs["test_retrieval"], CLASS_NAMES)
    labels = train_labels[split.train]
    assert (labels[:half] != labels[half:2 * half]).all()
    np.testing.assert_array_equal(tables.neighbour_labels(1)["train"][:2 * half, 0],
                                  np.concatenate([labels[half:2 * half], labels[:half]]))


def test_bag_reading_averages_the_texts_inside_the_context():
    """Each text encoded alone, averaged over the leading texts that fit T's context whole."""
    text = build_text_encoder("bow_random", C, max_words=3)
    labels = np.array([[1, 9, 2],  # Trouser (1 word) + Ankle boot (2) = 3 words: the third text is cut
                       [9, 9, 9]])  # Ankle boot alone fills 2 of 3 words: only the first text counts
    got = text_features(labels, text, CLASS_NAMES, "bag")
    vectors = {c: text.embed([[CLASS_NAMES[c]]])[0] for c in (1, 9)}
    torch.testing.assert_close(got[0], (vectors[1] + vectors[9]) / 2)
    torch.testing.assert_close(got[1], vectors[9])


def test_bag_and_joined_readings_agree_for_one_word_names():
    """The bag of words of the joined string is the mean of the texts' word vectors: with one word per text
    (and no cut), reading the texts as a bag changes nothing."""
    text = build_text_encoder("bow_random", C)
    labels = np.array([[1, 3, 3, 4], [5, 6, 1, 1]])  # Trouser, Dress, Coat, Sandal, Shirt: one word each
    joined = text_features(labels, text, CLASS_NAMES, "joined")
    torch.testing.assert_close(text_features(labels, text, CLASS_NAMES, "bag"), joined)
    torch.testing.assert_close(joined[0], text.embed([[CLASS_NAMES[c] for c in labels[0]]])[0])
    one = np.array([[0], [9]])  # k = 1: one text, read alone either way ("T-shirt/top" is three words)
    bag_of_one, joined_one = (text_features(one, text, CLASS_NAMES, reading) for reading in ("bag", "joined"))
    torch.testing.assert_close(bag_of_one, joined_one)


@pytest.mark.slow
def test_minilm_bag_is_cut_where_the_joined_string_is():
    """MiniLM's context holds 75 word pieces between [CLS] and [SEP]. Twelve "T-shirt/top" (5 pieces each) and
    their commas take 71; two more ", Coat" take it to 75; a third would not fit."""
    text = build_text_encoder("minilm", C, train_transformer=False)
    labels = np.array([[0] * 12 + [4] * 18])
    vectors = {c: text.embed([[CLASS_NAMES[c]]])[0] for c in (0, 4)}
    torch.testing.assert_close(text_features(labels, text, CLASS_NAMES, "bag")[0],
                               (12 * vectors[0] + 2 * vectors[4]) / 14)
    one = np.array([[4], [0]])
    bag_of_one, joined_one = (text_features(one, text, CLASS_NAMES, reading) for reading in ("bag", "joined"))
    torch.testing.assert_close(bag_of_one, joined_one)


def test_choose_on_validation_picks_from_the_candidates(run_inputs):
    choice = choose_on_validation([{**run_inputs, "seed": 0}], {"lr": [1e-4, 3e-3]}, methods=("base-lace",),
                                  recipe=QUICK)
    scores = choice["scores"]
    assert [row["lr"] for row in scores] == [1e-4, 3e-3]
    assert scores[1]["score"] > scores[0]["score"]  # a 30x larger lr learns more in 4 epochs
    assert choice["recipe"].lr == 3e-3 and choice["recipe"].epochs <= QUICK.epochs
    assert scores[1]["reached"][choice["recipe"].epochs - 1] >= scores[1]["score"] - 0.2
    assert scores[1]["reached"][-1] == pytest.approx(scores[1]["score"])


def test_the_kept_weights_are_those_of_the_best_validation_epoch(results):
    for result in results.values():
        if result["method"] not in ("rac-base-branch", "rac-retrieval-branch"):
            assert result["val_overall"] == max(result["curve"])
    kept = results["rac"]["curve"].index(results["rac"]["val_overall"])
    for branch in ("rac-base-branch", "rac-retrieval-branch"):
        assert results[branch]["val_overall"] == results[branch]["curve"][kept]


def _with(inputs: dict, **changes) -> dict:
    return {**inputs, **changes}


@pytest.mark.parametrize("change, says", [
    (lambda i: _with(i, permutation=2), "drawn for permutation 1, not 2"),
    (lambda i: _with(i, pool_base=i["pool_base"][:-1]), "pool features hold .* rows but the split's pool has"),
    (lambda i: _with(i, test_labels=i["test_labels"][:-1]), "test_base holds 300 rows but test_labels 299"),
    (lambda i: _with(i, split=i["split"]._replace(train=np.append(i["split"].train, 10**6))),
     "split.train holds training index 1000000, which is not in split.pool"),
    (lambda i: _with(i, split=i["split"]._replace(val=i["split"].val[:0])), "no validation images"),
    (lambda i: _with(i, split=i["split"]._replace(class_counts=i["split"].class_counts + 1)),
     "class_counts does not count"),
    (lambda i: _with(i, methods=("rac", "iem")), r"method must be one of .*got 'iem'"),
    (lambda i: _with(i, pool_base=i["pool_base"][:, :, None]), r"pool_base must be pooled features \[N, D\]"),
])
def test_inputs_that_do_not_fit_are_refused(run_inputs, change, says):
    with pytest.raises(ValueError, match=says):
        run_rac_claims_methods(**change(run_inputs), seed=0, recipe=QUICK)


def test_retrieval_tables_of_another_permutation_are_refused(run_inputs):
    other = permuted_longtail_split(run_inputs["train_labels"], longtail_counts(150, C, 15.0), 2, 20)
    tables = build_retrieval_tables(run_inputs["pool_retrieval"], run_inputs["train_labels"], other,
                                    run_inputs["test_retrieval"], CLASS_NAMES)
    with pytest.raises(ValueError, match="built for another split"):
        run_rac_claims_methods(**run_inputs, seed=0, recipe=QUICK, retrieval=tables)


@pytest.mark.parametrize("field, value, says", [
    ("k", 0, "k must be an integer >= 1"),
    ("text_encoder", "glove", "text_encoder must be one of"),
    ("text_reading", "sorted", "text_reading must be one of"),
    ("epochs", 0, "epochs must be an integer >= 1"),
    ("batch_size", 0, "batch_size must be an integer >= 1"),
    ("label_smoothing", 1.0, "label_smoothing must be a finite number in"),
    ("hidden", -1, "hidden must be an integer >= 0"),
])
def test_recipe_settings_are_checked(field, value, says):
    with pytest.raises(ValueError, match=says):
        RACClaimsRecipe(**{field: value})


@pytest.mark.hostile
@pytest.mark.parametrize("field", ["lr", "weight_decay", "tau", "label_smoothing"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_recipe_floats_must_be_finite(field, bad):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        RACClaimsRecipe(**{field: bad})


@pytest.mark.hostile
@pytest.mark.parametrize("name", ["pool_base", "pool_retrieval", "test_base", "test_retrieval"])
def test_non_finite_features_are_refused(run_inputs, name):
    features = run_inputs[name].copy()
    features[3, 1] = np.nan
    with pytest.raises(ValueError, match=f"{name} holds NaN or inf"):
        run_rac_claims_methods(**_with(run_inputs, **{name: features}), seed=0, recipe=QUICK)
