"""Storage of the IEM episodic memory's banks: a pool of slots, an exact-key index and each bank's age order.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed Visual
Recognition", CVPR 2020, Section 3.1 (a bank of key-value pairs per class, capacity 50,000 in
Section 4.2, duplicates eq. 4, eviction of the oldest pair by an age vector from Kaiser et al.,
ICLR 2017). The paper's reads and writes are in :mod:`ltcore.iem.memory`; this module keeps the
slots they act on.

Layout
------
* A shared pool of slots: ``keys [P, D]``, ``values [P]`` and their Adam moments, grown by doubling
  (an amortised copy), never pre-allocated per class. A slot belongs to one class for its whole
  life: eviction reuses the evicted slot for the newcomer of the same class.
* ``bank_table [C, W]``: slot ids of each bank in append order, padded with -1; ``W`` (the largest
  bank, at most ``capacity``) also grows by doubling.
* On the Python side (:class:`SlotIndex`): the exact-key index ``{(class, fingerprint): slot}`` and,
  per class, the slots from least to most recently touched (the age vector, kept ordered, so
  eviction is O(1)).
* Memory cost: 3 floats per key coordinate (key, two Adam moments), 8 bytes per padded table cell,
  ~320 bytes of Python index per slot, and during inference ``read_all``'s packed copy of the keys.
  ImageNet-LT at full capacity (1000 x 50,000 slots x 512) would need ~300 GB, which is why the
  paper's capacity is a limit, not an allocation. Training still fills the banks: every step
  writes its batch, and the features of an augmented image from a changing backbone are never an
  exact duplicate, so after E epochs a bank holds ``min(capacity, n_c * E * keys per image)``
  slots (:func:`projected_bank_sizes`). The paper's ImageNet-LT run (30 epochs, 115,846 images,
  none of whose classes reaches 50,000 slots) ends with 3,475,380 global slots: 21 GB of float32
  at 512 dimensions.

Exact keys
----------
A key "already existed" when an exactly equal float32 key is in the bank of the same label
(``-0.0`` equals ``0.0``: the memory adds 0.0 to keys before writing). Equality is decided through
a 120-bit fingerprint of the key's bit pattern (six multilinear hashes of its 16-bit halves modulo
the prime 2^20 - 3, computed exactly as one float64 matrix product; universal hashing: two
different keys collide with probability ~2^-120), so finding a duplicate costs O(D), not a scan
of the bank. Should two keys of a bank ever collide exactly, the slot first indexed keeps the
entry and nothing is merged.

Saved state: the tensors above (the pool cut to the slots in use) and, as extra state, the slot
counts, each bank's age order, each slot's write generation and the largest key coordinate and
value stored (the read's precision rule, :func:`ltcore.iem.memory_search.read_dtype`, depends on
them). The exact-key index is rebuilt from the keys on load, and a loaded state is checked:
finite, banks within capacity, table and age order agreeing, no duplicate key in a bank.
"""
from __future__ import annotations

import math
from collections import OrderedDict, deque
from itertools import repeat
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ltcore.checks import check_int

__all__ = ["BankStorage", "SlotIndex", "fingerprints", "projected_bank_sizes", "rows_per_chunk"]

POOL_BUFFERS = ("keys", "values", "key_exp_avg", "key_exp_avg_sq", "value_exp_avg", "value_exp_avg_sq")
MOMENT_BUFFERS = POOL_BUFFERS[2:]
MAX_KEY_DIM = 1 << 15  # 2D digits |d| <= 2^15 times multipliers < 2^20 sum below 2^51: exact in float64
# Row-wise passes over many slots (Adam, fingerprints) go in chunks of at most this many elements on a
# CPU: temporaries of 256 KB stay in the cache and the allocator reuses them, where [u, D] temporaries
# are page-faulted anew by every operation (4-8x slower, measured on 20k slots of 128 and 512 dims).
# A GPU has no such cost per temporary and pays a launch per operation: it takes the whole chunk bound.
CPU_ROW_CHUNK_ELEMENTS = 1 << 16
_FINGERPRINT_PRIME = (1 << 20) - 3   # prime; six hashes modulo it make a 120-bit fingerprint
_FINGERPRINT_SEED = 20200614
# Host memory of one slot besides its tensors: exact-key index entry, key id, age order entry,
# generation (measured with tracemalloc on CPython 3.11: 319 bytes on 200,000 slots).
_PYTHON_BYTES_PER_SLOT = 320
_EXTRA_STATE_KEYS = {"num_classes", "key_dim", "num_slots", "next_seq", "insert_seq", "bank_sizes", "age_order"}

