"""The trainer: learning happens, checkpoints are atomic, resumable and checked on load."""
import numpy as np
import pytest
import torch

from ltcore.data import ArrayDataset
from ltcore.losses import build_loss
from ltcore.models import PlainClassifier, build_backbone
from ltcore.train import TrainConfig, fit, load_checkpoint, lr_at, predict


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
