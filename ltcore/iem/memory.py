"""Inflated Episodic Memory (IEM): one growing key-value bank per class.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed
Visual Recognition", CVPR 2020. Section 3.1 (banks, reading eq. 1-2, writing eq. 3-4, MSE
loss eq. 5), Section 3.3 (a global and a local memory, READ of the positive and the hard
negative bank eq. 14-16, reading all banks at inference), Section 4.2 (top-n = 50, capacity
50,000, gamma = 0.99, memory trained by Adam with lr 1e-5). The age vector comes from
Kaiser et al., "Learning to remember rare events", ICLR 2017 (the paper's [15]).

One :class:`EpisodicMemory` holds one *kind* of bank for every class; the IEM classifier
builds two (global and local). Keys are feature vectors ``[D]``; a value is one scalar,
"the probability of the features belonging to category l".

Storage layout
--------------
* A shared pool of slots: ``keys [P, D]``, ``values [P]`` and their Adam moments, grown by
  doubling (an amortised copy), never pre-allocated per class. A slot belongs to one class
  for its whole life: eviction reuses the evicted slot for the newcomer of the same class.
* ``bank_table [C, W]``: slot ids of each bank in append order, padded with -1;
  ``W`` (the largest bank, at most ``capacity``) also grows by doubling.
* On the Python side: an exact-key index ``{(class, fingerprint): slot}`` and, per class,
  the slots from least to most recently touched (the age vector, see below).
* Memory cost: 3 floats per key coordinate (key, two Adam moments), 8 bytes per padded
  table cell, and during inference :meth:`read_all`'s packed copy of the keys. ImageNet-LT
  at full capacity (1000 x 50,000 slots x 512) would need ~300 GB, which is why the paper's
  capacity is a limit, not an allocation. Training still fills the banks: every step writes
  its batch, and the features of an augmented image from a changing backbone are never an
  exact duplicate, so after E epochs a bank holds ``min(capacity, n_c * E * keys per image)``
  slots (:func:`projected_bank_sizes`, :meth:`EpisodicMemory.slot_bytes`). The paper's
  ImageNet-LT run (30 epochs, 115,846 images, none of whose classes reaches 50,000 slots)
  ends with 3,475,380 global slots: 21 GB of float32 at 512 dimensions.

Reading (eq. 1-2)
-----------------
``p = sum_i s(q, k_i) v_i / sum_i s(q, k_i)`` with ``s(a, b) = 1 / (||a - b||^2 + delta)``
over the top-n nearest keys of the bank (a bank with fewer than n slots uses all of them).
An empty bank reads as score 0 with all weights 0 (our choice; the paper never reads one).
An exact float32 tie between the n-th and (n+1)-th distance is broken by ``torch.topk``.
Neither read loops in Python over queries or classes; the only loops are over padded bank
widths (sizes rounded up to 8 steps per power of two: at most 12.5% padding, a handful of
widths in practice, at most 8 per doubling of the bank size), for :meth:`read` also over
query counts per bank rounded up to a power of two, and over chunks that keep the
temporaries under 64 MB (except the keys of a single bank, which :meth:`read` gathers whole:
100 MB for a full bank of 50,000 x 512).

* :meth:`read` (training, eq. 14-15; one bank per query): each query is compared with its
  own bank only. Queries are grouped by bank; banks of one padded width and one padded
  query count (a power of two) are read together by one batched matrix product
  (``[m, h, D] @ [m, D, w]``) and one ``topk``; then the n selected distances are
  recomputed directly as ``||q - k||^2`` (they are back-propagated through, see Training).
* :meth:`read_all` (inference, Section 3.3; every bank for every query): the banks of more
  than top_n slots are grouped by padded width and packed bank after bank (``[C_w * w, D]``,
  cached until the next change); each group is read with one matrix product
  ``||q||^2 + ||k||^2 - 2 q.k`` (``[B, D] @ [D, C_w * w]``, viewed as ``[B, C_w, w]``) and one
  ``topk`` along the bank. The banks of at most top_n slots (the tail classes) have nothing to
  select: they are packed together unpadded, whatever their sizes, and read with one matrix
  product (``[S, D] @ [D, B]``) and two ``index_add_`` sums for eq. 1. This matters for small
  inference batches, where a group's dozen tensor operations cost more than its arithmetic.
  (On a GPU ``index_add_`` adds in a varying order, so these scores can differ between runs
  by float rounding unless ``torch.use_deterministic_algorithms(True)`` is set.)
  Its float32 rounding is ~1e-7 (||q||^2 + ||k||^2), so it agrees with :meth:`read` to
  ~1e-6 on unit-scale features (up to exact or near ties at the n-th neighbour).

Our reading: "We leverage kd-tree [3] to build indices ... fast retrieval". We search
exactly by brute force instead: the same top-n, and what GPUs and faiss' ``IndexFlatL2`` do
at these dimensions (``python -m ltcore bench memory`` compares with faiss). The cost of
:meth:`read` grows with the size of each query's own bank, that of :meth:`read_all` with the
whole memory.

Writing (eq. 3-4)
-----------------
New (key, value) pairs are appended to the bank of their label. "If the key has already
existed in the memory, the new key is not appended. Meanwhile, its corresponding value is
updated": ``v <- gamma * v_new + (1 - gamma) * v_old`` -- eq. 4 as printed, so ``gamma``
(0.99) weighs the NEW value. Our reading of "already existed": exactly equal float32 key in
the bank of the same label (``-0.0`` equals ``0.0``). Equality is decided through a 120-bit
fingerprint of the key's bit pattern (six multilinear hashes of its 16-bit halves modulo the
prime 2^20 - 3, computed exactly as one float64 matrix product; universal hashing: two
different keys collide with probability ~2^-120), so finding a duplicate costs O(D), not a
scan of the bank. Items of one write call are processed in batch order, exactly as if
written one by one, so duplicates inside a batch are merged too (each eq. 4 update is
computed in float64 and stored as float32). Writing costs O(batch): dictionary updates per
item plus a few scatters, whatever the bank size.

Eviction (the age vector)
-------------------------
Paper: "When the memory's maximum capacity is reached, the oldest key-value pair is deleted.
The oldest key-value pair is the least frequently accessed slot. We use an age vector to
record the access frequency for each memory slot, following [15]."
Our reading, Kaiser et al.'s age: a slot's age is the time since it was last *touched*, and
the oldest slot is replaced. A slot is touched when it is written (appended, or updated as a
duplicate) and when :meth:`step` updates it (it was read in training and got a gradient --
Kaiser et al. reset the age of the neighbour they update). Rule with a deterministic
tie-break instead of Kaiser's random one: each bank orders its slots from least to most
recently touched; a write touches its items in batch order, a :meth:`step` touches its slots
in the order they were first written; a new key for a full bank replaces the first slot in
that order (:meth:`eviction_order`). Kept as an ordered dict per bank, so eviction is O(1).

Training (eq. 5, 14-16; Section 4.2)
------------------------------------
Keys and values are trained with their own lazy Adam (lr 1e-5) while the backbone uses SGD.
A :meth:`read` in training mode (``memory.train()``) with grad enabled gathers the selected
slots into fresh leaf tensors and records them; gradients reach those leaves (and the
queries, so the backbone learns through the memory loss), never the whole pool. :meth:`step`
applies Adam to exactly the recorded slots (the arithmetic of ``torch.optim.SparseAdam``: the
moments of rows not read are left alone; one step counter per memory), re-indexes their
moved keys and touches them, then forgets the records. ``memory.eval()`` or
``torch.no_grad()`` reads record nothing and change nothing. How the IEM classifier calls it::

    p_pos = memory.read(features, labels)          # eq. 14, records the slots read
    p_neg = memory.read(features, hard_negatives)  # eq. 15
    loss = ce + mse(p_pos, 1) + mse(p_neg, 0)      # eq. 16
    sgd.zero_grad(); memory.zero_grad()            # zero_grad clears gradients, keeps the records
    loss.backward()
    sgd.step(); memory.step()                      # lazy Adam on the slots read, then forget them
    memory.write(features.detach(), confidences.detach(), labels)   # eq. 3-4, Section 3.3

With ``ltcore.train.fit``, return ``MemoryOptimizer(global_memory, local_memory)`` among the
optimizers: the trainer's zero_grad/backward/step order above is then respected. A write
between a read and :meth:`step` is safe: a slot evicted meanwhile drops its stale gradient.

Taught in notebook 02, *Inflated Episodic Memory*.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcore.io import atomic_save, safe_load

__all__ = ["EpisodicMemory", "MemoryRead", "MemoryOptimizer", "projected_bank_sizes"]

_FILE_FORMAT = "ltcore.memory.EpisodicMemory/1"
_POOL_BUFFERS = ("keys", "values", "key_exp_avg", "key_exp_avg_sq", "value_exp_avg", "value_exp_avg_sq")
_MOMENT_BUFFERS = _POOL_BUFFERS[2:]
_CHUNK_ELEMENTS = 1 << 24  # bound on the temporaries of one read chunk (64 MB of float32)
# Row-wise passes over many slots (step's Adam, fingerprints) go in chunks of this many elements on a
# CPU: temporaries of 256 KB stay in the cache and the allocator reuses them, where [u, D] temporaries
# are page-faulted anew by every operation (4-8x slower, measured on 20k slots of 128 and 512 dims).
# A GPU has no such cost per temporary and pays a launch per operation: it takes _CHUNK_ELEMENTS.
_CPU_ROW_CHUNK_ELEMENTS = 1 << 16
_FINGERPRINT_PRIME = (1 << 20) - 3   # prime; six hashes modulo it make a 120-bit fingerprint
_FINGERPRINT_SEED = 20200614
_MAX_KEY_DIM = 1 << 15  # 2D digits |d| <= 2^15 times multipliers < 2^20 sum below 2^51: exact in float64
# Host memory of one slot besides its tensors: exact-key index entry, key id, age order entry,
# insert_seq (measured with tracemalloc on CPython 3.11: 319 bytes on 200,000 slots).
_PYTHON_BYTES_PER_SLOT = 320


class MemoryRead(NamedTuple):
    """Result of ``read(..., return_weights=True)``; padding (a bank smaller than top_n) has slot -1, weight 0."""

    scores: Tensor   # [B] eq. 1
    weights: Tensor  # [B, top_n] normalised eq. 2 weights, each row sums to 1 (0 for an empty bank)
    slots: Tensor    # [B, top_n] pool slots read, nearest first


class _PackedBanks(NamedTuple):
    """Banks of one padded width (more than top_n slots), copied class-contiguously for ``read_all``."""

    classes: Tensor  # [C_g]
    keys: Tensor     # [C_g * w, D], bank after bank
    key_sq: Tensor   # [C_g * w] squared key norms, inf in the padding
    values: Tensor   # [C_g, w]


class _WholeBanks(NamedTuple):
    """Every non-empty bank of at most top_n slots (read whole), copied bank after bank, unpadded."""

    classes: Tensor       # [C_s]
    keys: Tensor          # [S, D]
    key_sq: Tensor        # [S, 1] squared key norms
    values: Tensor        # [S, 1]
    bank_of_slot: Tensor  # [S] position of each slot's bank in ``classes``


@dataclass
class _RecordedRead:
    """Slots gathered by one training read, with the leaf tensors that collect their gradients."""

    slots: Tensor            # [u] pool slots, on the memory's device
    generation: np.ndarray   # [u] their write sequence numbers at read time (detects eviction)
    keys: Tensor             # [u, D] leaf
    values: Tensor           # [u] leaf


class EpisodicMemory(nn.Module):
    """Per-class key-value banks with top-n inverse-distance reads (Section 3.1).

    Args:
        num_classes: number of banks C.
        key_dim: key dimension D.
        capacity: maximum slots per bank (paper: 50,000).
        top_n: neighbours per read (paper: 50).
        delta: the ``delta`` of eq. 2.
        gamma: eq. 4 momentum; weighs the new value (paper: 0.99).
        lr, betas, eps: the memory's Adam (paper: Adam, lr 1e-5).
        device: where the banks live; ``.to(device)`` moves them later.

    Taught in notebook 02, *Inflated Episodic Memory*.
    """

    def __init__(self, num_classes: int, key_dim: int, capacity: int = 50000, top_n: int = 50,
                 delta: float = 1e-3, gamma: float = 0.99, *, lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 device: torch.device | str | None = None):
        super().__init__()
        _check_int("num_classes", num_classes, 1)
        _check_int("key_dim", key_dim, 1, _MAX_KEY_DIM)
        _check_int("capacity", capacity, 1)
        _check_int("top_n", top_n, 1)
        if not delta > 0:
            raise ValueError(f"delta must be > 0 (it keeps eq. 2 finite), got {delta}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if not lr >= 0 or not eps > 0 or len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        self.num_classes, self.key_dim, self.capacity, self.top_n = num_classes, key_dim, capacity, top_n
        self.delta, self.gamma = float(delta), float(gamma)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)

        for name in _POOL_BUFFERS:
            shape = (0, key_dim) if name.startswith("key") else (0,)
            self.register_buffer(name, torch.zeros(shape, device=device))
        self.register_buffer("bank_table", torch.full((num_classes, 0), -1, dtype=torch.long, device=device))
        generator = torch.Generator().manual_seed(_FINGERPRINT_SEED)
        multipliers = torch.randint(1, _FINGERPRINT_PRIME, (2 * key_dim, 6), generator=generator)
        self.register_buffer("_fingerprint_multipliers", multipliers.to(device), persistent=False)

        self._num_slots = 0          # slots 0 .. _num_slots-1 of the pool are in use
        self._adam_step = 0
        self._next_seq = 0           # write sequence number: generation and tie-break of each slot
        self._insert_seq = np.zeros(0, dtype=np.int64)             # [P]
        self._slot_key_id: list[tuple[int, int, int]] = []          # slot -> (class, fingerprint)
        self._index: dict[tuple[int, int, int], int] = {}           # (class, fingerprint) -> slot
        self._age_order = [OrderedDict() for _ in range(num_classes)]  # least recently touched first
        self._recorded: list[_RecordedRead] = []
        # read_all's layout, None after any change: the small banks, and the others by padded width
        self._packed: tuple[_WholeBanks | None, list[_PackedBanks]] | None = None

    # ------------------------------------------------------------------ inspection
    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def num_slots(self) -> int:
        """Slots in use over all banks."""
        return self._num_slots

    @property
    def config(self) -> dict:
        """Constructor arguments (saved with the memory)."""
        return dict(num_classes=self.num_classes, key_dim=self.key_dim, capacity=self.capacity,
                    top_n=self.top_n, delta=self.delta, gamma=self.gamma, lr=self.lr,
                    betas=self.betas, eps=self.eps)

    def bank_size(self, c: int) -> int:
        """Number of slots in the bank of class ``c``."""
        return len(self._age_order[self._check_class(c)])

    def bank_sizes(self, classes: Sequence[int] | None = None) -> np.ndarray:
        """Number of slots per bank: [C], or [len(classes)] for the given classes."""
        orders = self._age_order if classes is None else [self._age_order[c] for c in classes]
        return np.fromiter((len(order) for order in orders), dtype=np.int64, count=len(orders))

    def slot_bytes(self) -> tuple[int, int]:
        """(device, host) bytes one slot takes: its key, value and their Adam moments (float32) plus
        its bank-table cell on the memory's device; the Python index on the host. The pool and
        table grow by doubling, so up to twice as much may be allocated."""
        return 4 * 3 * (self.key_dim + 1) + self.bank_table.element_size(), _PYTHON_BYTES_PER_SLOT

    def bank(self, c: int) -> tuple[Tensor, Tensor, Tensor]:
        """Slots [L], keys [L, D] and values [L] of bank ``c`` in append order (copies)."""
        slots = self.bank_table[self._check_class(c), : self.bank_size(c)].clone()
        return slots, self.keys[slots].clone(), self.values[slots].clone()

    def eviction_order(self, c: int) -> list[int]:
        """Slots of bank ``c`` from least to most recently touched: the first is evicted next."""
        return list(self._age_order[self._check_class(c)])

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, key_dim={self.key_dim}, capacity={self.capacity}, "
                f"top_n={self.top_n}, slots={self._num_slots}")

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
        queries = self._check_keys(queries, "queries")
        classes = self._check_labels(classes, len(queries), "classes")
        slots = self._nearest_slots(queries.detach(), classes)
        scores, weights = self._weighted_read(queries, slots)
        return MemoryRead(scores, weights, slots) if return_weights else scores

    def read_all(self, queries: Tensor) -> Tensor:
        """Read every bank for every query (Section 3.3, inference): scores [B, C] (0 for empty banks).

        No side effects on the banks; differentiable with respect to the queries only. The
        first call after a change packs the banks class-contiguously (a copy of the keys, kept
        until the next write, step or load), so repeated inference reads need no gather.

        Taught in notebook 02, *Inflated Episodic Memory*.
        """
        queries = self._check_keys(queries, "queries")
        scores = queries.new_zeros(len(queries), self.num_classes)  # [B, C]
        query_sq = queries.square().sum(1, keepdim=True)             # [B, 1]
        whole_banks, width_groups = self._packed_banks()
        if whole_banks is not None:
            self._read_whole_banks(queries, query_sq, whole_banks, scores)
        for bank in width_groups:
            num_banks, width = bank.values.shape
            rows_per_chunk = max(1, min(len(queries), _CHUNK_ELEMENTS // width))
            classes_per_chunk = max(1, _CHUNK_ELEMENTS // (width * rows_per_chunk))
            for first in range(0, num_banks, classes_per_chunk):
                part = slice(first, first + classes_per_chunk)
                values = bank.values[part]                                     # [c, w]
                columns = slice(first * width, first * width + values.numel())
                keys, key_sq = bank.keys[columns], bank.key_sq[columns]        # [c * w, D], [c * w]
                for start in range(0, len(queries), rows_per_chunk):
                    q = queries[start: start + rows_per_chunk]                 # [b, D]
                    # ||q||^2 + ||k||^2 - 2 q.k, one matrix product for all c banks:
                    # [b, D] @ [D, c * w] -> [b, c, w]; padding: inf
                    dist = torch.addmm(key_sq, q, keys.T, alpha=-2).add_(query_sq[start: start + len(q)])
                    dist = dist.clamp_min_(0).view(len(q), *values.shape)
                    dist, top_pos = dist.topk(self.top_n, dim=-1, largest=False, sorted=False)  # [b, c, n]
                    read_values = values.expand(len(q), -1, -1).gather(-1, top_pos)        # [b, c, n]
                    similarity = dist.add_(self.delta).reciprocal_()                      # eq. 2; padding: 0
                    read = (similarity * read_values).sum(-1) / similarity.sum(-1)        # eq. 1, [b, c]
                    scores[start: start + len(q), bank.classes[part]] = read
        return scores

    def _read_whole_banks(self, queries: Tensor, query_sq: Tensor, banks: _WholeBanks, scores: Tensor) -> None:
        """``read_all`` on the banks of at most top_n slots: every slot is read, so nothing is selected.

        One matrix product for all these banks, whatever their sizes, then eq. 1's two sums per bank
        by ``index_add_`` (slots along rows, so that each sum adds contiguous rows). Writes ``scores``.
        """
        rows_per_chunk = max(1, min(len(queries), _CHUNK_ELEMENTS // len(banks.values)))
        for start in range(0, len(queries), rows_per_chunk):
            q, q_sq = queries[start: start + rows_per_chunk], query_sq[start: start + rows_per_chunk]  # [b, D], [b, 1]
            rows = len(q)
            if rows == 1:
                # One query is read as two: MKL's two-column product streams the keys ~2.5x faster than its
                # matrix-vector product on this repository's CPU (0.65 against 1.6 ms for 20k x 128 keys,
                # caches cold). Both read the keys once, so it costs little where the vector kernel is good.
                q, q_sq = q.repeat(2, 1), q_sq.expand(2, -1)
            # in place throughout: each fresh [S, b] temporary would cost page faults on top of its pass
            dist = torch.addmm(banks.key_sq, banks.keys, q.T, alpha=-2).add_(q_sq.T)           # [S, D] @ [D, b]
            similarity = dist.clamp_min_(0).add_(self.delta).reciprocal_()                     # eq. 2, [S, b]
            sums = similarity.new_zeros(2, len(banks.classes), len(q))                         # [2, C_s, b]
            sums[1].index_add_(0, banks.bank_of_slot, similarity)
            # autograd needs the similarities themselves (reciprocal's backward) when the queries require grad
            weighted = similarity * banks.values if similarity.requires_grad else similarity.mul_(banks.values)
            sums[0].index_add_(0, banks.bank_of_slot, weighted)
            scores[start: start + rows, banks.classes] = (sums[0] / sums[1]).T[:rows]        # eq. 1, [b, C_s]

    def _packed_banks(self) -> tuple[_WholeBanks | None, list[_PackedBanks]]:
        """Non-empty banks copied class-contiguously (cached until a change): the banks of at most
        top_n slots together, unpadded; the others grouped by padded width."""
        if self._packed is None:
            num_slots = self._num_slots
            sizes = self.bank_sizes()
            key_sq = F.pad(self.keys[:num_slots].square().sum(1), (0, 1), value=math.inf)  # [N + 1]: slot N pads
            values = F.pad(self.values[:num_slots], (0, 1))                                  # [N + 1]
            whole_banks = None
            small = np.flatnonzero((sizes > 0) & (sizes <= self.top_n))
            if len(small):
                table = self.bank_table[torch.from_numpy(small).to(self.device), :int(sizes[small].max())]
                slots = table[table >= 0]                                 # [S], bank after bank (row-major)
                bank_of_slot = torch.from_numpy(np.repeat(np.arange(len(small)), sizes[small])).to(self.device)
                whole_banks = _WholeBanks(torch.from_numpy(small).to(self.device), self.keys[slots],
                                          key_sq[slots].unsqueeze(1), values[slots].unsqueeze(1), bank_of_slot)
            widths = _padded_widths(sizes, self.bank_table.shape[1])
            widths[sizes <= self.top_n] = 0
            width_groups = []
            for width in np.unique(widths[widths > 0]).tolist():
                classes = torch.from_numpy(np.flatnonzero(widths == width)).to(self.device)
                table = self.bank_table[classes, :width]                  # [C_g, w] slots, -1 padded
                table = table.masked_fill(table < 0, num_slots).flatten()  # [C_g * w]
                width_groups.append(_PackedBanks(
                    classes, self.keys[table.clamp_max(num_slots - 1)],  # [C_g * w, D]; padding copies a key ...
                    key_sq[table], values[table].view(len(classes), width)))  # ... made infinitely far by key_sq
            self._packed = whole_banks, width_groups
        return self._packed

    def _nearest_slots(self, queries: Tensor, classes: Tensor) -> Tensor:
        """[B, top_n] slots of the top-n nearest keys in each query's bank, nearest first, -1 padded.

        Each query is compared with its own bank only. Queries are grouped by bank, and banks of
        the same padded width and padded query count are read together with one batched matrix
        product ``[m, h, D] @ [m, D, w]`` (m banks, up to h queries each, w slots each).
        """
        slots = torch.full((len(queries), self.top_n), -1, dtype=torch.long, device=self.device)
        classes_np = classes.cpu().numpy()
        order = np.argsort(classes_np, kind="stable")                  # queries sorted by bank
        banks, first, counts = np.unique(classes_np[order], return_index=True, return_counts=True)  # [U] x3
        sizes = self.bank_sizes(banks.tolist())                         # [U], not all C
        if len(queries) == 0 or sizes.max() == 0:
            return slots
        rank = np.arange(len(order)) - np.repeat(first, counts)        # rank of a query within its bank
        bank_of_sorted = np.repeat(np.arange(len(banks)), counts)      # position in `banks` of each sorted query
        widths = _padded_widths(sizes, self.bank_table.shape[1])       # [U]
        heights = 1 << np.ceil(np.log2(counts)).astype(np.int64)       # query counts padded to a power of 2
        for width, height in sorted(set(zip(widths.tolist(), heights.tolist()))):
            if width == 0:
                continue                                               # empty banks: slots stay -1
            group = np.flatnonzero((widths == width) & (heights == height))   # [m] positions in `banks`
            # query rows of the group: [m, height], -1 padded
            rows = np.full((len(group), height), -1, dtype=np.int64)
            member = np.isin(bank_of_sorted, group)
            rows[np.searchsorted(group, bank_of_sorted[member]), rank[member]] = order[member]
            rows = torch.from_numpy(rows).to(self.device)
            rows_per_chunk = max(1, min(height, _CHUNK_ELEMENTS // width))
            banks_per_chunk = max(1, _CHUNK_ELEMENTS // (width * max(rows_per_chunk, self.key_dim)))
            for part in range(0, len(group), banks_per_chunk):
                part_banks = torch.from_numpy(banks[group[part: part + banks_per_chunk]]).to(self.device)
                table = self.bank_table[part_banks, :width]                         # [m, w] slots, -1 padded
                keys = self.keys.index_select(0, table.clamp_min(0).flatten()).view(*table.shape, -1)  # [m, w, D]
                key_sq = keys.square().sum(-1).masked_fill(table < 0, math.inf)     # [m, w]; padding: inf
                for start in range(0, height, rows_per_chunk):
                    part_rows = rows[part: part + banks_per_chunk, start: start + rows_per_chunk]  # [m, h]
                    own_queries = queries.index_select(0, part_rows.clamp_min(0).flatten()).view(*part_rows.shape, -1)
                    # ||k||^2 - 2 q.k ranks keys like ||q - k||^2 (||q||^2 is constant along a row)
                    # [m, h, D] @ [m, D, w] -> [m, h, w]; padding rows repeat query 0 and are dropped below
                    dist = torch.baddbmm(key_sq.unsqueeze(1), own_queries, keys.transpose(1, 2), alpha=-2)
                    nearest = dist.topk(min(self.top_n, width), dim=-1, largest=False).indices    # [m, h, k]
                    found = table.unsqueeze(1).expand(-1, part_rows.shape[1], -1).gather(-1, nearest)  # [m, h, k]
                    real = part_rows >= 0                                                         # [m, h]
                    slots[part_rows[real], : nearest.shape[-1]] = found[real]  # -1 where a small bank pads
        return slots

    def _weighted_read(self, queries: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 1-2 on the selected slots [B, n]: scores [B] and normalised weights [B, n]."""
        valid = slots >= 0                                           # [B, n]
        used, inverse = torch.unique(slots[valid], return_inverse=True)  # [u], [#valid]
        if used.numel() == 0:
            return queries.new_zeros(len(queries)), queries.new_zeros(slots.shape)
        rows = torch.zeros_like(slots)
        rows[valid] = inverse                                        # [B, n] row of each slot in `used`
        keys, values = self.keys.index_select(0, used), self.values.index_select(0, used)  # copies: [u, D], [u]
        if self.training and torch.is_grad_enabled():
            keys.requires_grad_(True)
            values.requires_grad_(True)
            self._recorded.append(_RecordedRead(used, self._insert_seq[used.cpu().numpy()], keys, values))
        diff = queries.unsqueeze(1) - keys.index_select(0, rows.flatten()).view(*rows.shape, -1)  # [B, n, D]
        similarity = torch.where(valid, 1.0 / (diff.square().sum(-1) + self.delta), 0.0)  # eq. 2, [B, n]
        total = similarity.sum(1, keepdim=True)                      # [B, 1]
        weights = similarity / torch.where(total > 0, total, 1.0)    # an empty bank keeps weights 0
        return (weights * values[rows]).sum(1), weights              # eq. 1, [B]

    # ------------------------------------------------------------------ writing (eq. 3-4)
    @torch.no_grad()
    def write(self, keys: Tensor, values: Tensor, labels: Tensor) -> None:
        """Append (key, value) pairs to the banks of ``labels``; duplicates update their value (eq. 3-4).

        Args:
            keys: [B, D] finite features (detached; writing is not differentiable).
            values: [B] scores, e.g. the classifier's confidence for the true class (Section 3.3).
            labels: [B] integer classes in [0, num_classes).

        Taught in notebook 02, *Inflated Episodic Memory*.
        """
        keys = self._check_keys(keys, "keys").detach() + 0.0        # + 0.0 turns -0.0 into 0.0
        values = self._check_vector(values, len(keys), "values")
        labels = self._check_labels(labels, len(keys), "labels")
        if len(keys) == 0:
            return
        self._grow_pool(self._num_slots + len(keys))
        key_ids = self._key_ids(keys, labels)
        known = sorted({self._index[k] for k in key_ids if k in self._index})
        slot_values = dict(zip(known, self.values[known].tolist()))  # value of every slot this call changes
        placed: dict[int, int] = {}                   # slot -> batch row whose key it now holds
        appended: list[tuple[int, int, int]] = []     # (class, position in bank, slot)
        num_slots, next_seq = self._num_slots, self._next_seq  # locals: nn.Module attribute writes are slow
        for row, (key_id, new_value) in enumerate(zip(key_ids, values.tolist())):
            age_order = self._age_order[key_id[0]]
            slot = self._index.get(key_id)
            if slot is not None:                      # eq. 4: not appended, value updated
                slot_values[slot] = float(np.float32(self.gamma * new_value + (1.0 - self.gamma) * slot_values[slot]))
                age_order.move_to_end(slot)
                continue
            if len(age_order) < self.capacity:        # eq. 3: append
                slot, num_slots = num_slots, num_slots + 1
                self._slot_key_id.append(key_id)
                appended.append((key_id[0], len(age_order), slot))
            else:                                     # full: replace the oldest slot
                slot, _ = age_order.popitem(last=False)
                self._unindex(slot)
                self._slot_key_id[slot] = key_id
            self._index[key_id] = slot
            age_order[slot] = None
            self._insert_seq[slot], next_seq = next_seq, next_seq + 1
            slot_values[slot] = new_value
            placed[slot] = row
        self._num_slots, self._next_seq = num_slots, next_seq
        self._store(keys, placed, slot_values, appended)

    def _store(self, keys: Tensor, placed: dict[int, int], slot_values: dict[int, float],
               appended: list[tuple[int, int, int]]) -> None:
        """Scatter one write call's outcome into the tensors (O(batch))."""
        self._packed = None
        device = self.device
        if placed:
            slots = torch.tensor(list(placed), device=device)
            self.keys.index_copy_(0, slots, keys[torch.tensor(list(placed.values()), device=device)])
            for name in _MOMENT_BUFFERS:             # a new key starts with fresh Adam moments
                getattr(self, name).index_fill_(0, slots, 0.0)
        if slot_values:
            self.values.index_copy_(0, torch.tensor(list(slot_values), device=device),
                                    torch.tensor(list(slot_values.values()), dtype=self.values.dtype, device=device))
        if appended:
            classes, positions, slots = (torch.tensor(column, device=device) for column in zip(*appended))
            self._grow_table(int(positions.max()) + 1)
            self.bank_table[classes, positions] = slots

    def _unindex(self, slot: int) -> None:
        key_id = self._slot_key_id[slot]
        if self._index.get(key_id) == slot:
            del self._index[key_id]

    def _grow_pool(self, needed: int) -> None:
        """Make room for ``needed`` slots by doubling the pool (amortised O(1) per write)."""
        allocated = self.keys.shape[0]
        if needed <= allocated:
            return
        size = max(needed, 2 * allocated, 64)
        for name in _POOL_BUFFERS:
            old = getattr(self, name)
            grown = old.new_zeros((size, *old.shape[1:]))
            grown[: self._num_slots] = old[: self._num_slots]
            setattr(self, name, grown)
        seq = np.zeros(size, dtype=np.int64)
        seq[: self._num_slots] = self._insert_seq[: self._num_slots]
        self._insert_seq = seq

    def _grow_table(self, width: int) -> None:
        """Widen ``bank_table`` to at least ``width`` columns by doubling, capped at ``capacity``."""
        current = self.bank_table.shape[1]
        if width <= current:
            return
        grown = self.bank_table.new_full((self.num_classes, min(self.capacity, max(width, 2 * current, 16))), -1)
        grown[:, :current] = self.bank_table
        self.bank_table = grown

    def _key_ids(self, keys: Tensor, labels: Tensor) -> list[tuple[int, int, int]]:
        """(class, fingerprint high, fingerprint low) per row of ``keys`` [B, D]."""
        halves = self._fingerprints(keys)
        return [(c, a, b) for c, (a, b) in zip(labels.tolist(), halves.tolist())]

    def _fingerprints(self, keys: Tensor) -> Tensor:
        """[B, 2] int64 fingerprints of float32 keys [B, D]: six 20-bit universal hashes, three per column."""
        multipliers = self._fingerprint_multipliers.double()       # [2D, 6], entries < 2^20
        parts = []
        for chunk in keys.split(_rows_per_chunk(keys)):
            digits = chunk.contiguous().view(torch.int16).double()  # [b, D] float32 -> [b, 2D] 16-bit halves
            # [b, 2D] @ [2D, 6] -> [b, 6]; every partial sum is an integer below 2^51 in size: exact
            hashes = torch.remainder(digits @ multipliers, _FINGERPRINT_PRIME).long().view(-1, 2, 3)  # [b, 2, 3]
            parts.append(hashes[..., 0] << 40 | hashes[..., 1] << 20 | hashes[..., 2])  # [b, 2], < 2^60
        return torch.cat(parts) if parts else keys.new_zeros((0, 2), dtype=torch.long)

    # ------------------------------------------------------------------ training (eq. 5, 14-16; 4.2)
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the recorded reads (the records stay until :meth:`step`)."""
        for record in self._recorded:
            for leaf in (record.keys, record.values):
                if set_to_none:
                    leaf.grad = None
                elif leaf.grad is not None:
                    leaf.grad.zero_()

    @torch.no_grad()
    def step(self) -> int:
        """Lazy Adam on the slots read since the last step; returns how many slots moved.

        Same arithmetic as ``torch.optim.SparseAdam`` on the rows read. Slots evicted since
        their read are skipped. The moved slots are re-indexed and touched (age reset).
        """
        records, self._recorded = self._recorded, []
        records = [r for r in records if r.keys.grad is not None or r.values.grad is not None]
        if not records:
            return 0
        slots = torch.cat([r.slots for r in records])
        key_grads = torch.cat([_grad_or_zeros(r.keys) for r in records])       # [sum u, D]
        value_grads = torch.cat([_grad_or_zeros(r.values) for r in records])   # [sum u]
        alive = np.concatenate([self._insert_seq[r.slots.cpu().numpy()] == r.generation for r in records])
        alive = torch.from_numpy(alive).to(self.device)
        used, inverse = torch.unique(slots[alive], return_inverse=True)        # [u]
        if used.numel() == 0:
            return 0
        key_grad = key_grads.new_zeros(len(used), self.key_dim).index_add_(0, inverse, key_grads[alive])
        value_grad = value_grads.new_zeros(len(used)).index_add_(0, inverse, value_grads[alive])
        self._adam_step += 1
        _sparse_adam_(self.keys, self.key_exp_avg, self.key_exp_avg_sq, used, key_grad,
                      self._adam_step, self.lr, self.betas, self.eps)
        _sparse_adam_(self.values, self.value_exp_avg, self.value_exp_avg_sq, used, value_grad,
                      self._adam_step, self.lr, self.betas, self.eps)
        self._reindex_and_touch(used)
        self._packed = None
        return len(used)

    def _reindex_and_touch(self, slots: Tensor) -> None:
        """After keys moved: point the exact-key index at their new fingerprints and reset their age.

        The dictionary and list updates run as ``map`` over whole columns (C loops, no Python
        statement per slot): a step moves tens of thousands of slots.
        """
        order = torch.from_numpy(np.argsort(self._insert_seq[slots.cpu().numpy()], kind="stable")).to(slots.device)
        slots = slots[order]                                       # touched in the order they were first written
        fingerprints = self._fingerprints(self.keys.index_select(0, slots) + 0.0).cpu().numpy()   # [u, 2]
        slot_list = slots.tolist()
        old_ids = list(map(self._slot_key_id.__getitem__, slot_list))
        classes = [key_id[0] for key_id in old_ids]
        new_ids = list(zip(classes, fingerprints[:, 0].tolist(), fingerprints[:, 1].tolist()))
        index = self._index
        held = list(map(index.pop, old_ids, repeat(None)))         # the old entries, normally these slots
        if held != slot_list:   # an entry held by a slot that is not moving (exact collision, below) goes back
            moving = set(slot_list)
            index.update((key_id, holder) for key_id, holder in zip(old_ids, held)
                         if holder is not None and holder not in moving)
        # An exact collision with another key of the bank cannot be excluded in theory
        # (probability ~2^-120); setdefault then leaves the entry to the other slot, nothing is merged.
        _consume(map(index.setdefault, new_ids, slot_list))
        _consume(map(self._slot_key_id.__setitem__, slot_list, new_ids))
        _consume(map(OrderedDict.move_to_end, map(self._age_order.__getitem__, classes), slot_list))

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict:
        """Python-side state; the exact-key index is rebuilt from the keys on load."""
        n = self._num_slots
        return {"num_classes": self.num_classes, "key_dim": self.key_dim, "num_slots": n,
                "adam_step": self._adam_step, "next_seq": self._next_seq,
                "insert_seq": torch.from_numpy(self._insert_seq[:n].copy()),
                "bank_sizes": torch.from_numpy(self.bank_sizes()),
                "age_order": torch.tensor([s for order in self._age_order for s in order], dtype=torch.long)}

    def set_extra_state(self, state: dict) -> None:
        missing = {"num_classes", "key_dim", "num_slots", "adam_step", "next_seq", "insert_seq",
                   "bank_sizes", "age_order"} - set(state)
        if missing:
            raise ValueError(f"episodic memory state lacks {sorted(missing)}")
        if (state["num_classes"], state["key_dim"]) != (self.num_classes, self.key_dim):
            raise ValueError(f"episodic memory state is for {state['num_classes']} classes x {state['key_dim']} "
                             f"dims, this memory has {self.num_classes} x {self.key_dim}")
        n, sizes = int(state["num_slots"]), state["bank_sizes"].tolist()
        table, age_order = self.bank_table.cpu(), state["age_order"].cpu()   # a load may map them to a GPU
        if self.keys.shape[0] != n or sum(sizes) != n or len(age_order) != n or len(sizes) != self.num_classes:
            raise ValueError(f"episodic memory state is inconsistent: {n} slots, {self.keys.shape[0]} keys, "
                             f"bank sizes summing to {sum(sizes)}")
        slot_class = np.full(n, -1, dtype=np.int64)
        orders = age_order.split(sizes)
        for c, (size, order) in enumerate(zip(sizes, orders)):
            row = table[c]
            if (size > len(row) or bool((row[:size] < 0).any()) or bool((row[size:] >= 0).any())
                    or not torch.equal(row[:size].sort().values, order.sort().values)):
                raise ValueError(f"episodic memory state is inconsistent: bank {c} table and age order differ")
            slot_class[row[:size].numpy()] = c
        self._num_slots, self._adam_step, self._next_seq = n, int(state["adam_step"]), int(state["next_seq"])
        self._insert_seq = state["insert_seq"].cpu().numpy().astype(np.int64)
        self._age_order = [OrderedDict.fromkeys(order.tolist()) for order in orders]
        self._slot_key_id = self._key_ids(self.keys[:n] + 0.0, torch.from_numpy(slot_class))
        self._index = {key_id: slot for slot, key_id in enumerate(self._slot_key_id)}
        self._recorded, self._packed = [], None
        if len(self._index) != n:
            raise ValueError("episodic memory state is inconsistent: a bank holds duplicate keys")

    def _apply(self, fn, *args, **kwargs):
        self._packed = None  # .to(), .cuda(), ... move the buffers; the packed copy is rebuilt on demand
        return super()._apply(fn, *args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in _POOL_BUFFERS:  # drop the unused tail of the pool (a slice alone would save it all)
            if destination[prefix + name].shape[0] != self._num_slots:
                destination[prefix + name] = destination[prefix + name][: self._num_slots].clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # The banks may have another size than this module's: adopt the saved number of slots
        # (pool) or width (table), then let nn.Module copy; other shape mismatches stay errors.
        for name in (*_POOL_BUFFERS, "bank_table"):
            incoming, own = state_dict.get(prefix + name), getattr(self, name)
            fixed = (lambda shape: shape[:1]) if name == "bank_table" else (lambda shape: shape[1:])
            if isinstance(incoming, Tensor) and incoming.dim() == own.dim() \
                    and fixed(incoming.shape) == fixed(own.shape):
                self._buffers[name] = torch.empty(incoming.shape, dtype=own.dtype, device=own.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def save(self, path: str | os.PathLike) -> None:
        """Write configuration and full state (keys, values, ages, Adam) atomically to ``path``."""
        atomic_save({"format": _FILE_FORMAT, "config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "EpisodicMemory":
        """Rebuild a memory written by :meth:`save`; reads are bit-identical to the saved one's."""
        payload = safe_load(path, what="episodic memory", map_location=device)
        if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
            raise ValueError(f"episodic memory file {path} was not written by EpisodicMemory.save "
                             f"(expected format {_FILE_FORMAT!r})")
        try:
            memory = cls(**payload["config"], device=device)
            memory.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"episodic memory file {path} is corrupt: {exc}") from exc
        return memory

    # ------------------------------------------------------------------ input checks
    def _check_keys(self, x: Tensor, name: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.key_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a [B, {self.key_dim}] tensor, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contain NaN or infinite values")
        return x.to(device=self.device, dtype=self.keys.dtype)

    def _check_vector(self, x: Tensor, length: int, name: str) -> Tensor:
        x = torch.as_tensor(x)
        if x.shape != (length,) or not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must be a finite float tensor of shape [{length}], got "
                             f"{x.dtype} {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.values.dtype)

    def _check_labels(self, x: Tensor, length: int, name: str) -> Tensor:
        x = torch.as_tensor(x)
        if x.shape != (length,) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of shape [{length}], got {x.dtype} {tuple(x.shape)}")
        if length and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ValueError(f"{name} must lie in [0, {self.num_classes}), got values in "
                             f"[{int(x.min())}, {int(x.max())}]")
        return x.to(device=self.device, dtype=torch.long)

    def _check_class(self, c: int) -> int:
        if not 0 <= int(c) < self.num_classes:
            raise ValueError(f"class {c} is outside [0, {self.num_classes})")
        return int(c)


class MemoryOptimizer:
    """Drives the lazy Adam of one or more memories like a ``torch.optim`` optimizer.

    For trainers that loop ``zero_grad(); backward(); step()`` over a list of optimizers
    (``ltcore.train.fit``). The Adam state lives in each memory's ``state_dict``, so this
    object's own state is empty.
    """

    def __init__(self, *memories: EpisodicMemory):
        if not memories or not all(isinstance(m, EpisodicMemory) for m in memories):
            raise ValueError("MemoryOptimizer needs at least one EpisodicMemory")
        self.memories = memories

    def zero_grad(self, set_to_none: bool = True) -> None:
        for memory in self.memories:
            memory.zero_grad(set_to_none)

    def step(self, closure=None) -> None:
        for memory in self.memories:
            memory.step()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def projected_bank_sizes(class_counts: Sequence[int], epochs: int, keys_per_image: int, capacity: int) -> np.ndarray:
    """[C] slots per bank after ``epochs`` epochs in which every training image writes ``keys_per_image`` keys
    to the bank of its class: ``min(capacity, n_c * epochs * keys_per_image)``.

    Exact when no written key is already in its bank (the features of augmented images from a backbone
    that trains), an upper bound otherwise. Taught in notebook 06, *IEM results*.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    for name, value in (("epochs", epochs), ("keys_per_image", keys_per_image), ("capacity", capacity)):
        _check_int(name, value, 0 if name == "epochs" else 1)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class_counts must be a 1-D sequence of counts >= 0, got {class_counts!r}")
    return np.minimum(capacity, counts * epochs * keys_per_image)


def _padded_widths(sizes: np.ndarray, max_width: int) -> np.ndarray:
    """Bank sizes rounded up to 8 steps per power of two (<= 12.5% padding), capped at ``max_width``; 0 stays 0."""
    sizes = np.asarray(sizes, dtype=np.int64)
    power = np.left_shift(1, np.floor(np.log2(np.maximum(sizes, 1))).astype(np.int64))  # largest 2^k <= size
    step = np.maximum(power // 8, 1)
    return np.minimum(-(-sizes // step) * step, max_width)


def _grad_or_zeros(leaf: Tensor) -> Tensor:
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


def _sparse_adam_(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, grad: Tensor,
                  step: int, lr: float, betas: tuple[float, float], eps: float) -> None:
    """Adam on ``param[rows]`` only, with the arithmetic of ``torch.optim.SparseAdam`` (lazy moments).

    Per chunk of rows, in place on the gathered copies, with SparseAdam's operations in its order
    (bit-identical to the unchunked ``avg = old + (grad - old) * (1 - beta1)`` and so on).
    """
    beta1, beta2 = betas
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    chunk = _rows_per_chunk(grad)
    for r, g in zip(rows.split(chunk), grad.split(chunk)):                 # [c], [c, ...]
        avg = exp_avg.index_select(0, r)
        scratch = torch.sub(g, avg).mul_(1 - beta1)
        exp_avg.index_copy_(0, r, avg.add_(scratch))                         # old + (grad - old) * (1 - beta1)
        avg_sq = exp_avg_sq.index_select(0, r)
        torch.mul(g, g, out=scratch).sub_(avg_sq).mul_(1 - beta2)
        exp_avg_sq.index_copy_(0, r, avg_sq.add_(scratch))                   # old + (grad^2 - old) * (1 - beta2)
        torch.div(avg, avg_sq.sqrt_().add_(eps), out=scratch).mul_(-step_size)
        param.index_copy_(0, r, param.index_select(0, r).add_(scratch))


def _rows_per_chunk(rows: Tensor) -> int:
    """Rows of ``rows`` [N, ...] per chunk of a row-wise pass (see ``_CPU_ROW_CHUNK_ELEMENTS``)."""
    elements = _CPU_ROW_CHUNK_ELEMENTS if rows.device.type == "cpu" else _CHUNK_ELEMENTS
    return max(1, elements // max(1, rows[0].numel() if len(rows) else 1))


def _consume(iterator) -> None:
    """Run a ``map`` of side effects to the end (at C speed)."""
    deque(iterator, maxlen=0)


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be {bound}, got {value!r}")
