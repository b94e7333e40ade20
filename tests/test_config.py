"""Strict configuration overrides, seeding and the device helper."""
import pytest
import torch

from ltcore.config import get_device, override, seed_everything
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


def test_device_helper_defaults_and_refuses_missing_cuda(monkeypatch):
    monkeypatch.delenv("LTCORE_DEVICE", raising=False)
    assert get_device("cpu") == torch.device("cpu")
    assert get_device().type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            get_device("cuda")


@pytest.mark.hostile
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_gpu_is_named_with_who_asked_for_it(monkeypatch):
    monkeypatch.setenv("LTCORE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="LTCORE_DEVICE 'cuda' requested but CUDA is not available on this "
                                           "machine; use 'cpu' or 'auto'"):
        get_device()
    assert get_device("cpu") == torch.device("cpu")                 # an explicit choice is not overridden
    with pytest.raises(RuntimeError, match="device 'cuda:1' requested but CUDA is not available"):
        get_device("cuda:1")


@pytest.mark.parametrize("preference, says", [("gpu", "device 'gpu' is not a device"),
                                              ("", "device '' is not a device")])
def test_a_device_name_torch_does_not_know_is_an_error(preference, says):
    with pytest.raises(ValueError, match=says):
        get_device(preference)


def test_seeding_is_repeatable_and_checks_the_seed():
    first = torch.rand(3, generator=seed_everything(5))
    assert torch.equal(torch.rand(3, generator=seed_everything(5)), first)
    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            seed_everything(seed)


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
