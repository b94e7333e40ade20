"""The trainer: learning happens, checkpoints are atomic, resumable and checked on load; a run stops before
anything non-finite is written, and a checkpoint resumes only the run that wrote it."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltcore.data import ArrayDataset
from ltcore.losses import build_loss
from ltcore.models import PlainClassifier, build_backbone
from ltcore.train import FREE_ON_RESUME, TrainConfig, fit, load_checkpoint, lr_at, predict


def toy_dataset(n_per_class=24, seed=0):
    """Two classes a small CNN separates easily: bright top half vs bright bottom half."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(2 * n_per_class, 28, 28)).astype(np.uint8)
    images[:n_per_class, :14] += 150
    images[n_per_class:, 14:] += 150
    labels = np.repeat([0, 1], n_per_class)
    return ArrayDataset(images, labels)


def tiny_model():
    torch.manual_seed(0)
    return PlainClassifier(build_backbone("test_resnet"), 2)


CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.05, progress=False, device="cpu")


def test_fit_learns_a_separable_toy_problem():
    data = toy_dataset()
    model = tiny_model()
    config = TrainConfig(epochs=5, batch_size=8, lr=0.05, progress=False, device="cpu")  # enough steps for BN stats
    history = fit(model, data, build_loss("ce", [24, 24]), config, val_set=data)
    assert len(history.epochs) == 5
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    preds = predict(model, data, progress=False)
    assert preds["logits"].shape == (48, 2) and preds["indices"].tolist() == list(range(48))
    assert (preds["logits"].argmax(1) == preds["labels"]).mean() > 0.9


def test_lr_schedule_warmup_and_steps():
    config = TrainConfig(lr=0.1, lr_milestones=(3, 5), warmup_epochs=2)
    assert [round(lr_at(e, config), 5) for e in range(7)] == [0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_lr_schedule_cosine_after_the_warm_up():
    import math

    config = TrainConfig(lr=0.1, epochs=6, warmup_epochs=2, lr_schedule="cosine")
    expected = [0.05, 0.1] + [0.1 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]   # 0.1, 0.085, 0.05, 0.015
    assert [lr_at(e, config) for e in range(6)] == pytest.approx(expected)
    with pytest.raises(ValueError, match="cosine schedule has no lr_milestones"):
        TrainConfig(lr_schedule="cosine", lr_milestones=(3,))
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="linear")


def test_same_seed_gives_identical_training():
    data = toy_dataset()
    a, b = tiny_model(), tiny_model()
    fit(a, data, build_loss("ce", [24, 24]), CONFIG)
    fit(b, data, build_loss("ce", [24, 24]), CONFIG)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    data = toy_dataset()
    path = tmp_path / "run.pt"
    full = tiny_model()
    fit(full, data, build_loss("ce", [24, 24]), CONFIG)
    first = tiny_model()
    fit(first, data, build_loss("ce", [24, 24]), TrainConfig(**{**CONFIG.__dict__, "epochs": 2}), checkpoint_path=path)
    resumed = tiny_model()
    history = fit(resumed, data, build_loss("ce", [24, 24]), CONFIG, checkpoint_path=path, resume=True)
    assert [row["epoch"] for row in history.epochs] == [1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))  # written then renamed into place
    for pa, pb in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-6)


