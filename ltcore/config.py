"""Typed configuration with strict overrides, seeding and the one device helper.

``override(config, {"lr": 0.05})`` returns a copy; an unknown key or a value of
the wrong type is an error naming the key (nanoGPT's configurator, labml's Configs).
:func:`ltcore.train.fit` reads the settings saved in a checkpoint through it, so a
damaged or foreign file is refused key by key before a run is resumed.
"""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Mapping, TypeVar

import numpy as np
import torch

from ltcore.checks import check_int

C = TypeVar("C")


def override(config: C, overrides: Mapping[str, Any]) -> C:
    """A copy of the dataclass ``config`` with ``overrides`` applied, checked key by key."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    clean = {}
    for key, value in overrides.items():
        if key not in fields:
            raise KeyError(f"{type(config).__name__} has no setting {key!r}; valid: {', '.join(fields)}")
        current = getattr(config, key)
        if current is not None and value is not None and not _same_kind(current, value):
            raise TypeError(f"{type(config).__name__}.{key} expects {type(current).__name__}, "
                            f"got {type(value).__name__} ({value!r})")
        clean[key] = tuple(value) if isinstance(current, tuple) else value
    return dataclasses.replace(config, **clean)


def progress_disabled(progress: bool) -> bool:
    """``disable=`` for a tqdm bar: off when ``progress`` is False or ``TQDM_DISABLE`` is set.

    tqdm reads ``TQDM_DISABLE`` only for a ``disable`` left at its default; ltcore passes it
    explicitly, so it honours the variable here. The notebook tests set it: under nbval a cell's
    widget updates pile up unread until the cell ends, and past ZMQ's high-water mark the kernel's
    last messages are dropped (notebook 01's training cell then timed out waiting for them).
    """
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def _same_kind(current: Any, value: Any) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, float):
        return isinstance(value, (int, float))
    if isinstance(current, tuple):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(current))


def get_device(preference: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU; anything else is passed to ``torch.device``.

    ``LTCORE_DEVICE`` overrides ``"auto"``. A device this machine does not have is an error naming
    who asked for it (the argument or the variable), never a later failure elsewhere.
    """
    asked_by = "device"
    if preference == "auto" and "LTCORE_DEVICE" in os.environ:
        preference, asked_by = os.environ["LTCORE_DEVICE"], "LTCORE_DEVICE"
    if preference != "auto":
        try:
            device = torch.device(preference)
        except (RuntimeError, TypeError):
            raise ValueError(f"{asked_by} {preference!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' "
                             f"or 'mps'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{asked_by} {preference!r} requested but CUDA is not available on this machine; "
                               f"use 'cpu' or 'auto'")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"{asked_by} {preference!r} requested but this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                         and torch.backends.mps.is_available()):
            raise RuntimeError(f"{asked_by} {preference!r} requested but MPS is not available on this machine; "
                               f"use 'cpu' or 'auto'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a torch Generator for data order."""
    seed = check_int("seed", seed, 0, 2**32 - 1)  # NumPy's range
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
