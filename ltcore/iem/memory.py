"""Inflated Episodic Memory (IEM): one growing key-value bank per class, read by eq. 1-2, written by eq. 3-4.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed
Visual Recognition", CVPR 2020. Section 3.1 (banks, reading eq. 1-2, writing eq. 3-4, MSE
loss eq. 5), Section 3.3 (a global and a local memory, READ of the positive and the hard
negative bank eq. 14-16, reading all banks at inference), Section 4.2 (top-n = 50, capacity
50,000, gamma = 0.99, memory trained by Adam with lr 1e-5). The age vector comes from
Kaiser et al., "Learning to remember rare events", ICLR 2017 (the paper's [15]).

One :class:`EpisodicMemory` holds one *kind* of bank for every class; the IEM classifier
builds two (global and local). Keys are feature vectors ``[D]``; a value is one scalar,
"the probability of the features belonging to category l". This module says the paper's
steps; the slots live in :mod:`ltcore.iem.memory_storage` (pool, exact-key index, age order,
saving), the fast search in :mod:`ltcore.iem.memory_search`, the memory's Adam in
:mod:`ltcore.iem.memory_adam`. :mod:`ltcore.iem.memory_reference` writes eq. 1-4 item by item;
the tests check this memory equal to it. The capacity is a limit, not an allocation: banks grow
by doubling (ImageNet-LT pre-allocated at capacity would take ~300 GB; see
:func:`projected_bank_sizes` for what training leaves in the banks).

Reading (eq. 1-2)
-----------------
``p = sum_i s(q, k_i) v_i / sum_i s(q, k_i)`` with ``s(a, b) = 1 / (||a - b||^2 + delta)``
over the top-n nearest keys of the bank (a bank with fewer than n slots uses all of them).
> **Our reading:** an empty bank reads as score 0 with all weights 0 (the paper never reads one).
An exact float32 tie between the n-th and (n+1)-th distance is broken by ``torch.topk``.
:meth:`~EpisodicMemory.read` (training, eq. 14-15) reads one bank per query;
:meth:`~EpisodicMemory.read_all` (inference, Section 3.3) every bank for every query. Both rank
keys by the same formula and compute in float64 wherever float32 could overflow, so they agree
on every finite input (:mod:`ltcore.iem.memory_search`).

> **Our reading:** "We leverage kd-tree [3] to build indices ... fast retrieval". We search exactly
by brute force instead: the same top-n, and what GPUs and faiss' ``IndexFlatL2`` do at these
dimensions (``python -m ltcore bench memory`` compares with faiss). The cost of ``read`` grows with
the size of each query's own bank, that of ``read_all`` with the whole memory.

Writing (eq. 3-4)
-----------------
New (key, value) pairs are appended to the bank of their label. "If the key has already
existed in the memory, the new key is not appended. Meanwhile, its corresponding value is
updated": ``v <- gamma * v_new + (1 - gamma) * v_old`` -- eq. 4 as printed, so ``gamma``
(0.99) weighs the NEW value.
> **Our reading** of "already existed": an exactly equal float32 key in the bank of the same label
(``-0.0`` equals ``0.0``), found through a 120-bit fingerprint in O(D). Items of one write call
are processed in batch order, exactly as if written one by one, so duplicates inside a batch are
merged too (each eq. 4 update is computed in float64 and stored as float32). Writing costs
O(batch), whatever the bank size.

Eviction (the age vector)
-------------------------
Paper: "When the memory's maximum capacity is reached, the oldest key-value pair is deleted.
The oldest key-value pair is the least frequently accessed slot. We use an age vector to
record the access frequency for each memory slot, following [15]."
> **Our reading,** Kaiser et al.'s age: a slot's age is the time since it was last *touched*, and
the oldest slot is replaced. A slot is touched when it is written (appended, or updated as a
duplicate) and when :meth:`~EpisodicMemory.step` updates it (it was read in training and got a
gradient -- Kaiser et al. reset the age of the neighbour they update). A deterministic tie-break
instead of Kaiser's random one: each bank orders its slots from least to most recently touched;
a write touches its items in batch order, a step touches its slots in the order they were first
written; a new key for a full bank replaces the first slot in that order
(:meth:`~EpisodicMemory.eviction_order`), and takes over its slot.

Training (eq. 5, 14-16; Section 4.2)
------------------------------------
Keys and values are trained with their own lazy Adam (lr 1e-5) while the backbone uses SGD.
A :meth:`~EpisodicMemory.read` in training mode (``memory.train()``) with grad enabled records
the slots it selected; :meth:`~EpisodicMemory.step` applies Adam to exactly those slots (the
arithmetic of ``torch.optim.SparseAdam``), re-indexes their moved keys and touches them, then
forgets the records. ``memory.eval()`` or ``torch.no_grad()`` reads record nothing and change
nothing. How the IEM classifier calls it::

    p_pos = memory.read(features, labels)          # eq. 14, records the slots read
    p_neg = memory.read(features, hard_negatives)  # eq. 15
    loss = ce + mse(p_pos, 1) + mse(p_neg, 0)      # eq. 16
    sgd.zero_grad(); memory.zero_grad()            # zero_grad clears gradients, keeps the records
    loss.backward()
    sgd.step(); memory.step()                      # lazy Adam on the slots read, then forget them
    memory.write(features.detach(), confidences.detach(), labels)   # eq. 3-4, Section 3.3

With ``ltcore.train.fit``, return ``MemoryOptimizer(global_memory, local_memory)`` among the
optimizers: the trainer's zero_grad/backward/step order above is then respected. A write
between a read and :meth:`~EpisodicMemory.step` is safe: a slot evicted meanwhile drops its stale
gradient. Non-finite input is refused at the door: features, values, float settings, gradients
(a step refuses and changes nothing) and saved files (checked on load).

Taught in notebook 02, *Inflated Episodic Memory*.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ltcore.checks import check_float, check_int, check_labels
from ltcore.iem.memory_adam import LazyAdam, MemoryOptimizer
from ltcore.iem.memory_search import nearest_slots, pack_banks, read_dtype, read_packed
from ltcore.iem.memory_storage import MAX_KEY_DIM, BankStorage, projected_bank_sizes
from ltcore.io import atomic_save, safe_load

__all__ = ["EpisodicMemory", "MemoryRead", "MemoryOptimizer", "projected_bank_sizes"]

_FILE_FORMAT = "ltcore.memory.EpisodicMemory/2"
# /1 lacks chunk_elements (default) and the stored bounds (computed on load); the state-dict keys are the same
_READABLE_FORMATS = ("ltcore.memory.EpisodicMemory/1", _FILE_FORMAT)


class MemoryRead(NamedTuple):
    """Result of ``read(..., return_weights=True)``; padding (a bank smaller than top_n) has slot -1, weight 0."""

    scores: Tensor   # [B] eq. 1
    weights: Tensor  # [B, top_n] normalised eq. 2 weights, each row sums to 1 (0 for an empty bank)
    slots: Tensor    # [B, top_n] pool slots read, nearest first


class EpisodicMemory(BankStorage):
    """Per-class key-value banks with top-n inverse-distance reads (Section 3.1).

    Args:
        num_classes: number of banks C.
        key_dim: key dimension D.
        capacity: maximum slots per bank (paper: 50,000).
        top_n: neighbours per read (paper: 50).
        delta: the ``delta`` of eq. 2 (at least 1e-30, so that ``1 / delta`` stays finite).
        gamma: eq. 4 momentum; weighs the new value (paper: 0.99).
        lr, betas, eps: the memory's Adam (paper: Adam, lr 1e-5).
        chunk_elements: bound on the elements of one chunk's temporaries (default 2^24: 64 MB of float32).
        device: where the banks live; ``.to(device)`` moves them later.

    Inspection (``bank``, ``bank_sizes``, ``eviction_order``, ``num_slots``) and saving come from
    :class:`~ltcore.iem.memory_storage.BankStorage`. Taught in notebook 02, *Inflated Episodic Memory*.
    """

    def __init__(self, num_classes: int, key_dim: int, capacity: int = 50000, top_n: int = 50,
                 delta: float = 1e-3, gamma: float = 0.99, *, lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, chunk_elements: int = 1 << 24,
                 device: torch.device | str | None = None):
        super().__init__(check_int("num_classes", num_classes, 1), check_int("key_dim", key_dim, 1, MAX_KEY_DIM),
                         check_int("capacity", capacity, 1), check_int("chunk_elements", chunk_elements, 1), device)
        self.top_n = check_int("top_n", top_n, 1)
        self.delta = check_float("delta", delta, 1e-30)
        self.gamma = check_float("gamma", gamma, 0.0, 1.0)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        betas = tuple(check_float("betas", beta, 0.0, 1.0, high_open=True) for beta in betas)
        self.adam = LazyAdam(check_float("lr", lr, 0.0), betas, check_float("eps", eps, 0.0, low_open=True))

    @property
    def config(self) -> dict:
        """Constructor arguments (saved with the memory)."""
        return dict(num_classes=self.num_classes, key_dim=self.key_dim, capacity=self.capacity, top_n=self.top_n,
                    delta=self.delta, gamma=self.gamma, lr=self.adam.lr, betas=self.adam.betas, eps=self.adam.eps,
                    chunk_elements=self.chunk_elements)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, key_dim={self.key_dim}, capacity={self.capacity}, "
                f"top_n={self.top_n}, slots={self.num_slots}")

    # ------------------------------------------------------------------ reading (eq. 1-2)
    def read(self, queries: Tensor, classes: Tensor, *, return_weights: bool = False) -> Tensor | MemoryRead:
        """Read the bank of ``classes[i]`` for ``queries[i]`` (eq. 1-2, 14-15).

        Args:
            queries: [B, D] features; gradients flow back into them.
            classes: [B] bank to read for each query.
            return_weights: also return the normalised weights and slots (for plots).
        Returns:
            scores [B], or a :class:`MemoryRead` (scores [B], weights [B, top_n], slots [B, top_n]).
        In training mode with grad enabled the slots read are recorded for :meth:`step` (and kept
        until it runs); use ``memory.eval()`` or ``torch.no_grad()`` to only look.

        Taught in notebook 02, *Inflated Episodic Memory*.
        """
        queries, query_bound = self._checked_keys(queries, "queries")
        classes = check_labels(classes, self.num_classes, len(queries), "classes", self.device)
        dtype = read_dtype(query_bound, self, self.top_n, self.delta)
        slots = nearest_slots(self, queries.detach(), classes, self.top_n, dtype)  # [B, n] top-n of own bank
        valid = slots >= 0                                                        # [B, n]; -1: a small bank
        used, inverse = torch.unique(slots[valid], return_inverse=True)           # [u], [#valid]
        if used.numel() == 0:
            return _read_result(queries.new_zeros(len(queries)), queries.new_zeros(slots.shape), slots, return_weights)
        rows = torch.zeros_like(slots)
        rows[valid] = inverse                                                     # [B, n] row in `used`
        keys, values = self.keys.index_select(0, used), self.values.index_select(0, used)  # copies: [u, D], [u]
        if self.training and torch.is_grad_enabled():                             # what step() will train
            keys, values = self.adam.record(used, self.index.generation[used.cpu().numpy()], keys, values)
        nearest = keys.to(dtype).index_select(0, rows.flatten()).view(*rows.shape, -1)   # [B, n, D]
        distance = (queries.to(dtype).unsqueeze(1) - nearest).square().sum(-1)         # ||q - k||^2, [B, n]
        similarity = torch.where(valid, 1.0 / (distance + self.delta), 0.0)            # eq. 2
        total = similarity.sum(1, keepdim=True)                                         # [B, 1]
        weights = similarity / torch.where(total > 0, total, 1.0)                       # an empty bank keeps 0
        scores = (weights * values.to(dtype)[rows]).sum(1)                              # eq. 1, [B]
        return _read_result(scores.to(queries.dtype), weights.to(queries.dtype), slots, return_weights)

    def read_all(self, queries: Tensor) -> Tensor:
        """Read every bank for every query (Section 3.3, inference): scores [B, C] (0 for empty banks).

        No side effects on the banks; differentiable with respect to the queries only. The
        first call after a change packs the banks class-contiguously (a copy of the keys, kept
        until the next write, step or load), so repeated inference reads need no gather.

        Taught in notebook 02, *Inflated Episodic Memory*.
        """
        queries, query_bound = self._checked_keys(queries, "queries")
        dtype = read_dtype(query_bound, self, self.top_n, self.delta)
        if self.packed is None or self.packed.dtype != dtype:
            self.packed = pack_banks(self, self.top_n, dtype)
        return read_packed(queries, self.packed, self.num_classes, self.top_n, self.delta, self.chunk_elements)

    # ------------------------------------------------------------------ writing (eq. 3-4)
    @torch.no_grad()
    def write(self, keys: Tensor, values: Tensor, labels: Tensor) -> None:
        """Append (key, value) pairs to the banks of ``labels``; duplicates update their value (eq. 3-4).

        Args:
            keys: [B, D] finite features (detached; writing is not differentiable).
            values: [B] finite scores, e.g. the classifier's confidence for the true class (Section 3.3).
            labels: [B] integer classes in [0, num_classes).

        Taught in notebook 02, *Inflated Episodic Memory*.
        """
        keys = self._checked_keys(keys, "keys")[0].detach() + 0.0     # + 0.0 turns -0.0 into 0.0
        values = torch.as_tensor(values)
        if values.shape != (len(keys),) or not values.is_floating_point() or not bool(torch.isfinite(values).all()):
            raise ValueError(f"values must be a finite float tensor of shape [{len(keys)}], got "
                             f"{values.dtype} {tuple(values.shape)}")
        labels = check_labels(labels, self.num_classes, len(keys), "labels", self.device)
        if len(keys) == 0:
            return
        self.reserve(self.num_slots + len(keys))
        key_ids = self.key_ids(keys, labels)
        slot_values = self.values_of(key_ids)   # {slot: value} of every slot this call changes
        placed: dict[int, int] = {}             # slot -> batch row whose key it now holds
        index, gamma = self.index, self.gamma   # locals: the loop runs once per item
        for row, (key_id, value) in enumerate(zip(key_ids, values.to(self.values.dtype).tolist())):
            slot = index.find(key_id)
            if slot is not None:   # "the new key is not appended. Meanwhile, its corresponding value is updated"
                slot_values[slot] = float(np.float32(gamma * value + (1.0 - gamma) * slot_values[slot]))
                index.touch(key_id[0], slot)                            # eq. 4
            else:                  # eq. 3: appended, or into the slot of the oldest pair of a full bank
                slot = index.place(key_id)
                slot_values[slot], placed[slot] = value, row
        self.store(keys, placed, slot_values)

    # ------------------------------------------------------------------ training (eq. 5, 14-16; 4.2)
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the recorded reads (the records stay until :meth:`step`)."""
        self.adam.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self) -> int:
        """Lazy Adam on the slots read since the last step (Section 4.2); returns how many slots moved.

        Same arithmetic as ``torch.optim.SparseAdam`` on the rows read. Slots evicted since their
        read are skipped. The moved slots are re-indexed and touched (age reset). A non-finite
        gradient raises ``ValueError`` and changes nothing (the records are forgotten).
        """
        gradients = self.adam.take_gradients(self.index.generation)
        if gradients is None:
            return 0
        slots, key_grad, value_grad = gradients                      # [u], [u, D], [u]
        if not (bool(torch.isfinite(key_grad).all()) and bool(torch.isfinite(value_grad).all())):
            raise ValueError("EpisodicMemory.step: the gradient of the memory slots read is non-finite (NaN or "
                             "inf); no key, value or Adam moment was changed")
        self.adam.update_(slots, (self.keys, self.key_exp_avg, self.key_exp_avg_sq, key_grad),
                          (self.values, self.value_exp_avg, self.value_exp_avg_sq, value_grad),
                          chunk_elements=self.row_chunk_elements)
        self.moved(slots)
        return len(slots)

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "adam_step": self.adam.steps}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.adam = LazyAdam(self.adam.lr, self.adam.betas, self.adam.eps)
        self.adam.steps = check_int("adam_step", state.get("adam_step"), 0)

    def save(self, path: str | os.PathLike) -> None:
        """Write configuration and full state (keys, values, ages, Adam) atomically to ``path``.

        The file holds only dicts, tensors, ints, floats, tuples and strings: ``torch.load(path,
        weights_only=True)`` reads it."""
        atomic_save({"format": _FILE_FORMAT, "config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "EpisodicMemory":
        """Rebuild a memory written by :meth:`save`; reads are bit-identical to the saved one's.

        The state is checked against the configuration (finite, banks within capacity, consistent)."""
        payload = safe_load(path, what="episodic memory", map_location=device)
        found = payload.get("format") if isinstance(payload, dict) else None
        if found not in _READABLE_FORMATS:
            raise ValueError(f"episodic memory file {path} has format {found!r}; this version of ltcore reads "
                             f"{' and '.join(map(repr, _READABLE_FORMATS))} (files written by EpisodicMemory.save)")
        try:
            memory = cls(**payload["config"], device=device)
            memory.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise ValueError(f"episodic memory file {path} is corrupt: {exc}") from exc
        return memory

    # ------------------------------------------------------------------ input checks
    def _checked_keys(self, x: Tensor, name: str) -> tuple[Tensor, float]:
        """``x`` [B, D] on the memory's device and dtype, with its largest |coordinate|; finite or refused."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.key_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a [B, {self.key_dim}] tensor, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
        bound = float(x.detach().abs().amax()) if x.numel() else 0.0   # NaN and inf propagate
        if not math.isfinite(bound):
            raise ValueError(f"{name} contain NaN or infinite values")
        return x.to(device=self.device, dtype=self.keys.dtype), bound


def _read_result(scores: Tensor, weights: Tensor, slots: Tensor, return_weights: bool) -> Tensor | MemoryRead:
    return MemoryRead(scores, weights, slots) if return_weights else scores
