"""Strict configuration overrides and the device helper."""
import pytest
import torch

from ltcore.config import get_device, override
from ltcore.train import TrainConfig


def test_override_applies_and_copies():
    config = TrainConfig(epochs=3)
    changed = override(config, {"lr": 1, "lr_milestones": [2]})
    assert changed.lr == 1 and changed.lr_milestones == (2,) and config.lr == 0.1


def test_override_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(KeyError, match="no setting 'learning_rate'"):
        override(TrainConfig(), {"learning_rate": 0.1})
    with pytest.raises(TypeError, match="TrainConfig.epochs expects int"):
        override(TrainConfig(), {"epochs": "ten"})
    with pytest.raises(TypeError, match="progress expects bool"):
        override(TrainConfig(), {"progress": 1})


def test_impossible_training_config_is_an_error():
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(epochs=0)


def test_device_helper_defaults_and_refuses_missing_cuda(monkeypatch):
    monkeypatch.delenv("LTCORE_DEVICE", raising=False)
    assert get_device("cpu") == torch.device("cpu")
    assert get_device().type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            get_device("cuda")


@pytest.mark.parametrize("value, disabled", [(None, False), ("", False), ("0", False), ("false", False),
                                             ("1", True), ("True", True)])
def test_progress_bars_honour_tqdm_disable(monkeypatch, value, disabled):
    from ltcore.config import progress_disabled

    if value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress_disabled(True) is disabled
    assert progress_disabled(False) is True