KeyId = tuple[int, int, int]   # (class, fingerprint high, fingerprint low)


class SlotIndex:
    """The Python side of the banks: which slot holds which key, and each bank's age order.

    ``find`` looks a key up in O(1); ``place`` gives a new key a slot (appended, or the least
    recently touched slot of a full bank); ``touch`` makes a slot the most recently touched;
    ``generation[slot]`` numbers the key a slot holds, so a read recorded before an eviction is
    recognised as stale.
    """

    def __init__(self, num_classes: int, capacity: int):
        self.capacity = capacity
        self.num_slots = 0                                  # slots 0 .. num_slots-1 of the pool are in use
        self.next_generation = 0
        self.generation = np.zeros(0, dtype=np.int64)      # [P]
        self.key_of_slot: list[KeyId] = []
        self.slot_of_key: dict[KeyId, int] = {}
        self.age_order = [OrderedDict() for _ in range(num_classes)]  # least recently touched first
        self.appended: list[tuple[int, int, int]] = []     # (class, position in bank, slot) not yet in the table

    def find(self, key_id: KeyId) -> int | None:
        """The slot holding this exact key in its bank, or None."""
        return self.slot_of_key.get(key_id)

    def touch(self, bank: int, slot: int) -> None:
        """Make ``slot`` the most recently touched of its bank."""
        self.age_order[bank].move_to_end(slot)

    def place(self, key_id: KeyId) -> int:
        """A slot for a key new to its bank: appended, or the bank's least recently touched slot when full."""
        bank = key_id[0]
        age_order = self.age_order[bank]
        if len(age_order) < self.capacity:
            slot = self.num_slots
            self.num_slots += 1
            self.key_of_slot.append(key_id)
            self.appended.append((bank, len(age_order), slot))
        else:
            slot, _ = age_order.popitem(last=False)
            evicted = self.key_of_slot[slot]
            if self.slot_of_key.get(evicted) == slot:   # else an exact collision left the entry to another slot
                del self.slot_of_key[evicted]
            self.key_of_slot[slot] = key_id
        self.slot_of_key[key_id] = slot
        age_order[slot] = None
        self.generation[slot] = self.next_generation
        self.next_generation += 1
        return slot

    def reserve(self, num_slots: int) -> None:
        """Room for ``num_slots`` generations (grown with the pool)."""
        if num_slots > len(self.generation):
            self.generation = np.concatenate([self.generation, np.zeros(num_slots - len(self.generation), np.int64)])

    def reindex(self, slots: Sequence[int], fingerprints_of_slots: np.ndarray) -> None:
        """After the keys of ``slots`` moved: index them under their new fingerprints [u, 2] and touch
        them, in the order they were first written.

        The dictionary and list updates run as ``map`` over whole columns (C loops, no Python
        statement per slot): a step moves tens of thousands of slots.
        """
        order = np.argsort(self.generation[np.asarray(slots, dtype=np.int64)], kind="stable")
        slots, fingerprints_of_slots = [slots[i] for i in order], fingerprints_of_slots[order]
        old_ids = list(map(self.key_of_slot.__getitem__, slots))
        banks = [key_id[0] for key_id in old_ids]
        new_ids = list(zip(banks, fingerprints_of_slots[:, 0].tolist(), fingerprints_of_slots[:, 1].tolist()))
        index = self.slot_of_key
        held = list(map(index.pop, old_ids, repeat(None)))   # the old entries, normally these slots
        if held != slots:   # an entry held by a slot that is not moving (exact collision) goes back
            moving = set(slots)
            index.update((key_id, holder) for key_id, holder in zip(old_ids, held)
                         if holder is not None and holder not in moving)
        run_to_end(map(index.setdefault, new_ids, slots))    # on an exact collision the earlier slot keeps it
        run_to_end(map(self.key_of_slot.__setitem__, slots, new_ids))
        run_to_end(map(OrderedDict.move_to_end, map(self.age_order.__getitem__, banks), slots))


