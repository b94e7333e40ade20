"""The library's training functions train through the train command's resumable loop when given a Resumable (the
notebooks' full profile): checkpoints land in the run's folder, and calling again continues from them."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ltcore.data import build_dataset
from ltcore.experiments import train_baseline
from ltcore.run import CHECKPOINT, METRICS, Resumable, train_config
from ltcore.runconfig import load_config

OVERRIDES = ["schedule.epochs=2", "schedule.milestones=[1]", "checkpoint_every=7", "loop.log_every=2",
             "data.options={ test_per_class = 20, n_max = 200 }"]


@pytest.fixture(scope="module")
def config():
    return load_config("quick-baseline", OVERRIDES)


@pytest.fixture(scope="module")
def splits(config):
    return build_dataset(config.data.name, **config.data.options)


def test_a_resumable_run_checkpoints_logs_and_returns_the_epochs_history(tmp_path, config, splits):
    run = train_baseline("CE", splits, train_config(config), backbone=config.model.backbone, progress=False,
                         resumable=Resumable(config, tmp_path / "ce"))
    saved = torch.load(tmp_path / "ce" / CHECKPOINT, weights_only=True)
    steps = 2 * int(np.ceil(len(splits.train) / config.schedule.batch_size))
    assert saved["step"] == steps and saved["epoch"] == 2
    assert [row["epoch"] for row in run["history"].epochs] == [1, 2]
    assert all(0.0 <= row["val_top1"] <= 1.0 and np.isfinite(row["loss"]) for row in run["history"].epochs)
    assert run["history"].seconds > 0
    logged = [json.loads(line) for line in (tmp_path / "ce" / METRICS).read_text().splitlines()]
    assert logged[-1]["step"] == steps and "val_top1" in logged[-1]


def test_calling_again_resumes_the_finished_run_and_trains_no_further_step(tmp_path, config, splits):
    first = train_baseline("CE", splits, train_config(config), backbone=config.model.backbone, progress=False,
                           resumable=Resumable(config, tmp_path / "ce"))
    again = train_baseline("CE", splits, train_config(config), backbone=config.model.backbone, progress=False,
                           resumable=Resumable(config, tmp_path / "ce"))
    for name, tensor in first["model"].state_dict().items():
        assert torch.equal(tensor, again["model"].state_dict()[name]), name
    np.testing.assert_array_equal(first["predictions"]["logits"], again["predictions"]["logits"])


def test_the_trainer_and_the_run_config_must_agree_on_the_seed(tmp_path, config, splits):
    trainer = train_config(config)
    with pytest.raises(ValueError, match="seed"):
        train_baseline("CE", splits, dataclasses.replace(trainer, seed=5), progress=False,
                       backbone=config.model.backbone, resumable=Resumable(config, tmp_path / "x"))


def test_the_train_command_trains_ldam_drw_with_its_cosine_classifier_and_deferred_weights(tmp_path):
    from ltcore.models import NormedLinear
    from ltcore.run import build_model, loss_options

    config = load_config("quick-baseline", [*OVERRIDES, "loss.name=ldam_drw"])
    assert isinstance(build_model(config, 10, 1).fc, NormedLinear)
    assert not isinstance(build_model(load_config("quick-baseline", OVERRIDES), 10, 1).fc, NormedLinear)
    assert loss_options(config, train_config(config)) == {"drw_epoch": 1}   # 80% of 2 epochs, as train_baseline
