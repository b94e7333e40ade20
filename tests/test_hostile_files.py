"""No file the project reads can run code: a crafted payload planted in each kind of file is refused.

Each test plants a pickle whose ``__reduce__`` would create a marker file when unpickled (through
Python's ``exec`` or a shell command, as a crafted file handed to a user could), loads it the way the
project does, and checks that the load fails with an error naming the file and that the marker does
not exist. File kinds: a memory (``EpisodicMemory.load``), a training checkpoint (``load_checkpoint``,
``fit(resume=True)``), a vector index (``VectorIndex.load``), an embedding cache (``.npy``) and a
results file (``load_results``).
"""
import os
import pickle
import shlex

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.hostile


class RunsCode:
    """Unpickling this creates ``marker``: a stand-in for whatever a crafted file would do."""

    def __init__(self, marker, via: str):
        self.marker, self.via = str(marker), via

    def __reduce__(self):
        if self.via == "shell":
            return os.system, (f"touch {shlex.quote(self.marker)}",)
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(params=["python", "shell"])
def payload(request, tmp_path):
    marker = tmp_path / f"ran-{request.param}"
    return RunsCode(marker, request.param), marker


def test_the_payload_runs_code_when_unpickled(payload):
    """The payload is real: an unguarded unpickler creates the marker (so its absence below means something)."""
    code, marker = payload
    pickle.loads(pickle.dumps({"config": code}))
    assert marker.exists()


def test_a_memory_file_with_a_payload_is_refused(tmp_path, payload):
    from ltcore.iem.memory import EpisodicMemory

    code, marker = payload
    path = tmp_path / "memory.pt"
    torch.save({"format": "ltcore.memory.EpisodicMemory/1", "config": code, "state_dict": {}}, path)
    with pytest.raises(ValueError, match=f"{path} holds more than tensors and plain data"):
        EpisodicMemory.load(path)
    assert not marker.exists()


def tiny_model():
    from ltcore.models import PlainClassifier, build_backbone

    torch.manual_seed(0)
    return PlainClassifier(build_backbone("test_resnet"), 2)


def test_a_checkpoint_with_a_payload_is_refused_by_load_and_by_resume(tmp_path, payload):
    from ltcore.data import ArrayDataset
    from ltcore.train import TrainConfig, fit, load_checkpoint

    code, marker = payload
    path = tmp_path / "run.pt"
    torch.save({"format": "ltcore-checkpoint-v1", "model": {}, "optimizers": [], "epoch": 0,
                "history": {"epochs": [], "seconds": 0.0}, "config": code}, path)
    with pytest.raises(ValueError, match=f"checkpoint file {path} holds more than tensors and plain data"):
        load_checkpoint(path, tiny_model())
    assert not marker.exists()
    data = ArrayDataset(np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 0, 1]))
    calls = []

    def loss(logits, labels):
        calls.append(1)
        return logits.sum()

    with pytest.raises(ValueError, match=f"checkpoint file {path} holds more than tensors and plain data"):
        fit(tiny_model(), data, loss, TrainConfig(epochs=1, progress=False, device="cpu"), checkpoint_path=path,
            resume=True)
    assert not marker.exists() and not calls                           # refused before any training


def test_an_index_file_replaced_by_a_payload_is_refused(tmp_path, payload):
    from ltcore.rac.index import VectorIndex

    code, marker = payload
    path = tmp_path / "keys.faiss"
    VectorIndex.build(np.eye(4, dtype=np.float32), kind="flat", progress=False).save(path)
    path.write_bytes(pickle.dumps(code))
    with pytest.raises((ValueError, OSError), match=str(path)):
        VectorIndex.load(path)
    assert not marker.exists()


def test_an_embedding_cache_holding_a_payload_is_refused(tmp_path, payload):
    from ltcore.rac.embeddings import read_cached_embeddings

    code, marker = payload
    path = tmp_path / "encoder-96-0123.npy"
    np.save(path, np.array([code], dtype=object), allow_pickle=True)
    with pytest.warns(RuntimeWarning, match=f"embedding cache {path} is unreadable as a numbers-only .npy file"):
        assert read_cached_embeddings(path, 1) is None                  # recomputed instead
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])    # protocol 0 is plain ASCII text
def test_a_results_file_holding_a_payload_is_refused(tmp_path, payload, protocol):
    from ltcore.results import load_results

    code, marker = payload
    (tmp_path / "table.json").write_bytes(pickle.dumps([{"method": code}], protocol=protocol))
    with pytest.raises(ValueError, match=f"results file {tmp_path / 'table.json'} is not (valid JSON|UTF-8)"):
        load_results("table", tmp_path)
    assert not marker.exists()
