"""Tests of ltcore.iem.train: IEM's recipe (Zhu & Yang, CVPR 2020, Section 4.2-4.4, Tables 4-5) on tiny synthetic
splits with the "test" variant, and the open-set scoring of Table 4."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import ltcore.experiments
import ltcore.iem.train
from ltcore.config import seed_everything
from ltcore.data.datasets import ArrayDataset, LTSplits, RandomCropFlip, evaluation_view
from ltcore.experiments import evaluate, train_baseline
from ltcore.iem.model import ABLATIONS, build_iem
from ltcore.iem.train import BRANCHES, open_set_metrics, open_set_result_row, rewrite_memories, train_iem
from ltcore.losses import build_loss
from ltcore.metrics import open_set_predictions
from ltcore.train import TrainConfig, fit, predict
from synthetic import class_images

TRAIN_COUNTS = np.array([24, 12, 6, 3])
CONFIG = TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=0, progress=False, device="cpu")
SETTINGS = dict(warmup_epochs=1)  # epoch 0 writes only, epoch 1 reads (eq. 16)


def tiny_splits(with_open_set: bool = False, with_val: bool = False) -> LTSplits:
    """Augmented training split (RandomCropFlip on the global RNG, as the real builders), balanced test split."""
    open_images, _ = class_images([3] * 4, seed=3)
    return LTSplits(name="tiny", train=ArrayDataset(*class_images(TRAIN_COUNTS, seed=0), RandomCropFlip()),
                    val=ArrayDataset(*class_images([2] * 4, seed=4)) if with_val else None,
                    test=ArrayDataset(*class_images([3] * 4, seed=2)), class_counts=TRAIN_COUNTS,
                    open_set=ArrayDataset(255 - open_images, np.full(len(open_images), -1)) if with_open_set else None)


def same_row(first: dict, second: dict, ignore: tuple = ()) -> bool:
    """Rows equal key by key and in order (nan equals nan: a shot group without classes)."""
    keys = [key for key in first if key not in ignore]
    return keys == [key for key in second if key not in ignore] and all(
        first[key] == second[key] or (first[key] != first[key] and second[key] != second[key]) for key in keys)


@pytest.fixture(scope="module")
def splits() -> LTSplits:
    return tiny_splits(with_open_set=True)


@pytest.fixture(scope="module")
def iem_run(splits) -> dict:
    return train_iem(splits, CONFIG, variant="test", progress=False, **SETTINGS)


# --------------------------------------------------------------------------- the recipe
def test_the_recipe_returns_the_row_every_branch_and_the_open_set(iem_run, splits):
    assert set(iem_run) == {"row", "shots", "predictions", "open_predictions", "history", "model", "seconds"}
    assert len(iem_run["history"].epochs) == CONFIG.epochs
    assert set(iem_run["shots"]) == set(BRANCHES)
    for branch, shots in iem_run["shots"].items():
        expected = evaluate(iem_run["predictions"], splits.class_counts, key=branch)
        assert same_row(shots.as_row(), expected.as_row()), branch
        assert np.array_equal(shots.per_class, expected.per_class, equal_nan=True), branch
    assert len(iem_run["predictions"]["logits"]) == len(splits.test)
    assert len(iem_run["open_predictions"]["logits"]) == len(splits.open_set)  # the splits' own open set
    row = iem_run["row"]
    assert row["method"] == "IEM" and row["dataset"] == "tiny" and row["epochs"] == CONFIG.epochs
    assert same_row(row, open_set_result_row(splits, "IEM", iem_run["predictions"], iem_run["open_predictions"],
                                             iem_run["seconds"], 0.5, epochs=CONFIG.epochs))
    assert list(row)[-6:] == ["f_measure", "open_many", "open_medium", "open_few", "open_overall", "epochs"]
    assert all(memory.num_slots > 0 for memory in iem_run["model"].memories.values())


def test_the_recipe_is_build_fit_predict_in_this_order(iem_run, splits):
    """The same operations in the same order as notebook 06's own loop: identical scores, bit for bit."""
    seed_everything(CONFIG.seed)
    model = build_iem("test", splits.num_classes, in_chans=1, **SETTINGS)
    fit(model, splits.train, build_loss("ce", splits.class_counts), CONFIG)
    test, open_ = predict(model, splits.test, progress=False), predict(model, splits.open_set, progress=False)
    for key in test:
        assert np.array_equal(test[key], iem_run["predictions"][key]), key
        assert np.array_equal(open_[key], iem_run["open_predictions"][key]), key


