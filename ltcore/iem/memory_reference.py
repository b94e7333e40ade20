"""The IEM memory's eq. 1-4 written plainly, item by item and bank by bank, to read top to bottom.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed Visual
Recognition", CVPR 2020, Section 3.1: reading (eq. 1-2), writing (eq. 3-4), and "when the memory's
maximum capacity is reached, the oldest key-value pair is deleted".

Each bank is a Python dict from key (a tuple of floats) to value, ordered from least to most
recently touched; a read computes every distance exactly (as a fraction, so that the ranking has
no rounding to argue about, whatever the magnitudes), sorts them, and weighs in float64. The
interpretations are those of :mod:`ltcore.iem.memory`: a duplicate is an exactly equal key in the
same bank (``-0.0 == 0.0``, as for Python's dict keys), eq. 4 weighs the new value by gamma and
stores the result as float32, a write touches its pair, a full bank loses its least recently
touched pair, an empty bank reads 0. None of the memory's speed tricks are here (and no training:
its Adam is ``torch.optim.SparseAdam``'s arithmetic); the tests check :class:`EpisodicMemory`
equal to this class on writes, evictions, duplicates, ``read`` and ``read_all``.

Taught in notebook 02, *Inflated Episodic Memory*.
"""
from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction

import numpy as np

__all__ = ["ReferenceMemory"]


class ReferenceMemory:
    """Per-class banks of (key, value) pairs: eq. 1-4 and the eviction rule, one item at a time."""

    def __init__(self, num_classes: int, capacity: int = 50000, top_n: int = 50, delta: float = 1e-3,
                 gamma: float = 0.99):
        self.capacity, self.top_n, self.delta, self.gamma = capacity, top_n, delta, gamma
        self.banks = [OrderedDict() for _ in range(num_classes)]   # key -> value, least recently touched first

    def write(self, keys, values, labels) -> None:
        """Eq. 3-4 for each (key [D], value, label), in order."""
        for key, value, label in zip(_rows(keys), _rows(values), _rows(labels)):
            bank, key, value = self.banks[int(label)], tuple(float(x) for x in key), float(np.float32(value))
            if key in bank:
                # "the new key is not appended. Meanwhile, its corresponding value is updated" (eq. 4)
                bank[key] = float(np.float32(self.gamma * value + (1 - self.gamma) * bank[key]))
                bank.move_to_end(key)           # touched: now the most recent
                continue
            if len(bank) == self.capacity:
                bank.popitem(last=False)        # full: the oldest pair is deleted
            bank[key] = value                   # eq. 3: appended

    def read(self, query, label: int) -> tuple[float, list[tuple[tuple[float, ...], float]]]:
        """Eq. 1-2 on the bank of ``label``: the score and the top-n (key, weight) pairs, nearest first."""
        bank, query = self.banks[int(label)], [Fraction(x) for x in _rows(query)]
        distance = {key: sum((q - Fraction(k)) ** 2 for q, k in zip(query, key)) for key in bank}   # ||q - k||^2
        nearest = sorted(bank, key=distance.__getitem__)[: self.top_n]
        similarity = [1.0 / (float(distance[key]) + self.delta) for key in nearest]      # eq. 2
        if not nearest:
            return 0.0, []                      # an empty bank reads 0
        weights = [s / sum(similarity) for s in similarity]
        score = sum(w * bank[key] for w, key in zip(weights, nearest))                   # eq. 1
        return score, list(zip(nearest, weights))

    def read_all(self, query) -> list[float]:
        """Eq. 1-2 on every bank for one query: one score per class."""
        return [self.read(query, label)[0] for label in range(len(self.banks))]

    def eviction_order(self, label: int) -> list[tuple[float, ...]]:
        """Keys of the bank of ``label`` from least to most recently touched: the first is deleted next."""
        return list(self.banks[int(label)])


def _rows(x) -> list:
    """A tensor or array as nested Python lists; a list as it is."""
    return x.tolist() if hasattr(x, "tolist") else list(x)
