"""Small file helpers shared by every module that reads or writes files a user could be handed.

Writes go to a temporary name in the same folder and are renamed into place, so an interrupted
write never leaves a half-written file under the real name. A target that exists and is not a
regular file (a device such as ``/dev/full``, a FIFO, a directory) is refused: the rename would
replace it. Errors name the target, never the temporary file.

Reads never execute code: :func:`safe_load` is ``torch.load(weights_only=True)``, which unpickles
tensors and plain data (dicts, lists, tuples, strings, numbers, ``None``) and refuses anything
else, such as a pickled ``__reduce__`` that would run a shell command.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def check_write_target(path: str | os.PathLike) -> Path:
    """Check that ``path`` can be written by :func:`atomic_write`; returns it as a ``Path``.

    The target is absent or a regular file, and its folder exists (or can be created) and is
    writable. :func:`ltcore.train.fit` calls this before training, so a bad checkpoint path is
    found before the first epoch rather than after it.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise FileExistsError(f"cannot write {path}: it exists and is not a regular file "
                                f"({_file_kind(path)}); choose a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _naming(exc, path) from exc
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: its folder {path.parent} is not writable")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` atomically.

    The file gets the permissions any new file gets (0o666 less the umask), not the owner-only ones of the
    temporary file. Refuses a ``path`` that exists and is not a regular file; an ``OSError`` names ``path``.
    """
    path = check_write_target(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise _naming(exc, path) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename it into place."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_json(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:
    """The standard JSON in ``path`` (parsing JSON never runs code). A missing file, text that is not UTF-8, and
    JSON that is invalid or uses ``NaN`` / ``Infinity`` are errors naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} {path}{missing_hint}")

    def refuse_constant(constant: str):
        raise ValueError(f"{constant} is not standard JSON")

    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from None


def safe_load(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and say what is wrong with it.

    Only tensors and plain data load; a file that refers to any other Python object is refused
    (unpickling it could run code), as is a truncated or foreign file. A CUDA ``map_location``
    on a machine without CUDA is an error about the device, not about the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    _check_device_available(map_location, f"cannot load {what} file {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refers_to = re.search(r"GLOBAL (\S+)|unrecognized function (\S+)|but got (\S+)", str(exc))
        if refers_to:
            name = next(group for group in refers_to.groups() if group)
            raise ValueError(
                f"{what} file {path} holds more than tensors and plain data (it refers to {name}); ltcore "
                f"does not load such files, since unpickling them can run code. If an older version of "
                f"ltcore wrote it, write it again with this one") from None
        raise ValueError(f"{what} file {path} is truncated or not a file written by ltcore "
                         f"({_weights_only_reason(exc)})") from None
    except Exception as exc:  # truncated zip, foreign format
        raise ValueError(
            f"{what} file {path} is truncated or not a file written by ltcore ({type(exc).__name__}: {exc})"
        ) from exc


def _check_device_available(map_location: Any, doing: str) -> None:
    if not isinstance(map_location, (str, torch.device)):
        return  # a dict or a callable: torch applies it per storage
    try:
        device = torch.device(map_location)
    except RuntimeError as exc:
        raise ValueError(f"{doing}: {map_location!r} is not a device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{doing} onto {device}: CUDA is not available on this machine; use device='cpu'")


def _weights_only_reason(exc: Exception) -> str:
    """The unpickler's own reason, without torch's advice to load with ``weights_only=False``."""
    found = re.search(r"WeightsUnpickler error: (.*?)(?:\n\n|$)", str(exc), re.S)
    return found.group(1).strip() if found else type(exc).__name__


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def _naming(exc: OSError, path: Path) -> OSError:
    """The same kind of ``OSError`` (``OSError(errno, ...)`` picks the subclass), naming the target."""
    reason = exc.strerror or str(exc)
    return OSError(exc.errno, f"cannot write {path}: {reason}") if exc.errno else OSError(f"cannot write {path}: {reason}")
