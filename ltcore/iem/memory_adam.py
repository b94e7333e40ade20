"""The IEM episodic memory's own optimizer: a lazy Adam on the slots a training read selected.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed Visual
Recognition", CVPR 2020, Section 4.2: the memory is trained by Adam (lr 1e-5) while the backbone
uses SGD; eq. 5 and 16 give the loss (the MSE of the positive and the hard negative bank's reads).

A training read gathers the selected slots into fresh leaf tensors and records them here;
gradients reach those leaves (and the queries, so the backbone learns through the memory loss),
never the whole pool. A step applies Adam to exactly the recorded slots, with the arithmetic of
``torch.optim.SparseAdam``: the moments of rows not read are left alone, one step counter per
memory. A slot evicted between its read and the step (its generation changed) drops its stale
gradient. A non-finite gradient is refused before anything changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ltcore.iem.memory_storage import rows_per_chunk

__all__ = ["LazyAdam", "MemoryOptimizer", "sparse_adam_"]


@dataclass
class RecordedRead:
    """Slots gathered by one training read, with the leaf tensors that collect their gradients."""

    slots: Tensor            # [u] pool slots, on the memory's device
    generation: np.ndarray   # [u] the generation of their keys at read time (detects eviction)
    keys: Tensor             # [u, D] leaf
    values: Tensor           # [u] leaf


class LazyAdam:
    """Records the slots read in training and applies Adam to them (Section 4.2)."""

    def __init__(self, lr: float, betas: tuple[float, float], eps: float):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.steps = 0
        self.records: list[RecordedRead] = []

    def record(self, slots: Tensor, generation: np.ndarray, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Make copies of the keys [u, D] and values [u] read leaves that collect gradients; returns them."""
        keys, values = keys.requires_grad_(True), values.requires_grad_(True)
        self.records.append(RecordedRead(slots, generation, keys, values))
        return keys, values

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the recorded reads (the records stay until the step)."""
        for record in self.records:
            for leaf in (record.keys, record.values):
                if set_to_none:
                    leaf.grad = None
                elif leaf.grad is not None:
                    leaf.grad.zero_()

    def take_gradients(self, generation: np.ndarray) -> tuple[Tensor, Tensor, Tensor] | None:
        """Forget the records; return the slots [u] still holding the keys read, with their gradients
        summed over the records: keys [u, D], values [u]. None if nothing was read with a gradient."""
        records, self.records = [r for r in self.records if r.keys.grad is not None or r.values.grad is not None], []
        if not records:
            return None
        slots = torch.cat([r.slots for r in records])
        key_grads = torch.cat([_grad_or_zeros(r.keys) for r in records])       # [sum u, D]
        value_grads = torch.cat([_grad_or_zeros(r.values) for r in records])   # [sum u]
        alive = np.concatenate([generation[r.slots.cpu().numpy()] == r.generation for r in records])
        alive = torch.from_numpy(alive).to(slots.device)
        used, inverse = torch.unique(slots[alive], return_inverse=True)        # [u]
        if used.numel() == 0:
            return None
        key_grad = key_grads.new_zeros(len(used), key_grads.shape[1]).index_add_(0, inverse, key_grads[alive])
        value_grad = value_grads.new_zeros(len(used)).index_add_(0, inverse, value_grads[alive])
        return used, key_grad, value_grad

    def update_(self, rows: Tensor, *parameters: tuple[Tensor, Tensor, Tensor, Tensor], chunk_elements: int) -> None:
        """One Adam step on ``rows`` of each (parameter, first moment, second moment, gradient of the rows)."""
        self.steps += 1
        for param, exp_avg, exp_avg_sq, grad in parameters:
            sparse_adam_(param, exp_avg, exp_avg_sq, rows, grad, self.steps, self.lr, self.betas, self.eps,
                         chunk_elements)


def sparse_adam_(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, grad: Tensor, step: int,
                 lr: float, betas: tuple[float, float], eps: float, chunk_elements: int) -> None:
    """Adam on ``param[rows]`` only, with the arithmetic of ``torch.optim.SparseAdam`` (lazy moments).

    Per chunk of rows, in place on the gathered copies, with SparseAdam's operations in its order
    (bit-identical to the unchunked ``avg = old + (grad - old) * (1 - beta1)`` and so on).
    """
    beta1, beta2 = betas
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    chunk = rows_per_chunk(grad, chunk_elements)
    for r, g in zip(rows.split(chunk), grad.split(chunk)):                 # [c], [c, ...]
        avg = exp_avg.index_select(0, r)
        scratch = torch.sub(g, avg).mul_(1 - beta1)
        exp_avg.index_copy_(0, r, avg.add_(scratch))                         # old + (grad - old) * (1 - beta1)
        avg_sq = exp_avg_sq.index_select(0, r)
        torch.mul(g, g, out=scratch).sub_(avg_sq).mul_(1 - beta2)
        exp_avg_sq.index_copy_(0, r, avg_sq.add_(scratch))                   # old + (grad^2 - old) * (1 - beta2)
        torch.div(avg, avg_sq.sqrt_().add_(eps), out=scratch).mul_(-step_size)
        param.index_copy_(0, r, param.index_select(0, r).add_(scratch))


class MemoryOptimizer:
    """Drives the lazy Adam of one or more memories like a ``torch.optim`` optimizer.

    For trainers that loop ``zero_grad(); backward(); step()`` over a list of optimizers
    (``ltcore.train.fit``). The Adam state lives in each memory's ``state_dict``, so this
    object's own state is empty.
    """

    def __init__(self, *memories):
        if not memories or not all(isinstance(getattr(m, "adam", None), LazyAdam) for m in memories):
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


def _grad_or_zeros(leaf: Tensor) -> Tensor:
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