def test_validate_scores_the_validation_split_after_every_epoch():
    splits = tiny_splits(with_val=True)
    run = train_iem(splits, CONFIG, variant="test", progress=False, validate=True, **SETTINGS)
    curve = [epoch["val_top1"] for epoch in run["history"].epochs]
    assert len(curve) == CONFIG.epochs and all(0.0 <= value <= 1.0 for value in curve)
    last = predict(run["model"], splits.val, progress=False)
    assert curve[-1] == float((last["logits"].argmax(1) == last["labels"]).mean())
    quiet = train_iem(splits, CONFIG, variant="test", progress=False, **SETTINGS)  # the default: no validation
    assert all("val_top1" not in epoch for epoch in quiet["history"].epochs)
    assert np.array_equal(quiet["predictions"]["logits"], run["predictions"]["logits"])  # validating changes nothing


def test_rewrite_memories_holds_each_training_image_once_with_the_final_network():
    """Our variant: after the re-write a bank holds the final keys and confidences of its class's images."""
    splits = tiny_splits()
    run = train_iem(splits, CONFIG, variant="test", progress=False, memory_kwargs=dict(capacity=64), **SETTINGS)
    model, plain_view = run["model"], evaluation_view(splits.train, splits.test)  # 64 slots: no class evicts
    assert model.global_memory.num_slots > len(splits.train)   # during training the banks collect every epoch's keys
    rewrite_memories(model, plain_view, batch_size=16)
    images, labels = next(iter(torch.utils.data.DataLoader(plain_view, batch_size=len(plain_view))))[:2]
    with torch.no_grad():
        features = model.eval().encode(images)
    confidence = features.logits.softmax(1)[torch.arange(len(labels)), labels]
    k = features.region_keys.shape[1]
    for c in range(splits.num_classes):
        rows = (labels == c).nonzero().flatten()   # in dataset order, the order of the writes
        _, keys, values = model.global_memory.bank(c)
        torch.testing.assert_close(keys, features.global_keys[rows])
        torch.testing.assert_close(values, confidence[rows])
        _, local_keys, local_values = model.local_memory.bank(c)
        torch.testing.assert_close(local_keys, features.region_keys[rows].reshape(len(rows) * k, -1))
        torch.testing.assert_close(local_values, confidence[rows].repeat_interleave(k))


def test_final_rewrite_is_training_then_rewrite_memories():
    splits = tiny_splits()
    rewritten = train_iem(splits, CONFIG, variant="test", progress=False, final_rewrite=True, **SETTINGS)
    run = train_iem(splits, CONFIG, variant="test", progress=False, **SETTINGS)
    rewrite_memories(run["model"], evaluation_view(splits.train, splits.test), CONFIG.eval_batch_size)
    by_hand = predict(run["model"], splits.test, progress=False)
    for key in by_hand:
        assert np.array_equal(rewritten["predictions"][key], by_hand[key]), key


@pytest.mark.parametrize("ablation", [a for a in ABLATIONS if a is not None])
def test_each_ablation_is_named_after_table_5_and_scores_its_branches(ablation):
    run = train_iem(tiny_splits(), dataclasses.replace(CONFIG, epochs=1), ablation, variant="test", progress=False)
    assert run["row"]["method"] == ABLATIONS[ablation][0]
    absent = {"no_global": "global_memory", "no_local": "local_memory"}.get(ablation)
    assert set(run["shots"]) == set(BRANCHES) - {absent}
    assert run["open_predictions"] is None and "f_measure" not in run["row"]  # no open set: closed-set row


def test_same_seed_same_run_and_the_method_name_can_be_given(splits, iem_run):
    again = train_iem(splits, CONFIG, variant="test", method="IEM, again", progress=False, **SETTINGS)
    assert again["row"]["method"] == "IEM, again"
    assert same_row(again["row"], iem_run["row"], ignore=("method", "seconds"))
    assert np.array_equal(again["predictions"]["logits"], iem_run["predictions"]["logits"])


