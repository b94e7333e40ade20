"""IEM's training recipe: train IEM or one of its ablations, predict, and score every branch and the open set.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed Visual
Recognition", CVPR 2020. Section 4.2 (SGD on the network, the memories' own Adam), Section 3.3
(inference: the classifier's and the memories' scores averaged), Section 4.4 / Table 5 (the ablations
"w/o RSA", "w/o local memory", "w/o global memory"), Table 4 (closed set: many / medium / few /
overall; open set, the OLTR protocol: the test split plus out-of-distribution images, F-measure and
shot accuracies with rejections counted as wrong). The model is :class:`ltcore.iem.model.IEMClassifier`;
this module wires it into the shared trainer :func:`ltcore.train.fit`, as
:func:`ltcore.experiments.train_baseline` does for the plain model and :func:`ltcore.rac.train.train_rac`
for RAC, so that notebooks stay thin.

The recipe (:func:`train_iem`)
------------------------------
1. Seed (:func:`ltcore.config.seed_everything` with ``config.seed``), then
   :func:`ltcore.iem.model.build_iem`: with the same seed the backbone starts from the same weights as
   the plain model of :func:`ltcore.experiments.train_baseline`.
2. :func:`ltcore.train.fit` under cross-entropy (eq. 16 adds the memory terms after warm-up); with
   ``validate=True`` a validation pass after every epoch (the learning curve, ``val_top1`` in the history).
   With ``final_rewrite=True`` (our variant, not the paper) the memories are then emptied and written once
   with the final network (:func:`rewrite_memories`).
3. :func:`ltcore.train.predict` on the test split: the final score ``logits`` and the branches
   ``classifier``, ``memory``, ``global_memory`` / ``local_memory`` (those present); ``seconds`` is
   training plus this prediction, as in ``train_baseline``.
4. With an open set, the prediction on it and :func:`open_set_result_row`: the closed-set shot accuracies
   with Table 4's open-set columns.

Taught in notebook 06, *Training the plain model, IEM and the ablations*.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ltcore.checks import check_float
from ltcore.config import seed_everything
from ltcore.data.datasets import LTSplits, evaluation_view
from ltcore.experiments import evaluate
from ltcore.iem.model import ABLATIONS, IEMClassifier, build_iem
from ltcore.losses import build_loss
from ltcore.metrics import known_class_shot_accuracy, open_set_f_measure, open_set_predictions
from ltcore.results import shot_row
from ltcore.run import fit_or_resume
from ltcore.train import TrainConfig, predict

__all__ = ["BRANCHES", "open_set_metrics", "open_set_result_row", "rewrite_memories", "train_iem"]

# The scores IEMClassifier.forward returns, final score first (Section 3.3, inference).
BRANCHES = ("logits", "classifier", "memory", "global_memory", "local_memory")


def open_set_metrics(known_scores: np.ndarray, known_labels: np.ndarray, open_scores: np.ndarray,
                     class_counts: np.ndarray, threshold: float) -> dict[str, float]:
    """IEM Table 4's open-set columns (OLTR protocol) for one model's scores.

    known_scores [N, L] and known_labels [N] on the closed test set, open_scores [M, L] on the open
    set (label -1). Predictions are ``ltcore.metrics.open_set_predictions`` with ``normalized=False`` (IEM's
    averaged score does not sum to 1 over classes and may leave [0, 1] slightly: memory values are not
    clamped); returns ``f_measure``
    (``ltcore.metrics.open_set_f_measure``, OLTR's current rule) and ``open_many`` / ``open_medium``
    / ``open_few`` / ``open_overall`` (``known_class_shot_accuracy``: known-class samples only,
    rejections count as wrong), accuracies as fractions.

    Taught in notebook 06, *Closed set and open set*.
    """
    if known_scores.ndim != 2 or open_scores.ndim != 2 or known_scores.shape[1] != open_scores.shape[1]:
        raise ValueError(f"known_scores {known_scores.shape} and open_scores {open_scores.shape} must be [N, L] "
                         "with the same number of classes")
    predictions = open_set_predictions(np.concatenate([known_scores, open_scores]), threshold,
                                       normalized=False)                                       # [N + M]
    labels = np.concatenate([np.asarray(known_labels), np.full(len(open_scores), -1)])        # [N + M]
    shots = known_class_shot_accuracy(predictions, labels, class_counts)
    return {"f_measure": open_set_f_measure(predictions, labels),
            **{f"open_{key}": value for key, value in shots.as_row().items() if key != "top1"}}


def open_set_result_row(splits: LTSplits, method: str, predictions: dict, open_predictions: dict, seconds: float,
                        threshold: float, key: str = "logits", **extra) -> dict:
    """A results row of Table 4: closed-set many / medium / few / overall (percent) of branch ``key`` of
    ``predictions`` (:func:`ltcore.train.predict` on ``splits.test``), then ``f_measure`` (rounded to 4
    places) and ``open_many`` ... ``open_overall`` (percent, 2 places) of :func:`open_set_metrics` with the
    open-set scores ``open_predictions[key]``, then ``extra``. Scores are thresholded as they are: pass
    probabilities (a plain model's logits through a softmax).

    Taught in notebook 06, *Closed set and open set*.
    """
    shots = evaluate(predictions, splits.class_counts, key=key)
    open_metrics = open_set_metrics(predictions[key], predictions["labels"], open_predictions[key],
                                    splits.class_counts, threshold)
    percent = {name: round(100 * value, 2) for name, value in open_metrics.items() if name.startswith("open_")}
    return shot_row(splits.name, method, shots, seconds, f_measure=round(open_metrics["f_measure"], 4), **percent,
                    **extra)


@torch.no_grad()
def rewrite_memories(model: IEMClassifier, dataset: Dataset, batch_size: int = 512) -> None:
    """Our variant, not the paper: empty the memories of a trained ``model`` and write every item of ``dataset``
    (the training split, un-augmented) once, with the final network's keys and values (eq. 3-4).

    During training each bank collects keys of every epoch's network, including keys an early network computed
    and a later one would not; after this, a bank holds what the final network sees. The model is left in eval
    mode (batch-norm statistics as at inference).
    """
    model.eval()
    model.reset_memories()
    device = next(model.parameters()).device
    for images, labels, _ in DataLoader(dataset, batch_size=batch_size):
        images, labels = images.to(device), labels.to(device)
        for memory, keys, values, pair_labels in model.memory_pairs(model.encode(images), labels):
            memory.write(keys, values, pair_labels)


def train_iem(splits: LTSplits, config: TrainConfig, ablation: Optional[str] = None, *, variant: str = "tiny",
              open_set: Optional[Dataset] = None, open_threshold: float = 0.5, method: Optional[str] = None,
              progress: bool = True, validate: bool = False, final_rewrite: bool = False, resumable=None,
              **iem_settings) -> dict:
    """Train IEM (``ablation=None``) or one of Table 5's ablations ("no_rsa", "no_local", "no_global") on
    ``splits`` and score it (module docstring: the recipe).

    ``variant`` and ``iem_settings`` (``backbone``, ``warmup_epochs``, ``regions_per_image``, ``rsa_kwargs``,
    ``memory_kwargs``, ...) go to :func:`ltcore.iem.model.build_iem`; ``config`` gives the seed, epochs, batch
    size and SGD schedule. ``open_set`` (images labelled -1) defaults to ``splits.open_set``; without either,
    the row has no open-set columns. ``method`` names the row (default: Table 5's name, "IEM", "w/o RSA", ...).
    ``validate``: score ``splits.val`` after every epoch (``val_top1`` in the history). ``final_rewrite``: our
    variant, :func:`rewrite_memories` on the un-augmented training split after training (counted in ``seconds``).
    ``resumable`` (a :class:`ltcore.run.Resumable`): train with the train command's checkpointed, resumable loop
    (:func:`ltcore.run.fit_resumable`) instead of :func:`ltcore.train.fit`, as the
    notebooks' full profile does.

    Returns a dict: ``row`` (results row, :func:`open_set_result_row` with ``epochs``, or a closed-set
    :func:`ltcore.results.shot_row`), ``shots`` (branch -> :class:`~ltcore.metrics.ShotAccuracy` with
    ``per_class``, for every branch of :data:`BRANCHES` the model has), ``predictions`` (test split),
    ``open_predictions`` (None without an open set), ``history``, ``model``, ``seconds`` (training plus test
    prediction, unrounded).
    """
    open_threshold = check_float("open_threshold", open_threshold, 0.0, 1.0)  # before any training time is spent
    open_set = splits.open_set if open_set is None else open_set
    in_chans = splits.train[0][0].shape[0]  # before seeding: reading an item runs the training augmentation
    seed_everything(config.seed)  # the initial weights must not depend on what ran before in the process
    model = build_iem(variant, splits.num_classes, ablation=ablation, in_chans=in_chans, **iem_settings)
    started = time.perf_counter()
    history = fit_or_resume(model, splits, build_loss("ce", splits.class_counts), config,
                            splits.val if validate else None, resumable)
    if final_rewrite:
        rewrite_memories(model, evaluation_view(splits.train, splits.test), config.eval_batch_size)
    predictions = predict(model, splits.test, config.eval_batch_size, progress=progress)
    seconds = time.perf_counter() - started
    open_predictions = None if open_set is None else predict(model, open_set, config.eval_batch_size,
                                                             progress=progress)
    method = method or ABLATIONS[ablation][0]
    if open_predictions is None:
        row = shot_row(splits.name, method, evaluate(predictions, splits.class_counts), seconds,
                       epochs=config.epochs)
    else:
        row = open_set_result_row(splits, method, predictions, open_predictions, seconds, open_threshold,
                                  epochs=config.epochs)
    shots = {branch: evaluate(predictions, splits.class_counts, key=branch) for branch in BRANCHES
             if branch in predictions}
    return {"row": row, "shots": shots, "predictions": predictions, "open_predictions": open_predictions,
            "history": history, "model": model, "seconds": seconds}