class BankStorage(nn.Module):
    """The tensors of the banks (pool, bank table, Adam moments) and their :class:`SlotIndex`.

    Args:
        num_classes, key_dim, capacity: banks C, key dimension D, slots per bank at most.
        chunk_elements: bound on the elements of one chunk's temporaries in reads and row-wise passes.
        device: where the tensors live; ``.to(device)`` moves them later.
    """

    def __init__(self, num_classes: int, key_dim: int, capacity: int, chunk_elements: int,
                 device: torch.device | str | None = None):
        super().__init__()
        self.num_classes, self.key_dim, self.capacity = num_classes, key_dim, capacity
        self.chunk_elements = chunk_elements
        for name in POOL_BUFFERS:
            self.register_buffer(name, torch.zeros((0, key_dim) if name.startswith("key") else (0,), device=device))
        self.register_buffer("bank_table", torch.full((num_classes, 0), -1, dtype=torch.long, device=device))
        generator = torch.Generator().manual_seed(_FINGERPRINT_SEED)
        multipliers = torch.randint(1, _FINGERPRINT_PRIME, (2 * key_dim, 6), generator=generator)
        self.register_buffer("_fingerprint_multipliers", multipliers.to(device), persistent=False)
        self.index = SlotIndex(num_classes, capacity)
        # Largest |key coordinate| and |value| stored since creation or load (never lowered by an eviction).
        self.key_bound, self.value_bound = 0.0, 0.0
        self.packed = None   # read_all's packed copy of the banks (ltcore.iem.memory_search), dropped on any change

    # ------------------------------------------------------------------ inspection
    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def num_slots(self) -> int:
        """Slots in use over all banks."""
        return self.index.num_slots

    @property
    def allocated_slots(self) -> int:
        """Rows allocated in the pool: at least :attr:`num_slots`, grown by doubling."""
        return self.keys.shape[0]

    def bank_size(self, c: int) -> int:
        """Number of slots in the bank of class ``c``."""
        return len(self.index.age_order[self._checked_class(c)])

    def bank_sizes(self, classes: Sequence[int] | None = None) -> np.ndarray:
        """Number of slots per bank: [C], or [len(classes)] for the given classes."""
        orders = self.index.age_order if classes is None else [self.index.age_order[c] for c in classes]
        return np.fromiter((len(order) for order in orders), dtype=np.int64, count=len(orders))

    def bank(self, c: int) -> tuple[Tensor, Tensor, Tensor]:
        """Slots [L], keys [L, D] and values [L] of bank ``c`` in append order (copies)."""
        slots = self.bank_table[self._checked_class(c), : self.bank_size(c)].clone()
        return slots, self.keys[slots].clone(), self.values[slots].clone()

    def eviction_order(self, c: int) -> list[int]:
        """Slots of bank ``c`` from least to most recently touched: the first is evicted next."""
        return list(self.index.age_order[self._checked_class(c)])

    def slot_bytes(self) -> tuple[int, int]:
        """(device, host) bytes one slot takes: its key, value and their Adam moments (float32) plus
        its bank-table cell on the memory's device; the Python index on the host. The pool and
        table grow by doubling, so up to twice as much may be allocated."""
        return 4 * 3 * (self.key_dim + 1) + self.bank_table.element_size(), _PYTHON_BYTES_PER_SLOT

    def _checked_class(self, c: int) -> int:
        return check_int("class", c, 0, self.num_classes - 1)

    # ------------------------------------------------------------------ changes
    def key_ids(self, keys: Tensor, labels: Tensor) -> list[KeyId]:
        """(class, fingerprint high, fingerprint low) per row of ``keys`` [B, D]."""
        halves = fingerprints(keys, self._fingerprint_multipliers, self.row_chunk_elements)
        return [(c, a, b) for c, (a, b) in zip(labels.tolist(), halves.tolist())]

    def values_of(self, key_ids: list[KeyId]) -> dict[int, float]:
        """{slot: value} of the slots already holding one of these keys."""
        known = sorted({slot for slot in map(self.index.slot_of_key.get, key_ids) if slot is not None})
        return dict(zip(known, self.values[known].tolist()))

    def store(self, keys: Tensor, placed: dict[int, int], slot_values: dict[int, float]) -> None:
        """Scatter one write into the tensors (O(batch)): ``placed`` maps a slot to the row of ``keys``
        it now holds (fresh Adam moments), ``slot_values`` a slot to its new value."""
        self.packed, device = None, self.device
        if placed:
            slots = torch.tensor(list(placed), device=device)
            new_keys = keys[torch.tensor(list(placed.values()), device=device)]
            self.keys.index_copy_(0, slots, new_keys)
            for name in MOMENT_BUFFERS:
                getattr(self, name).index_fill_(0, slots, 0.0)
            self.key_bound = max(self.key_bound, float(new_keys.abs().amax()))
        if slot_values:
            self.values.index_copy_(0, torch.tensor(list(slot_values), device=device),
                                    torch.tensor(list(slot_values.values()), dtype=self.values.dtype, device=device))
            self.value_bound = max(self.value_bound, max(map(abs, slot_values.values())))
        if self.index.appended:
            banks, positions, slots = (torch.tensor(column, device=device) for column in zip(*self.index.appended))
            self.index.appended = []
            self._grow_table(int(positions.max()) + 1)
            self.bank_table[banks, positions] = slots

    def moved(self, slots: Tensor) -> None:
        """After the keys and values of ``slots`` moved (an Adam step): re-index, touch, update the bounds."""
        self.packed = None
        moved_keys = self.keys.index_select(0, slots)
        self.key_bound = max(self.key_bound, float(moved_keys.abs().amax()))
        self.value_bound = max(self.value_bound, float(self.values.index_select(0, slots).abs().amax()))
        halves = fingerprints(moved_keys + 0.0, self._fingerprint_multipliers, self.row_chunk_elements)
        self.index.reindex(slots.tolist(), halves.cpu().numpy())

    def reserve(self, needed: int) -> None:
        """Make room for ``needed`` slots by doubling the pool (amortised O(1) per write)."""
        allocated, used = self.keys.shape[0], self.index.num_slots
        if needed <= allocated:
            return
        size = max(needed, 2 * allocated, 64)
        for name in POOL_BUFFERS:
            old = getattr(self, name)
            grown = old.new_zeros((size, *old.shape[1:]))
            grown[:used] = old[:used]
            setattr(self, name, grown)
        self.index.reserve(size)

    def _grow_table(self, width: int) -> None:
        """Widen ``bank_table`` to at least ``width`` columns by doubling, capped at ``capacity``."""
        current = self.bank_table.shape[1]
        if width > current:
            grown = self.bank_table.new_full((self.num_classes, min(self.capacity, max(width, 2 * current, 16))), -1)
            grown[:, :current] = self.bank_table
            self.bank_table = grown

    @property
    def row_chunk_elements(self) -> int:
        """Elements per chunk of a row-wise pass (see ``CPU_ROW_CHUNK_ELEMENTS``)."""
        return min(self.chunk_elements, CPU_ROW_CHUNK_ELEMENTS) if self.device.type == "cpu" else self.chunk_elements

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict:
        """Python-side state (ints, floats and tensors only); the exact-key index is rebuilt from the keys on load.

        ``next_seq`` / ``insert_seq`` are the generations under their names in format 1 files."""
        n, index = self.index.num_slots, self.index
        return {"num_classes": self.num_classes, "key_dim": self.key_dim, "num_slots": n,
                "next_seq": index.next_generation, "insert_seq": torch.from_numpy(index.generation[:n].copy()),
                "bank_sizes": torch.from_numpy(self.bank_sizes()),
                "age_order": torch.tensor([s for order in index.age_order for s in order], dtype=torch.long),
                "key_bound": self.key_bound, "value_bound": self.value_bound}

    def set_extra_state(self, state: dict) -> None:
        missing = _EXTRA_STATE_KEYS - set(state) if isinstance(state, dict) else _EXTRA_STATE_KEYS
        if missing:
            raise ValueError(f"episodic memory state lacks {sorted(missing)}")
        if (state["num_classes"], state["key_dim"]) != (self.num_classes, self.key_dim):
            raise ValueError(f"episodic memory state is for {state['num_classes']} classes x {state['key_dim']} "
                             f"dims, this memory has {self.num_classes} x {self.key_dim}")
        n = check_int("num_slots", state["num_slots"], 0)
        sizes, generation = torch.as_tensor(state["bank_sizes"]).tolist(), torch.as_tensor(state["insert_seq"])
        orders, slot_bank = check_consistent_state(self, n, sizes, torch.as_tensor(state["age_order"]).cpu(),
                                                   generation, state["next_seq"])
        index = SlotIndex(self.num_classes, self.capacity)
        index.num_slots, index.next_generation = n, int(state["next_seq"])
        index.generation = generation.cpu().numpy().astype(np.int64)
        index.age_order = [OrderedDict.fromkeys(order.tolist()) for order in orders]
        halves = fingerprints(self.keys[:n] + 0.0, self._fingerprint_multipliers, self.row_chunk_elements)
        index.key_of_slot = list(zip(slot_bank.tolist(), *halves.cpu().numpy().T.tolist()))
        index.slot_of_key = {key_id: slot for slot, key_id in enumerate(index.key_of_slot)}
        if len(index.slot_of_key) != n:
            raise ValueError("episodic memory state is inconsistent: a bank holds duplicate keys")
        key_bound = float(self.keys[:n].abs().amax()) if n else 0.0
        value_bound = float(self.values[:n].abs().amax()) if n else 0.0
        saved = (state.get("key_bound", key_bound), state.get("value_bound", value_bound))
        if not all(isinstance(b, float) and b >= actual for b, actual in zip(saved, (key_bound, value_bound))):
            raise ValueError(f"episodic memory state is inconsistent: bounds {saved} below the stored "
                             f"{(key_bound, value_bound)}")
        self.index, (self.key_bound, self.value_bound), self.packed = index, saved, None

    def _apply(self, fn, *args, **kwargs):
        self.packed = None  # .to(), .cuda(), ... move the buffers; the packed copy is rebuilt on demand
        return super()._apply(fn, *args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in POOL_BUFFERS:  # drop the unused tail of the pool (a slice alone would save it all)
            if destination[prefix + name].shape[0] != self.index.num_slots:
                destination[prefix + name] = destination[prefix + name][: self.index.num_slots].clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # The banks may have another size than this module's: adopt the saved number of slots
        # (pool) or width (table), then let nn.Module copy; other shape mismatches stay errors.
        for name in (*POOL_BUFFERS, "bank_table"):
            incoming, own = state_dict.get(prefix + name), getattr(self, name)
            fixed = (lambda shape: shape[:1]) if name == "bank_table" else (lambda shape: shape[1:])
            if isinstance(incoming, Tensor) and incoming.dim() == own.dim() \
                    and fixed(incoming.shape) == fixed(own.shape):
                self._buffers[name] = torch.empty(incoming.shape, dtype=own.dtype, device=own.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def check_consistent_state(storage: BankStorage, num_slots: int, sizes: list[int], age_order: Tensor,
                           generation: Tensor, next_generation) -> tuple[tuple[Tensor, ...], np.ndarray]:
    """Check a loaded state against the configuration and itself; returns each bank's age order and the
    bank of each slot [N].

    Finite keys, values and moments (second moments >= 0); banks within capacity; table rows, age
    orders and slots agreeing (every slot in exactly one bank); generations distinct and below the next.
    """
    n = num_slots
    if storage.keys.shape[0] != n or len(sizes) != storage.num_classes or sum(sizes) != n \
            or age_order.shape != (n,) or age_order.is_floating_point():
        raise ValueError(f"episodic memory state is inconsistent: {n} slots, {storage.keys.shape[0]} keys, "
                         f"{len(sizes)} bank sizes summing to {sum(sizes)}, an age order of {len(age_order)}")
    if max(sizes, default=0) > storage.capacity or min(sizes, default=0) < 0:
        raise ValueError(f"episodic memory state has bank sizes in [{min(sizes)}, {max(sizes)}], outside "
                         f"[0, capacity={storage.capacity}]")
    for name in POOL_BUFFERS:
        if not bool(torch.isfinite(getattr(storage, name)).all()):
            raise ValueError(f"episodic memory state holds non-finite {name}")
    if any(bool((getattr(storage, name) < 0).any()) for name in ("key_exp_avg_sq", "value_exp_avg_sq")):
        raise ValueError("episodic memory state holds negative second moments")
    table = storage.bank_table.cpu()   # a load may map it to a GPU
    slot_bank, orders = np.full(n, -1, dtype=np.int64), age_order.split(sizes)
    for c, (size, order) in enumerate(zip(sizes, orders)):
        row = table[c]
        if (size > len(row) or bool((row[:size] < 0).any()) or bool((row[size:] >= 0).any())
                or not torch.equal(row[:size].sort().values, order.sort().values)):
            raise ValueError(f"episodic memory state is inconsistent: bank {c} table and age order differ")
        slot_bank[row[:size].clamp_max(max(n - 1, 0)).numpy()] = c
    used = np.sort(table[table >= 0].numpy())
    if not np.array_equal(used, np.arange(n)) or (slot_bank < 0).any():
        raise ValueError("episodic memory state is inconsistent: the banks do not hold each slot exactly once")
    next_generation = check_int("next_seq", next_generation, 0)
    if generation.shape != (n,) or generation.is_floating_point() or (n and (
            int(generation.min()) < 0 or int(generation.max()) >= next_generation
            or len(torch.unique(generation)) != n)):
        raise ValueError("episodic memory state is inconsistent: slot generations")
    return orders, slot_bank


def fingerprints(keys: Tensor, multipliers: Tensor, chunk_elements: int) -> Tensor:
    """[B, 2] int64 fingerprints of float32 keys [B, D]: six 20-bit universal hashes, three per column.

    ``multipliers`` [2D, 6] are integers below 2^20; the keys go in chunks of ``chunk_elements``.
    """
    multipliers = multipliers.double()
    parts = []
    for chunk in keys.split(rows_per_chunk(keys, chunk_elements)):
        digits = chunk.contiguous().view(torch.int16).double()  # [b, D] float32 -> [b, 2D] 16-bit halves
        # [b, 2D] @ [2D, 6] -> [b, 6]; every partial sum is an integer below 2^51 in size: exact
        hashes = torch.remainder(digits @ multipliers, _FINGERPRINT_PRIME).long().view(-1, 2, 3)  # [b, 2, 3]
        parts.append(hashes[..., 0] << 40 | hashes[..., 1] << 20 | hashes[..., 2])  # [b, 2], < 2^60
    return torch.cat(parts) if parts else keys.new_zeros((0, 2), dtype=torch.long)


def rows_per_chunk(rows: Tensor, chunk_elements: int) -> int:
    """Rows of ``rows`` [N, ...] per chunk of at most ``chunk_elements`` elements (at least one row)."""
    return max(1, chunk_elements // max(1, rows[0].numel() if len(rows) else 1))


def projected_bank_sizes(class_counts: Sequence[int], epochs: int, keys_per_image: int, capacity: int) -> np.ndarray:
    """[C] slots per bank after ``epochs`` epochs in which every training image writes ``keys_per_image`` keys
    to the bank of its class: ``min(capacity, n_c * epochs * keys_per_image)``.

    Exact when no written key is already in its bank (the features of augmented images from a backbone
    that trains), an upper bound otherwise. Taught in notebook 06, *IEM results*.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    check_int("epochs", epochs, 0)
    check_int("keys_per_image", keys_per_image, 1)
    check_int("capacity", capacity, 1)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class_counts must be a 1-D sequence of counts >= 0, got {class_counts!r}")
    return np.minimum(capacity, counts * epochs * keys_per_image)


def run_to_end(iterator) -> None:
    """Run a ``map`` of side effects to the end (at C speed)."""
    deque(iterator, maxlen=0)
