"""Batched nearest-slot search of the IEM episodic memory: the top-n keys of eq. 1-2, without Python loops.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed Visual
Recognition", CVPR 2020, Section 3.1 (eq. 1-2: the top-n nearest keys of a bank, weighted by
``1 / (||q - k||^2 + delta)``) and Section 3.3 (training reads one bank per query, eq. 14-15;
inference reads every bank). :mod:`ltcore.iem.memory` says what is read; this module finds it fast.

Neither read loops in Python over queries or classes; the only loops are over padded bank widths
(sizes rounded up to 8 steps per power of two: at most 12.5% padding, a handful of widths in
practice, at most 8 per doubling of the bank size), for :func:`nearest_slots` also over query
counts per bank rounded up to a power of two, and over chunks that keep the temporaries under
``chunk_elements`` (2^24 by default, 64 MB of float32; except the keys of a single bank, which
:func:`nearest_slots` gathers whole: 100 MB for a full bank of 50,000 x 512).

* :func:`nearest_slots` (training, eq. 14-15; one bank per query): each query is compared with its
  own bank only. Queries are grouped by bank; banks of one padded width and one padded query count
  are read together by one batched matrix product (``[m, h, D] @ [m, D, w]``) and one ``topk``. The
  memory then recomputes the n selected distances directly as ``||q - k||^2`` (they are
  back-propagated through).
* :func:`read_packed` (inference, Section 3.3; every bank for every query): the banks of more than
  top_n slots are grouped by padded width and packed bank after bank (``[C_w * w, D]``, cached by
  the memory until the next change); each group is read with one matrix product
  (``[B, D] @ [D, C_w * w]``, viewed as ``[B, C_w, w]``) and one ``topk`` along the bank. The banks
  of at most top_n slots (the tail classes) have nothing to select: they are packed together
  unpadded, whatever their sizes, and read with one matrix product (``[S, D] @ [D, B]``) and two
  ``index_add_`` sums for eq. 1. This matters for small inference batches, where a group's dozen
  tensor operations cost more than its arithmetic. (On a GPU ``index_add_`` adds in a varying
  order, so these scores can differ between runs by float rounding unless
  ``torch.use_deterministic_algorithms(True)`` is set.)

One ranking in both: ``||k||^2 - 2 q.k``, which orders a bank's keys like ``||q - k||^2`` (the
query's own ``||q||^2`` is the same along a bank); ``read_packed`` adds ``||q||^2`` to the n
selected only. Adding it before the ``topk`` would drown the keys' differences in float32 rounding
for queries far from the keys (|q| ~ 1e6 and beyond), and the two reads would choose different
neighbours. ``read_packed``'s distances ``||q||^2 + ||k||^2 - 2 q.k`` round to ~1e-7 of their
terms, so it agrees with the direct ``||q - k||^2`` to ~1e-6 on unit-scale features (up to exact or
near ties at the n-th neighbour).

One precision rule in both (:func:`read_dtype`): where float32 could overflow -- squared distances
beyond 2^100 (coordinates beyond ~2^49 / sqrt(D)), or eq. 1's sums of ``similarity x value`` with
huge values or a tiny delta -- the read is computed in float64, where no finite float32 input
overflows, so that every finite query and key reads a finite score and both reads agree.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltcore.iem.memory_storage import BankStorage

__all__ = ["PackedBanks", "PaddedBanks", "SmallBanks", "nearest_slots", "pack_banks", "read_dtype", "read_packed"]

# Intermediate magnitudes below 2^100 leave float32 (largest 2^128) room for sums of up to 2^28 terms.
_FLOAT32_SAFE_MAGNITUDE = 2.0 ** 100


class PaddedBanks(NamedTuple):
    """Banks of one padded width (more than top_n slots), copied class-contiguously for ``read_packed``."""

    classes: Tensor  # [C_g]
    keys: Tensor     # [C_g * w, D], bank after bank
    key_sq: Tensor   # [C_g * w] squared key norms, inf in the padding
    values: Tensor   # [C_g, w]


class SmallBanks(NamedTuple):
    """Every non-empty bank of at most top_n slots (read whole), copied bank after bank, unpadded."""

    classes: Tensor       # [C_s]
    keys: Tensor          # [S, D]
    key_sq: Tensor        # [S, 1] squared key norms
    values: Tensor        # [S, 1]
    bank_of_slot: Tensor  # [S] position of each slot's bank in ``classes``


class PackedBanks(NamedTuple):
    """Every non-empty bank, copied for ``read_packed`` in the arithmetic ``dtype`` of the reads."""

    dtype: torch.dtype
    small: SmallBanks | None   # the banks of at most top_n slots
    groups: list[PaddedBanks]  # the others, by padded width


def read_dtype(query_bound: float, storage: BankStorage, top_n: int, delta: float) -> torch.dtype:
    """float64 where a float32 read could overflow, else the memory's dtype (the rule of both reads).

    ``query_bound`` is the largest |coordinate| of the queries; the storage bounds its keys' and
    values'. Squared distances are at most ``D (2 max|x|)^2``; eq. 1's sums at most
    ``top_n max(1, |v|) / delta``.
    """
    coordinate = max(query_bound, storage.key_bound)
    largest = max(4.0 * storage.key_dim * coordinate * coordinate, top_n * max(1.0, storage.value_bound) / delta)
    return torch.float64 if largest > _FLOAT32_SAFE_MAGNITUDE else storage.keys.dtype


def padded_widths(sizes: np.ndarray, max_width: int) -> np.ndarray:
    """Bank sizes rounded up to 8 steps per power of two (<= 12.5% padding), capped at ``max_width``; 0 stays 0."""
    sizes = np.asarray(sizes, dtype=np.int64)
    power = np.left_shift(1, np.floor(np.log2(np.maximum(sizes, 1))).astype(np.int64))  # largest 2^k <= size
    step = np.maximum(power // 8, 1)
    return np.minimum(-(-sizes // step) * step, max_width)


def nearest_slots(storage: BankStorage, queries: Tensor, classes: Tensor, top_n: int, dtype: torch.dtype) -> Tensor:
    """[B, top_n] slots of the top-n nearest keys in each query's bank, nearest first, -1 padded.

    Each query is compared with its own bank only. Queries are grouped by bank, and banks of
    the same padded width and padded query count are read together with one batched matrix
    product ``[m, h, D] @ [m, D, w]`` (m banks, up to h queries each, w slots each).
    """
    slots = torch.full((len(queries), top_n), -1, dtype=torch.long, device=queries.device)
    classes_np = classes.cpu().numpy()
    order = np.argsort(classes_np, kind="stable")                  # queries sorted by bank
    banks, first, counts = np.unique(classes_np[order], return_index=True, return_counts=True)  # [U] x3
    sizes = storage.bank_sizes(banks.tolist())                      # [U], not all C
    if len(queries) == 0 or sizes.max() == 0:
        return slots
    queries, chunk_elements = queries.to(dtype), storage.chunk_elements
    rank = np.arange(len(order)) - np.repeat(first, counts)        # rank of a query within its bank
    bank_of_sorted = np.repeat(np.arange(len(banks)), counts)      # position in `banks` of each sorted query
    widths = padded_widths(sizes, storage.bank_table.shape[1])     # [U]
    heights = 1 << np.ceil(np.log2(counts)).astype(np.int64)       # query counts padded to a power of 2
    for width, height in sorted(set(zip(widths.tolist(), heights.tolist()))):
        if width == 0:
            continue                                               # empty banks: slots stay -1
        group = np.flatnonzero((widths == width) & (heights == height))   # [m] positions in `banks`
        rows = np.full((len(group), height), -1, dtype=np.int64)   # query rows of the group: [m, height], -1 padded
        member = np.isin(bank_of_sorted, group)
        rows[np.searchsorted(group, bank_of_sorted[member]), rank[member]] = order[member]
        rows = torch.from_numpy(rows).to(queries.device)
        rows_per_chunk = max(1, min(height, chunk_elements // width))
        banks_per_chunk = max(1, chunk_elements // (width * max(rows_per_chunk, storage.key_dim)))
        for part in range(0, len(group), banks_per_chunk):
            part_banks = torch.from_numpy(banks[group[part: part + banks_per_chunk]]).to(queries.device)
            table = storage.bank_table[part_banks, :width]                  # [m, w] slots, -1 padded
            keys = storage.keys.index_select(0, table.clamp_min(0).flatten()).view(*table.shape, -1).to(dtype)
            key_sq = keys.square().sum(-1).masked_fill(table < 0, math.inf)  # [m, w, D] -> [m, w]; padding: inf
            for start in range(0, height, rows_per_chunk):
                part_rows = rows[part: part + banks_per_chunk, start: start + rows_per_chunk]  # [m, h]
                own_queries = queries.index_select(0, part_rows.clamp_min(0).flatten()).view(*part_rows.shape, -1)
                # ||k||^2 - 2 q.k ranks keys like ||q - k||^2 (||q||^2 is constant along a row)
                # [m, h, D] @ [m, D, w] -> [m, h, w]; padding rows repeat query 0 and are dropped below
                dist = torch.baddbmm(key_sq.unsqueeze(1), own_queries, keys.transpose(1, 2), alpha=-2)
                nearest = dist.topk(min(top_n, width), dim=-1, largest=False).indices              # [m, h, k]
                found = table.unsqueeze(1).expand(-1, part_rows.shape[1], -1).gather(-1, nearest)  # [m, h, k]
                real = part_rows >= 0                                                             # [m, h]
                slots[part_rows[real], : nearest.shape[-1]] = found[real]   # -1 where a small bank pads
    return slots


def pack_banks(storage: BankStorage, top_n: int, dtype: torch.dtype) -> PackedBanks:
    """Non-empty banks copied class-contiguously in ``dtype``: the banks of at most top_n slots
    together, unpadded; the others grouped by padded width."""
    num_slots, device, table = storage.num_slots, storage.device, storage.bank_table
    sizes = storage.bank_sizes()
    keys = storage.keys[:num_slots].to(dtype)                                            # [N, D]
    key_sq = F.pad(keys.square().sum(1), (0, 1), value=math.inf)                         # [N + 1]: slot N pads
    values = F.pad(storage.values[:num_slots].to(dtype), (0, 1))                          # [N + 1]
    small_banks = None
    small = np.flatnonzero((sizes > 0) & (sizes <= top_n))
    if len(small):
        small_table = table[torch.from_numpy(small).to(device), :int(sizes[small].max())]
        slots = small_table[small_table >= 0]                      # [S], bank after bank (row-major)
        bank_of_slot = torch.from_numpy(np.repeat(np.arange(len(small)), sizes[small])).to(device)
        small_banks = SmallBanks(torch.from_numpy(small).to(device), keys[slots],
                                 key_sq[slots].unsqueeze(1), values[slots].unsqueeze(1), bank_of_slot)
    widths = padded_widths(sizes, table.shape[1])
    widths[sizes <= top_n] = 0
    groups = []
    for width in np.unique(widths[widths > 0]).tolist():
        classes = torch.from_numpy(np.flatnonzero(widths == width)).to(device)
        group_table = table[classes, :width]                                 # [C_g, w] slots, -1 padded
        group_table = group_table.masked_fill(group_table < 0, num_slots).flatten()  # [C_g * w]
        groups.append(PaddedBanks(
            classes, keys[group_table.clamp_max(num_slots - 1)],  # [C_g * w, D]; padding copies a key ...
            key_sq[group_table], values[group_table].view(len(classes), width)))  # ... made infinitely far
    return PackedBanks(dtype, small_banks, groups)


def read_packed(queries: Tensor, packed: PackedBanks, num_classes: int, top_n: int, delta: float,
                chunk_elements: int) -> Tensor:
    """Eq. 1-2 of every bank for every query: scores [B, C] (0 for empty banks), in ``packed.dtype``'s arithmetic."""
    scores = queries.new_zeros(len(queries), num_classes)            # [B, C]
    queries = queries.to(packed.dtype)
    query_sq = queries.square().sum(1, keepdim=True)                 # [B, 1]
    if packed.small is not None:
        _read_small_banks(queries, query_sq, packed.small, scores, delta, chunk_elements)
    for bank in packed.groups:
        num_banks, width = bank.values.shape
        rows_per_chunk = max(1, min(len(queries), chunk_elements // width))
        classes_per_chunk = max(1, chunk_elements // (width * rows_per_chunk))
        for first in range(0, num_banks, classes_per_chunk):
            part = slice(first, first + classes_per_chunk)
            values = bank.values[part]                                          # [c, w]
            columns = slice(first * width, first * width + values.numel())
            keys, key_sq = bank.keys[columns], bank.key_sq[columns]             # [c * w, D], [c * w]
            for start in range(0, len(queries), rows_per_chunk):
                q = queries[start: start + rows_per_chunk]                      # [b, D]
                # ||k||^2 - 2 q.k for all c banks in one product: [b, D] @ [D, c * w] -> [b, c, w]; padding: inf
                rank = torch.addmm(key_sq, q, keys.T, alpha=-2).view(len(q), *values.shape)
                dist, top_pos = rank.topk(top_n, dim=-1, largest=False, sorted=False)      # [b, c, n]
                dist = dist.add_(query_sq[start: start + len(q)].unsqueeze(-1)).clamp_min_(0)  # + ||q||^2
                read_values = values.expand(len(q), -1, -1).gather(-1, top_pos)          # [b, c, n]
                similarity = dist.add_(delta).reciprocal_()                             # eq. 2; padding: 0
                read = (similarity * read_values).sum(-1) / similarity.sum(-1)          # eq. 1, [b, c]
                scores[start: start + len(q), bank.classes[part]] = read.to(scores.dtype)
    return scores


def _read_small_banks(queries: Tensor, query_sq: Tensor, banks: SmallBanks, scores: Tensor, delta: float,
                      chunk_elements: int) -> None:
    """``read_packed`` on the banks of at most top_n slots: every slot is read, so nothing is selected.

    One matrix product for all these banks, whatever their sizes, then eq. 1's two sums per bank
    by ``index_add_`` (slots along rows, so that each sum adds contiguous rows). Writes ``scores``.
    """
    keys, key_sq, values = banks.keys, banks.key_sq, banks.values
    rows_per_chunk = max(1, min(len(queries), chunk_elements // len(values)))
    for start in range(0, len(queries), rows_per_chunk):
        q, q_sq = queries[start: start + rows_per_chunk], query_sq[start: start + rows_per_chunk]  # [b, D], [b, 1]
        rows = len(q)
        if rows == 1:
            # One query is read as two: MKL's two-column product streams the keys ~2.5x faster than its
            # matrix-vector product on this repository's CPU (0.65 against 1.6 ms for 20k x 128 keys,
            # caches cold). Both read the keys once, so it costs little where the vector kernel is good.
            q, q_sq = q.repeat(2, 1), q_sq.expand(2, -1)
        # in place throughout: each fresh [S, b] temporary would cost page faults on top of its pass
        dist = torch.addmm(key_sq, keys, q.T, alpha=-2).add_(q_sq.T)                  # [S, D] @ [D, b] -> [S, b]
        similarity = dist.clamp_min_(0).add_(delta).reciprocal_()                     # eq. 2, [S, b]
        sums = similarity.new_zeros(2, len(banks.classes), len(q))                    # [2, C_s, b]
        sums[1].index_add_(0, banks.bank_of_slot, similarity)
        # autograd needs the similarities themselves (reciprocal's backward) when the queries require grad
        weighted = similarity * values if similarity.requires_grad else similarity.mul_(values)
        sums[0].index_add_(0, banks.bank_of_slot, weighted)
        scores[start: start + rows, banks.classes] = (sums[0] / sums[1]).T[:rows].to(scores.dtype)  # eq. 1