def test_iem_starts_from_the_plain_models_backbone(monkeypatch, splits):
    """With the same seed, train_iem and train_baseline hand the trainer the same initial backbone weights."""
    initial = {}

    class Stop(Exception):
        pass

    def record(name):
        def fake_fit(model, *args, **kwargs):
            initial[name] = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            raise Stop
        return fake_fit

    monkeypatch.setattr(ltcore.experiments, "fit_or_resume", record("plain"))
    monkeypatch.setattr(ltcore.iem.train, "fit_or_resume", record("iem"))
    with pytest.raises(Stop):
        train_baseline("CE", splits, CONFIG, backbone="test_resnet", progress=False)
    with pytest.raises(Stop):
        train_iem(splits, CONFIG, variant="test", progress=False)
    assert initial["plain"].keys() == initial["iem"].keys()
    assert all(torch.equal(initial["plain"][key], initial["iem"][key]) for key in initial["plain"])


@pytest.mark.hostile
@pytest.mark.parametrize("threshold", [math.nan, math.inf, 1.5, -0.1])
def test_a_bad_open_threshold_stops_before_training(monkeypatch, splits, threshold):
    monkeypatch.setattr(ltcore.iem.train, "fit_or_resume", lambda *args, **kwargs: pytest.fail("training started"))
    with pytest.raises(ValueError, match="open_threshold"):
        train_iem(splits, CONFIG, variant="test", open_threshold=threshold, progress=False)


# --------------------------------------------------------------------------- open-set scoring (Table 4)
def test_unnormalized_thresholding_matches_the_oltr_rule_on_probabilities():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [0.1, 0.1, 0.8]])
    assert open_set_predictions(probs, 0.4, normalized=False).tolist() == [0, -1, 2]
    assert (open_set_predictions(probs, 0.4, normalized=False).tolist()
            == open_set_predictions(probs.numpy(), 0.4).tolist())
    scores = np.array([[0.2, 0.6, 0.9], [0.1, 0.2, 0.3]])  # IEM scores need not sum to 1
    assert open_set_predictions(scores, 0.5, normalized=False).tolist() == [2, -1]
    with pytest.raises(ValueError, match="finite"):
        open_set_predictions(np.array([[np.nan, 1.0]]), 0.5, normalized=False)


KNOWN = np.array([[0.9, 0.05, 0.05],    # class 0, right
                  [0.6, 0.3, 0.1],      # class 1, wrong (0)
                  [0.2, 0.2, 0.35],     # class 2, rejected (max 0.35 < 0.4)
                  [0.1, 0.8, 0.1]])     # class 1, right
KNOWN_LABELS = np.array([0, 1, 2, 1])
OPEN = np.array([[0.3, 0.3, 0.3],       # rejected: true negative
                 [0.1, 0.1, 0.7]])      # accepted as class 2: false negative
COUNTS = np.array([200, 50, 5])


def test_open_set_metrics_count_by_hand():
    metrics = open_set_metrics(KNOWN, KNOWN_LABELS, OPEN, COUNTS, threshold=0.4)
    # OLTR rule: TP = 2, FP = 2 (one misclassified, one rejected known), FN = 1 -> F = 4 / (4 + 2 + 1)
    assert metrics["f_measure"] == pytest.approx(4 / 7)
    assert (metrics["open_many"], metrics["open_medium"], metrics["open_few"]) == (1.0, 0.5, 0.0)
    assert metrics["open_overall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same number of classes"):
        open_set_metrics(KNOWN, KNOWN_LABELS, OPEN[:, :2], COUNTS, threshold=0.4)


def test_open_set_result_row_rounds_like_the_results_tables():
    splits = LTSplits(name="toy", train=None, val=None, test=None, class_counts=COUNTS)
    predictions = {"logits": KNOWN, "labels": KNOWN_LABELS}
    row = open_set_result_row(splits, "toy model", predictions, {"logits": OPEN}, 12.345, 0.4, epochs=3)
    # closed set: argmax without rejection, so the class-2 image (0.35) counts as right
    assert row == {"dataset": "toy", "method": "toy model", "many": 100.0, "medium": 50.0, "few": 100.0,
                   "overall": 83.33, "seconds": 12.3, "f_measure": round(4 / 7, 4), "open_many": 100.0,
                   "open_medium": 50.0, "open_few": 0.0, "open_overall": 50.0, "epochs": 3}
