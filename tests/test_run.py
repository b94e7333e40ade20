"""Tests of the train command (ltcore.run, ``python -m ltcore train``): its files, and a run killed mid-step and
resumed that ends bitwise equal to the run that was never stopped, for a baseline and IEM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from ltcore.run import CHECKPOINT, METRICS, RESULTS, SIGNAL_AT_STEP_VARIABLE

# Fashion-MNIST-LT has 2,478 training images: 20 steps an epoch at batch 128. 15 steps are mid-epoch 1, 30 are
# mid-epoch 2; checkpoints every 15 steps and at each epoch's end.
N = 15
SMALL = ["schedule.epochs=2", "schedule.milestones=[1]", f"checkpoint_every={N}", "data.options={ test_per_class = 20 }"]


def train(config: str, output, *extra: str, signal_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop(SIGNAL_AT_STEP_VARIABLE, None)
    if signal_at:
        env[SIGNAL_AT_STEP_VARIABLE] = signal_at
    command = [sys.executable, "-m", "ltcore", "train", "--config", config, "--output", str(output), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def tensors(value, prefix=""):
    """Every tensor in a nested checkpoint, by its path of keys."""
    if torch.is_tensor(value):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors(item, f"{prefix}/{i}")


def load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("config", ["quick-baseline", "quick-iem", "quick-rac"])
def test_a_run_killed_mid_step_and_resumed_ends_bitwise_equal_to_one_never_stopped(tmp_path, config):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = train(config, straight, "--max-steps", str(2 * N), "--set", *SMALL)
    assert done.returncode == 0, done.stderr
    killed = train(config, stopped, "--max-steps", str(2 * N), "--set", *SMALL, signal_at=f"{N + 1}:KILL")
    assert killed.returncode == -signal.SIGKILL                 # kill -9 in the middle of step N + 1
    assert load(stopped / CHECKPOINT)["step"] == N                # the last checkpoint before it
    assert not (stopped / RESULTS).exists()
    resumed = train(config, stopped, "--max-steps", str(2 * N), "--resume", "--set", *SMALL)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {stopped / CHECKPOINT}: step {N}" in resumed.stdout

    a, b = load(straight / CHECKPOINT), load(stopped / CHECKPOINT)
    assert a["step"] == b["step"] == 2 * N and a["epoch"] == b["epoch"] == 1 and a["position"] == b["position"]
    found_a, found_b = dict(tensors(a)), dict(tensors(b))
    assert found_a.keys() == found_b.keys()
    assert any(key.startswith("/optimizers/0/state") for key in found_a)   # SGD's momentum buffers
    if config == "quick-iem":   # the memories' slots and their Adam moments are in the model's state
        assert any("memor" in key for key in found_a if key.startswith("/model/"))
    if config == "quick-rac":   # the index the run was trained with, identified
        assert a["index"] == b["index"] and a["index"]["factory"] == "HNSW32" and len(a["index"]["keys_sha256"]) == 64
    different = [key for key in found_a if not torch.equal(found_a[key], found_b[key])]
    assert not different, different[:5]
    # the log holds each step once: the resumed run dropped what the killed one logged after its checkpoint
    steps = [row["step"] for row in map(json.loads, (stopped / METRICS).read_text().splitlines()) if "loss" in row]
    assert steps == [row["step"] for row in map(json.loads, (straight / METRICS).read_text().splitlines())
                     if "loss" in row]
    assert json.loads((stopped / RESULTS).read_text())["overall"] == json.loads((straight / RESULTS).read_text())[
        "overall"]


def test_the_checkpoint_and_the_files_follow_the_contract(tmp_path):
    result = train("quick-baseline", tmp_path, "--max-steps", "12", "--set", *SMALL)
    assert result.returncode == 0, result.stderr
    state = load(tmp_path / CHECKPOINT)   # weights_only: tensors and plain data only
    assert {"model", "step", "optimizers", "epoch", "position", "rng", "config"} <= set(state)
    assert state["step"] == 12 and state["epoch"] == 0 and state["position"] == 12
    rows = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert rows == [{"step": 10, "epoch": 1, "loss": rows[0]["loss"], "lr": 0.1}]
    record = json.loads((tmp_path / RESULTS).read_text())
    assert record["steps"] == 12 and record["complete"] is False and 0 <= record["overall"] <= 100


def test_sigterm_writes_a_checkpoint_and_stops_with_143(tmp_path):
    result = train("quick-baseline", tmp_path, "--set", *SMALL, signal_at="7:TERM")
    assert result.returncode == 143
    assert "SIGTERM" in result.stderr and "--resume" in result.stderr
    assert load(tmp_path / CHECKPOINT)["step"] == 7   # the step in progress finished, then the checkpoint


def test_a_folder_holding_a_run_is_never_overwritten_and_resume_needs_the_same_config(tmp_path):
    assert train("quick-baseline", tmp_path, "--max-steps", "3", "--set", *SMALL).returncode == 0
    before = (tmp_path / CHECKPOINT).read_bytes()
    again = train("quick-baseline", tmp_path, "--max-steps", "3", "--set", *SMALL)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume" in again.stderr
    other = train("quick-baseline", tmp_path, "--resume", "--set", *SMALL, "optimizer.lr=0.05")
    assert other.returncode == 1 and "another config" in other.stderr and "optimizer" in other.stderr
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    # what does not change the computation may change: here it stops at once, --max-steps being reached
    same = train("quick-baseline", tmp_path, "--resume", "--max-steps", "3", "--set", *SMALL, "loop.workers=2",
                 "checkpoint_every=7")
    assert same.returncode == 0, same.stderr
    assert load(tmp_path / CHECKPOINT)["step"] == 3


def test_a_truncated_or_foreign_checkpoint_is_an_error_naming_the_file(tmp_path):
    assert train("quick-baseline", tmp_path, "--max-steps", "3", "--set", *SMALL).returncode == 0
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:1000])
    truncated = train("quick-baseline", tmp_path, "--resume", "--set", *SMALL)
    assert truncated.returncode == 1 and str(path) in truncated.stderr
    torch.save({"weights": torch.zeros(2)}, path)
    foreign = train("quick-baseline", tmp_path, "--resume", "--set", *SMALL)
    assert foreign.returncode == 1 and "not a checkpoint of the train command" in foreign.stderr


@pytest.mark.parametrize("config, overrides, says", [
    ("quick-baseline", ["optimizer.name=adamw"], "optimizer.name 'adamw'"),
    ("quick-rac", ["loss.name=ce", "loss.options={}"], "loss.name 'ce'"),
    ("quick-baseline", ["norm=group"], "norm 'group'"),
])
def test_what_the_command_cannot_train_yet_is_refused_naming_the_key(tmp_path, config, overrides, says):
    result = train(config, tmp_path / "out", "--set", *(overrides or ["seed=0"]))
    assert result.returncode == 2 and says in result.stderr
    assert not (tmp_path / "out").exists()   # refused before anything was written


def test_batches_are_the_same_with_any_number_of_workers_and_leave_the_stream_alone():
    import numpy as np

    from ltcore.data.datasets import ArrayDataset, RandomCropFlip
    from ltcore.run import epoch_loader

    images = np.random.default_rng(0).integers(0, 255, size=(40, 12, 12), dtype=np.uint8)
    dataset = ArrayDataset(images, np.arange(40) % 4, RandomCropFlip(padding=3))
    batches = [list(range(i, i + 8)) for i in range(0, 40, 8)][::-1]

    def load_all(workers: int) -> list:
        return [torch.cat([images.flatten(1), labels[:, None].float()], 1)
                for images, labels, _ in epoch_loader(dataset, batches, seed=3, epoch=1, workers=workers)]

    before = torch.get_rng_state()
    alone = load_all(0)
    assert torch.equal(torch.get_rng_state(), before)     # the items' seeds do not move the process's stream
    with_workers = load_all(2)
    assert len(alone) == len(with_workers) == 5
    assert all(torch.equal(a, b) for a, b in zip(alone, with_workers))
    other_epoch = [images for images, _, _ in epoch_loader(dataset, batches, seed=3, epoch=2)]
    assert not all(torch.equal(a[:, :-1].view(-1, 12, 12)[None].flatten(), b.flatten())
                   for a, b in zip(alone, other_epoch))   # another epoch, other crops


def test_the_loop_switches_run_on_a_cpu(tmp_path):
    result = train("quick-baseline", tmp_path, "--max-steps", "3", "--set", *SMALL, "loop.channels_last=true",
                   "loop.autocast=bf16", "loop.workers=2", "loop.log_every=1")
    assert result.returncode == 0, result.stderr
    assert "training in float32 on cpu" in result.stdout
    assert len((tmp_path / METRICS).read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_compiled_model_trains_and_keeps_its_state_dict_keys(tmp_path):
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    assert train("quick-baseline", plain, "--max-steps", "2", "--set", *SMALL).returncode == 0
    result = train("quick-baseline", compiled, "--max-steps", "2", "--set", *SMALL, "loop.compile=true")
    assert result.returncode == 0, result.stderr
    assert load(plain / CHECKPOINT)["model"].keys() == load(compiled / CHECKPOINT)["model"].keys()
