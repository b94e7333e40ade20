"""Argument checks shared by the package: each raises ``ValueError`` naming the argument and what it got.

Floats must be finite (``math.isfinite``): a comparison such as ``x < 0`` lets NaN through, so every float
setting goes through :func:`check_float`.
"""
from __future__ import annotations

import math
from typing import Any, Collection

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_choice", "check_float", "check_int", "check_labels"]


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either bound may be None); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer{_bounds(low, high, False, False)}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the interval ``low .. high`` (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not _finite(value) \
            or (low is not None and (value <= low if low_open else value < low)) \
            or (high is not None and (value >= high if high_open else value > high)):
        raise ValueError(f"{name} must be a finite number{_bounds(low, high, low_open, high_open)}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Collection) -> Any:
    """``value`` if it is one of ``choices``."""
    try:
        known = value in choices
    except TypeError:  # an unhashable value asked of a set or dict
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {sorted(map(str, choices))}, got {value!r}")
    return value


def check_labels(labels: Any, num_classes: int, length: int | None = None, name: str = "labels",
                 device: torch.device | str | None = None) -> Tensor:
    """Integer class labels in ``[0, num_classes)`` as a long tensor of shape ``[length]``."""
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be an integer tensor, got {type(labels).__name__}") from None
    if labels.dim() != 1 or (length is not None and len(labels) != length) \
            or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        expected = f"[{length}]" if length is not None else "[B]"
        raise ValueError(f"{name} must be an integer tensor of shape {expected}, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels.to(device=device, dtype=torch.long)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
