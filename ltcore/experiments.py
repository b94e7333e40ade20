"""Train-and-evaluate recipes that the notebooks call, so that notebooks stay thin.

``BASELINES`` names the baseline losses of notebook 01 (and the CE / BalCE / LACE
rows of RAC's Table 3); ``train_baseline`` trains one on a benchmark and returns its
results row, predictions and history; ``evaluate`` turns predictions into the
many / medium / few / overall row.

Taught in notebook 01, *Baselines*.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ltcore.config import seed_everything
from ltcore.data.datasets import LTSplits
from ltcore.losses import build_loss
from ltcore.metrics import shot_accuracy
from ltcore.models import PlainClassifier, build_backbone
from ltcore.results import shot_row
from ltcore.run import fit_or_resume
from ltcore.train import TrainConfig, predict


@dataclass(frozen=True)
class Baseline:
    loss: str
    description: str
    normed_classifier: bool = False  # LDAM uses a cosine classifier (Cao et al. 2019)


BASELINES = {
    "CE": Baseline("ce", "cross-entropy, the plain model"),
    "Focal": Baseline("focal", "focal loss, gamma = 2 (Lin et al. 2017)"),
    "LDAM-DRW": Baseline("ldam_drw", "LDAM margins + deferred class-balanced re-weighting (Cao et al. 2019)", True),
    "BalCE": Baseline("balanced_softmax", "balanced softmax CE(z + log n_y) (Ren et al. 2020), RAC's BalCE"),
    "LACE": Baseline("logit_adjusted", "logit-adjusted CE(z + tau log prior) (Menon et al. 2021), RAC's LACE"),
}


def evaluate(predictions: dict, class_counts: np.ndarray, key: str = "logits", **shot_kwargs):
    """Shot accuracy of one output branch of :func:`ltcore.train.predict`."""
    return shot_accuracy(predictions[key].argmax(1), predictions["labels"], class_counts, **shot_kwargs)


def loss_for(name: str, class_counts: np.ndarray, config: TrainConfig, **loss_kwargs):
    """The named baseline's loss; LDAM-DRW re-weights from 80% of the epochs on, as Cao et al. (160 of 200)."""
    spec = BASELINES[name]
    if spec.loss == "ldam_drw":
        loss_kwargs.setdefault("drw_epoch", int(0.8 * config.epochs))
    return build_loss(spec.loss, class_counts, **loss_kwargs)


def train_baseline(name: str, splits: LTSplits, config: TrainConfig, backbone: str = "resnet10_tiny",
                   progress: bool = True, resumable=None) -> dict:
    """Train the baseline ``name`` (a key of ``BASELINES``).

    ``resumable`` (a :class:`ltcore.run.Resumable`): train with the train command's checkpointed, resumable loop
    (:func:`ltcore.run.fit_resumable`) instead of :func:`ltcore.train.fit`, as the notebooks' full profile does.

    Returns a dict: ``row`` (results row), ``shots`` (:class:`~ltcore.metrics.ShotAccuracy`, with ``per_class``),
    ``predictions`` (:func:`~ltcore.train.predict` output on the test split), ``history`` and ``model``.
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    in_chans = splits.train[0][0].shape[0]
    seed_everything(config.seed)  # the initial weights must not depend on what ran before in the process
    model = PlainClassifier(build_backbone(backbone, in_chans), splits.num_classes, BASELINES[name].normed_classifier)
    started = time.perf_counter()
    loss_fn = loss_for(name, splits.class_counts, config)
    history = fit_or_resume(model, splits, loss_fn, config, splits.val, resumable)
    predictions = predict(model, splits.test, config.eval_batch_size, progress=progress)
    seconds = time.perf_counter() - started
    shots = evaluate(predictions, splits.class_counts)
    row = shot_row(splits.name, name, shots, seconds)
    return {"row": row, "shots": shots, "predictions": predictions, "history": history, "model": model}