def test_truncated_or_foreign_checkpoints_are_clear_errors(tmp_path):
    data = toy_dataset()
    path = tmp_path / "run.pt"
    fit(tiny_model(), data, build_loss("ce", [24, 24]), TrainConfig(**{**CONFIG.__dict__, "epochs": 1}),
        checkpoint_path=path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.pt is truncated"):
        load_checkpoint(cut, tiny_model())
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(ValueError, match="foreign.pt is not an ltcore checkpoint"):
        load_checkpoint(foreign, tiny_model())
    other = PlainClassifier(build_backbone("test_resnet"), 3)
    with pytest.raises(ValueError, match="run.pt does not fit this model"):
        load_checkpoint(path, other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", tiny_model())


def test_empty_datasets_are_clear_errors():
    data, empty = toy_dataset(), ArrayDataset(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="val_set is empty .pass val_set=None"):
        fit(tiny_model(), data, build_loss("ce", [24, 24]), CONFIG, val_set=empty)
    with pytest.raises(ValueError, match="train_set is empty"):
        fit(tiny_model(), empty, build_loss("ce", [24, 24]), CONFIG)
    with pytest.raises(ValueError, match="predict: the dataset is empty"):
        predict(tiny_model(), empty, progress=False)


def test_diverging_loss_is_reported():
    data = toy_dataset()
    with pytest.raises(FloatingPointError, match="lower the lr"):
        fit(tiny_model(), data, lambda logits, labels: logits.sum() * float("nan"), CONFIG)


def test_backbones_keep_a_7x7_map_for_28x28_inputs():
    for name in ("test_resnet", "resnet10_tiny"):
        assert build_backbone(name)(torch.rand(2, 1, 28, 28)).shape[-2:] == (7, 7)
    assert build_backbone("resnet10", 3)(torch.rand(1, 3, 224, 224)).shape == (1, 512, 7, 7)


# --------------------------------------------------------------------------- settings
def test_settings_are_normalised():
    config = TrainConfig(lr=1, lr_milestones=[2, np.int64(4)], momentum=0)
    assert config.lr == 1.0 and type(config.lr) is float and config.lr_milestones == (2, 4)
    assert type(config.momentum) is float


@pytest.mark.parametrize("setting, value, says", [
    ("epochs", 0, "epochs must be an integer >= 1, got 0"),
    ("epochs", 2.5, "epochs must be an integer >= 1, got 2.5"),
    ("batch_size", -1, "batch_size must be an integer >= 1"),
    ("eval_batch_size", 0, "eval_batch_size must be an integer >= 1"),
    ("lr", 0.0, "lr must be a finite number > 0.0, got 0.0"),
    ("momentum", -0.5, r"momentum must be a finite number in \[0.0, 1.0\), got -0.5"),
    ("weight_decay", -1e-4, "weight_decay must be a finite number >= 0.0"),
    ("lr_gamma", 0, "lr_gamma must be a finite number > 0.0"),
    ("warmup_epochs", -1, "warmup_epochs must be an integer >= 0"),
    ("seed", -1, "seed must be an integer in"),
    ("lr_milestones", 30, "lr_milestones must be a tuple of epochs, got 30"),
    ("lr_milestones", (30, "60"), r"lr_milestones\[1\] must be an integer >= 0, got '60'"),
    ("device", None, "device must be a string"),
    ("progress", 1, "progress must be True or False, got 1"),
])
def test_impossible_training_config_is_an_error_naming_the_setting(setting, value, says):
    with pytest.raises(ValueError, match=says):
        TrainConfig(**{setting: value})


@pytest.mark.hostile
@pytest.mark.parametrize("setting", ["lr", "momentum", "weight_decay", "lr_gamma"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_setting_must_be_finite(setting, value):
    with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
        TrainConfig(**{setting: value})


# --------------------------------------------------------------------------- nothing non-finite is written
def nan_gradient_on_the_last_batch_of_epoch_2(logits, labels, epoch):
    """A finite loss whose gradient is NaN (d sqrt|x| / dx at 0) on the last, smaller batch of epoch 2."""
    loss = F.cross_entropy(logits, labels)
    if epoch == 1 and len(labels) < 20:
        loss = loss + (logits - logits.detach()).abs().sqrt().sum()
    return loss


@pytest.mark.hostile
def test_a_nan_gradient_stops_training_before_it_reaches_the_weights_or_the_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    config = replace(CONFIG, batch_size=20)                        # 48 images: steps of 20, 20 and 8
    model = tiny_model()
    with pytest.raises(FloatingPointError, match=r"gradient of .* became non-finite at epoch 2, step 3 "
                                                 r"\(the loss was [\d.]+\); the weights were not updated"):
        fit(model, toy_dataset(), nan_gradient_on_the_last_batch_of_epoch_2, config, checkpoint_path=path)
    assert all(torch.isfinite(value).all() for value in model.state_dict().values() if value.is_floating_point())
    state = load_checkpoint(path, tiny_model())                    # epoch 1's checkpoint, intact
    assert state["epoch"] == 0 and len(state["history"]["epochs"]) == 1
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


class BreaksABuffer(PlainClassifier):
    """A model whose own hook leaves an infinite buffer behind, without any gradient noticing."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(build_backbone("test_resnet"), 2)
        self.register_buffer("running_scale", torch.ones(1))

    def after_optimizer_step(self):
        self.running_scale.fill_(math.inf)


@pytest.mark.hostile
def test_non_finite_weights_are_never_written_to_a_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError, match="running_scale holds non-finite values after epoch 1; training "
                                                 "stopped and nothing was written"):
        fit(BreaksABuffer(), toy_dataset(), build_loss("ce", [24, 24]), CONFIG, checkpoint_path=path)
    assert not path.exists()


def under_a_file(tmp_path):
    (tmp_path / "plain").write_text("")
    return tmp_path / "plain" / "run.pt"


def a_directory(tmp_path):
    (tmp_path / "folder").mkdir()
    return tmp_path / "folder"


@pytest.mark.hostile
@pytest.mark.parametrize("make_bad, says", [
    (under_a_file, "cannot write .*plain/run.pt"),
    (a_directory, "cannot write .*folder: it exists and is not a regular file \\(a directory\\)"),
])
def test_a_bad_checkpoint_path_is_found_before_training(tmp_path, make_bad, says):
    calls = []

    def counting_loss(logits, labels):
        calls.append(1)
        return F.cross_entropy(logits, labels)

    with pytest.raises(OSError, match=says):
        fit(tiny_model(), toy_dataset(), counting_loss, CONFIG, checkpoint_path=make_bad(tmp_path))
    assert not calls


def test_a_checkpoint_is_plain_data_that_loads_without_unpickling_objects(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), toy_dataset(), build_loss("ce", [24, 24]), replace(CONFIG, epochs=1), checkpoint_path=path)
    state = torch.load(path, weights_only=True)
    assert state["config"] == {**CONFIG.__dict__, "epochs": 1} and state["epoch"] == 0
    assert list(state["history"]) == ["epochs", "seconds"] and state["history"]["epochs"][0]["epoch"] == 1


# --------------------------------------------------------------------------- resume refuses a different run
@pytest.fixture
def two_epochs(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), toy_dataset(), build_loss("ce", [24, 24]), replace(CONFIG, epochs=2), checkpoint_path=path)
    return path


@pytest.mark.hostile
@pytest.mark.parametrize("changes, says", [
    ({"lr": 0.1}, r"\(lr 0.05 in the file, 0.1 now\)"),
    ({"batch_size": 8}, r"\(batch_size 16 in the file, 8 now\)"),
    ({"seed": 1}, r"\(seed 0 in the file, 1 now\)"),
    ({"lr": 0.1, "seed": 3, "lr_milestones": (1,)},
     r"\(lr 0.05 in the file, 0.1 now; lr_milestones \(\) in the file, \(1,\) now; seed 0 in the file, 3 now\)"),
])
def test_resuming_with_other_settings_is_an_error_naming_them(two_epochs, changes, says):
    before = two_epochs.read_bytes()
    model = tiny_model()
    with pytest.raises(ValueError, match=f"checkpoint {two_epochs} was written by a run with other settings {says}"):
        fit(model, toy_dataset(), build_loss("ce", [24, 24]), replace(CONFIG, **changes), checkpoint_path=two_epochs,
            resume=True)
    assert two_epochs.read_bytes() == before                       # the file is kept as it was
    for value, fresh in zip(model.state_dict().values(), tiny_model().state_dict().values()):
        assert torch.equal(value, fresh)                           # and nothing was loaded into the model


@pytest.mark.hostile
def test_resuming_with_fewer_epochs_than_done_is_an_error(two_epochs):
    with pytest.raises(ValueError, match="has 2 epochs done but config.epochs is 1; a resumed run can extend the "
                                         r"epochs, not cut them \(use epochs >= 2\)"):
        fit(tiny_model(), toy_dataset(), build_loss("ce", [24, 24]), replace(CONFIG, epochs=1),
            checkpoint_path=two_epochs, resume=True)


def test_a_finished_run_resumes_to_its_history_and_free_settings_may_change(two_epochs):
    calls = []

    def counting_loss(logits, labels):
        calls.append(1)
        return F.cross_entropy(logits, labels)

    history = fit(tiny_model(), toy_dataset(), counting_loss, replace(CONFIG, epochs=2, eval_batch_size=7),
                  checkpoint_path=two_epochs, resume=True)
    assert [row["epoch"] for row in history.epochs] == [1, 2] and not calls
    assert set(FREE_ON_RESUME) == {"epochs", "device", "eval_batch_size", "progress"}


@pytest.mark.hostile
@pytest.mark.parametrize("damage, says", [
    (lambda state: state.pop("model"), "is damaged: it has no 'model' entry"),
    (lambda state: state.update(epoch=-1), "is damaged: epoch must be an integer >= 0, got -1"),
    (lambda state: state.update(history=[1, 2]), "is damaged: its entries do not have the types"),
    (lambda state: state["config"].update(learning_rate=0.1), "holds settings this trainer cannot read: "
                                                               "TrainConfig has no setting 'learning_rate'"),
    (lambda state: state["config"].update(lr=math.nan), "holds settings this trainer cannot read: lr must be a "
                                                         "finite number"),
])
def test_a_damaged_checkpoint_is_an_error_naming_the_entry(two_epochs, damage, says):
    state = torch.load(two_epochs, weights_only=True)
    damage(state)
    torch.save(state, two_epochs)
    with pytest.raises(ValueError, match=says):
        fit(tiny_model(), toy_dataset(), build_loss("ce", [24, 24]), replace(CONFIG, epochs=3),
            checkpoint_path=two_epochs, resume=True)
