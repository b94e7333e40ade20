"""Atomic writes that never replace what is not a regular file, and loads that never run code."""
import errno
import os
from pathlib import Path
from dataclasses import dataclass

import pytest
import torch

from ltcore.io import atomic_save, atomic_write, check_write_target, safe_load


def write_text(text):
    return lambda tmp: open(tmp, "w").write(text)


def test_atomic_write_renames_into_place_and_leaves_no_temporary_file(tmp_path):
    target = atomic_write(tmp_path / "deep" / "er" / "a.txt", write_text("new"))
    assert target == tmp_path / "deep" / "er" / "a.txt" and target.read_text() == "new"
    atomic_write(target, write_text("newer"))                       # a regular file is replaced
    assert target.read_text() == "newer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fails(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(target, fails)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def make_directory(path):
    path.mkdir()


def make_fifo(path):
    os.mkfifo(path)


def make_device_link(path):
    path.symlink_to("/dev/null")                                    # a character device, reached by a link


@pytest.mark.hostile
@pytest.mark.parametrize("make, kind", [(make_directory, "a directory"), (make_fifo, "a FIFO"),
                                        (make_device_link, "a character device")])
def test_atomic_write_refuses_a_target_that_is_not_a_regular_file(tmp_path, make, kind):
    target = tmp_path / "target"
    make(target)
    with pytest.raises(FileExistsError, match=f"cannot write {target}: it exists and is not a regular file "
                                              f"\\({kind}\\)"):
        atomic_write(target, write_text("data"))
    assert not target.is_file() and target.exists()                 # still the directory, FIFO or device
    if target.is_symlink():
        assert os.readlink(target) == "/dev/null"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


@pytest.mark.hostile
def test_write_errors_name_the_target_not_the_temporary_file(tmp_path):
    target = tmp_path / "results.json"

    def disk_full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError) as error:
        atomic_write(target, disk_full)
    assert error.value.errno == errno.ENOSPC
    assert f"cannot write {target}: No space left on device" in str(error.value)
    assert ".tmp" not in str(error.value)
    (tmp_path / "file").write_text("kept")
    with pytest.raises(FileExistsError, match=f"cannot write {tmp_path / 'file' / 'x.pt'}"):
        atomic_write(tmp_path / "file" / "x.pt", write_text("x"))   # its folder would replace a file
    assert (tmp_path / "file").read_text() == "kept"


def test_check_write_target_creates_the_folder_and_refuses_what_cannot_be_written(tmp_path):
    assert check_write_target(tmp_path / "a" / "b" / "run.pt") == tmp_path / "a" / "b" / "run.pt"
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / "run.pt").exists()
    (tmp_path / "plain").write_text("")
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'plain' / 'run.pt'}"):
        check_write_target(tmp_path / "plain" / "run.pt")
    with pytest.raises(FileExistsError, match="a directory"):
        check_write_target(tmp_path / "a")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_check_write_target_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=f"cannot write {folder / 'run.pt'}: its folder .* not writable"):
            check_write_target(folder / "run.pt")
    finally:
        folder.chmod(0o755)


def test_safe_load_reads_tensors_and_plain_data(tmp_path):
    payload = {"format": "x/1", "weights": torch.arange(3.0), "config": {"lr": 0.1, "betas": (0.9, 0.99)},
               "history": [{"epoch": 1, "loss": 0.5}], "none": None}
    atomic_save(payload, tmp_path / "plain.pt")
    loaded = safe_load(tmp_path / "plain.pt")
    assert torch.equal(loaded["weights"], payload["weights"])
    assert {k: v for k, v in loaded.items() if k != "weights"} == {k: v for k, v in payload.items() if k != "weights"}


def test_safe_load_names_a_missing_or_truncated_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"memory file not found: {tmp_path / 'nowhere.pt'}"):
        safe_load(tmp_path / "nowhere.pt", "memory")
    torch.save({"weights": torch.zeros(100)}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:150])
    with pytest.raises(ValueError, match=f"checkpoint file {tmp_path / 'cut.pt'} is truncated or not a file"):
        safe_load(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pt is truncated or not a file written by ltcore"):
        safe_load(tmp_path / "text.pt")


@dataclass
class OldStyleHistory:
    epochs: list


@pytest.mark.hostile
def test_a_file_holding_python_objects_is_refused_with_a_clear_error(tmp_path):
    """A file holding a class instance (as older pickled files could) is refused, naming the class."""
    torch.save({"history": OldStyleHistory([1])}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"checkpoint file .*old.pt holds more than tensors and plain data "
                                         r"\(it refers to .*OldStyleHistory\).*write it again"):
        safe_load(tmp_path / "old.pt")


@pytest.mark.hostile
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_loading_onto_a_missing_gpu_is_a_device_error_not_a_bad_file(tmp_path):
    atomic_save({"weights": torch.zeros(2)}, tmp_path / "fine.pt")
    with pytest.raises(RuntimeError, match=r"cannot load memory file .*fine.pt onto cuda: CUDA is not available"):
        safe_load(tmp_path / "fine.pt", "memory", map_location="cuda")
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        safe_load(tmp_path / "fine.pt", "memory", map_location="gpu")


def test_atomic_write_gives_the_permissions_of_any_new_file(tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "shared.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644   # readable by others, as open() would make it
