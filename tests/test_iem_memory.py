"""Tests of the Inflated Episodic Memory (ltcore.iem.memory; IEM paper Section 3.1, eq. 1-4, Section 4.2)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from ltcore.iem.memory import EpisodicMemory, MemoryOptimizer

D = 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_memory(num_classes=4, sizes=(5, 30, 0, 12), top_n=6, capacity=50, seed=0, **kwargs):
    """A memory whose bank c holds sizes[c] random keys, written in shuffled class order."""
    g = torch.Generator().manual_seed(seed)
    memory = EpisodicMemory(num_classes, D, capacity=capacity, top_n=top_n, **kwargs)
    labels = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=g)]
    memory.write(torch.randn(len(labels), D, generator=g), torch.rand(len(labels), generator=g), labels)
    return memory


def numpy_read(query, keys, values, top_n, delta=1e-3):
    """Eq. 1-2 by hand: (score, weights nearest first, positions nearest first) for one query."""
    dist = ((query.astype(np.float64) - keys.astype(np.float64)) ** 2).sum(1)
    order = np.argsort(dist, kind="stable")[:top_n]
    similarity = 1.0 / (dist[order] + delta)
    weights = similarity / similarity.sum()
    return float((weights * values[order]).sum()), weights, order


def bank_contents(memory, c):
    """{key as a tuple: value} of bank c."""
    _, keys, values = memory.bank(c)
    return {tuple(k): v for k, v in zip(keys.tolist(), values.tolist())}


class ReferenceMemory:
    """Eq. 3-4 and the eviction rule written item by item in plain Python (writes only)."""

    def __init__(self, num_classes, capacity, gamma=0.99):
        self.banks = [OrderedDict() for _ in range(num_classes)]  # key -> value, least recently touched first
        self.capacity, self.gamma = capacity, gamma

    def write(self, keys, values, labels):
        for key, value, c in zip(keys.tolist(), values.tolist(), labels.tolist()):
            bank, key = self.banks[c], tuple(key)
            if key in bank:
                bank[key] = float(np.float32(self.gamma * value + (1 - self.gamma) * bank[key]))
                bank.move_to_end(key)
                continue
            if len(bank) >= self.capacity:
                bank.popitem(last=False)
            bank[key] = value


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, name", [
    (dict(capacity=0), "capacity"), (dict(top_n=0), "top_n"), (dict(num_classes=0), "num_classes"),
    (dict(key_dim=0), "key_dim"), (dict(delta=0.0), "delta"), (dict(gamma=1.5), "gamma"),
    (dict(capacity=2.5), "capacity"),
])
def test_bad_configuration_is_rejected(kwargs, name):
    arguments = dict(num_classes=3, key_dim=D) | kwargs
    with pytest.raises(ValueError, match=name):
        EpisodicMemory(**arguments)


@pytest.mark.parametrize("keys, values, labels, name", [
    (torch.randn(4), torch.rand(4), torch.zeros(4, dtype=torch.long), "keys"),
    (torch.randn(4, D + 1), torch.rand(4), torch.zeros(4, dtype=torch.long), "keys"),
    (torch.full((4, D), float("nan")), torch.rand(4), torch.zeros(4, dtype=torch.long), "keys"),
    (torch.randn(4, D), torch.rand(3), torch.zeros(4, dtype=torch.long), "values"),
    (torch.randn(4, D), torch.rand(4), torch.tensor([0, 1, 2, 3]), "labels"),
    (torch.randn(4, D), torch.rand(4), torch.tensor([0, -1, 0, 0]), "labels"),
    (torch.randn(4, D), torch.rand(4), torch.zeros(4), "labels"),
])
def test_bad_writes_are_rejected(keys, values, labels, name):
    memory = EpisodicMemory(3, D)
    with pytest.raises(ValueError, match=name):
        memory.write(keys, values, labels)
    assert memory.num_slots == 0


def test_bad_reads_are_rejected():
    memory = random_memory()
    with pytest.raises(ValueError, match="queries"):
        memory.read(torch.randn(2, D + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="queries"):
        memory.read_all(torch.tensor([[float("nan")] * D]))
    with pytest.raises(ValueError, match="classes"):
        memory.read(torch.randn(2, D), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="classes"):
        memory.read(torch.randn(2, D), torch.tensor([0]))
    with pytest.raises(ValueError, match="class 9"):
        memory.bank_size(9)


# ---------------------------------------------------------------------------- writing (eq. 3-4)
def test_random_write_sequences_match_the_item_by_item_reference():
    """Capacity, no duplicates (also inside a batch), eq. 4 and the eviction order, all at once."""
    g = torch.Generator().manual_seed(1)
    candidates = torch.randn(25, D, generator=g)   # few distinct keys: duplicates are frequent
    memory, reference = EpisodicMemory(3, D, capacity=7), ReferenceMemory(3, capacity=7)
    for _ in range(40):
        batch = int(torch.randint(1, 12, (1,), generator=g))
        keys = candidates[torch.randint(0, len(candidates), (batch,), generator=g)]
        values, labels = torch.rand(batch, generator=g), torch.randint(0, 3, (batch,), generator=g)
        memory.write(keys, values, labels)
        reference.write(keys, values, labels)
        for c in range(3):
            slots, bank_keys, _ = memory.bank(c)
            assert memory.bank_size(c) <= 7
            assert len(torch.unique(bank_keys, dim=0)) == len(bank_keys)          # no duplicate keys
            assert bank_contents(memory, c) == dict(reference.banks[c])          # eq. 3-4, exactly
            key_of_slot = dict(zip(slots.tolist(), map(tuple, bank_keys.tolist())))
            assert [key_of_slot[s] for s in memory.eviction_order(c)] == list(reference.banks[c])
    all_slots = torch.cat([memory.bank(c)[0] for c in range(3)])
    assert len(torch.unique(all_slots)) == len(all_slots) == memory.num_slots


def test_momentum_update_weighs_the_new_value_by_gamma():
    memory = EpisodicMemory(2, D)
    key = torch.randn(1, D)
    memory.write(key, torch.tensor([0.2]), torch.tensor([1]))
    memory.write(key, torch.tensor([0.9]), torch.tensor([1]))
    assert memory.bank_size(1) == 1
    assert memory.bank(1)[2].item() == np.float32(0.99 * np.float32(0.9) + 0.01 * np.float32(0.2))
    # the same key three times in one batch: sequential eq. 4 updates
    memory.write(key.repeat(3, 1), torch.tensor([0.5, 0.1, 0.7]), torch.tensor([0, 0, 0]))
    expected = np.float32(0.5)
    for new in (0.1, 0.7):
        expected = np.float32(0.99 * np.float32(new) + 0.01 * expected)
    assert memory.bank_size(0) == 1 and memory.bank(0)[2].item() == expected
    assert memory.bank_size(1) == 1   # same key, other class: a separate bank


def test_negative_zero_is_the_same_key_and_one_ulp_is_another():
    memory = EpisodicMemory(1, 2)
    memory.write(torch.tensor([[0.0, 1.0], [-0.0, 1.0]]), torch.tensor([0.3, 0.6]), torch.tensor([0, 0]))
    assert memory.bank_size(0) == 1
    next_up = torch.nextafter(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 2.0]]))
    memory.write(next_up, torch.tensor([0.1]), torch.tensor([0]))
    assert memory.bank_size(0) == 2


def test_eviction_replaces_the_least_recently_touched_slot():
    memory = EpisodicMemory(1, D, capacity=3)
    k = torch.randn(5, D)
    label = torch.tensor([0])
    memory.write(k[:3], torch.rand(3), torch.tensor([0, 0, 0]))   # touched in batch order: k0, k1, k2
    memory.write(k[0:1], torch.rand(1), label)                      # duplicate: k0 becomes the youngest
    slot_of = {tuple(key): slot for slot, key in zip(memory.bank(0)[0].tolist(), memory.bank(0)[1].tolist())}
    assert memory.eviction_order(0) == [slot_of[tuple(k[i].tolist())] for i in (1, 2, 0)]
    memory.write(k[3:4], torch.rand(1), label)                      # full: k1 goes, its slot is reused
    assert set(bank_contents(memory, 0)) == {tuple(k[i].tolist()) for i in (0, 2, 3)}
    assert memory.bank(0)[0].tolist() == [0, 1, 2]                  # same slots, same positions


def test_step_touches_the_slots_it_updates_in_write_order():
    memory = EpisodicMemory(1, D, capacity=4, top_n=2, lr=1e-3)
    keys = 10 * torch.eye(D)[:4]                                              # far apart
    memory.write(keys, torch.rand(4), torch.zeros(4, dtype=torch.long))   # slots 0..3, order 0 1 2 3
    query = (keys[3] + keys[1]).unsqueeze(0) / 2                           # nearest: slots 3 and 1
    read = memory.read(query, torch.tensor([0]), return_weights=True)
    assert sorted(read.slots[0].tolist()) == [1, 3]
    read.scores.sum().backward()
    assert memory.step() == 2
    assert memory.eviction_order(0) == [0, 2, 1, 3]   # read slots last, in the order they were written


def test_writes_to_one_class_leave_the_other_banks_untouched():
    memory = random_memory(capacity=12)
    before = {c: memory.bank(c) for c in (0, 1, 2)}
    orders = {c: memory.eviction_order(c) for c in (0, 1, 2)}
    memory.write(torch.randn(40, D), torch.rand(40), torch.full((40,), 3))   # bank 3 evicts too
    assert memory.bank_size(3) == 12
    for c in (0, 1, 2):
        assert all(torch.equal(a, b) for a, b in zip(before[c], memory.bank(c)))
        assert memory.eviction_order(c) == orders[c]


def test_pool_grows_by_doubling():
    memory = EpisodicMemory(2, D)
    pools = set()
    for i in range(300):
        memory.write(torch.randn(1, D), torch.rand(1), torch.tensor([i % 2]))
        pools.add(memory.keys.data_ptr())
    assert memory.num_slots == 300
    assert len(pools) <= 5   # 64, 128, 256, 512 slots: one copy per doubling, not per write
    assert memory.bank_table.shape[1] < 300


# ---------------------------------------------------------------------------- reading (eq. 1-2)
def test_read_matches_a_numpy_computation_of_eq_1_and_2():
    memory = random_memory()
    queries = torch.randn(9, D, generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([0, 1, 3, 1, 0, 3, 1, 1, 0])
    with torch.no_grad():
        read = memory.read(queries, classes, return_weights=True)
    for i, c in enumerate(classes.tolist()):
        slots, keys, values = memory.bank(c)
        score, weights, positions = numpy_read(queries[i].numpy(), keys.numpy(), values.numpy(), memory.top_n)
        n = len(weights)
        assert read.scores[i].item() == pytest.approx(score, abs=1e-6)
        np.testing.assert_allclose(read.weights[i, :n].detach().numpy(), weights, atol=1e-6)
        assert read.slots[i, :n].tolist() == slots[positions].tolist()
        assert read.weights[i].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_a_stored_key_finds_itself_first():
    memory = random_memory()
    slots, keys, values = memory.bank(1)
    read = memory.read(keys, torch.ones(len(keys), dtype=torch.long), return_weights=True)
    assert torch.equal(read.slots[:, 0], slots)
    assert bool((read.weights[:, 0] > 0.99).all())   # 1 / delta dominates the other weights


def test_banks_smaller_than_top_n_use_every_slot_and_pad():
    memory = random_memory(sizes=(1, 3, 17, 9), top_n=20)   # 17 is padded to width 18
    queries = torch.randn(4, D)
    read = memory.read(queries, torch.arange(4), return_weights=True)
    for c, size in enumerate((1, 3, 17, 9)):
        assert sorted(read.slots[c, :size].tolist()) == sorted(memory.bank(c)[0].tolist())
        assert (read.slots[c, size:] == -1).all() and (read.weights[c, size:] == 0).all()
        slots, keys, values = memory.bank(c)
        score, _, _ = numpy_read(queries[c].numpy(), keys.numpy(), values.numpy(), 20)
        assert read.scores[c].item() == pytest.approx(score, abs=1e-6)
        assert memory.read_all(queries)[c, c].item() == pytest.approx(score, abs=1e-5)
    few = memory.read(queries[[1, 3]], torch.tensor([1, 3]), return_weights=True)   # banks gathered, not the pool
    assert sorted(few.slots[0, :3].tolist()) == sorted(memory.bank(1)[0].tolist()) and (few.slots[0, 3:] == -1).all()
    torch.testing.assert_close(few.scores, read.scores[[1, 3]])


def test_read_with_uneven_queries_per_bank_matches_eq_1_2_and_its_slots():
    # banks of several padded widths (3 .. 70 slots, one empty) read by 1 to 9 queries each
    memory = random_memory(num_classes=6, sizes=(70, 3, 0, 41, 12, 9), top_n=10, capacity=100)
    classes = torch.tensor([0] * 9 + [1] + [2] * 2 + [3] * 5 + [4] * 3 + [5])[torch.randperm(21)]
    queries = torch.randn(21, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        read = memory.read(queries, classes, return_weights=True)
    for i, c in enumerate(classes.tolist()):
        slots, keys, values = memory.bank(c)
        if len(keys) == 0:
            assert read.scores[i] == 0 and (read.slots[i] == -1).all()
            continue
        score, weights, order = numpy_read(queries[i].numpy(), keys.numpy(), values.numpy(), 10)
        assert read.scores[i].item() == pytest.approx(score, abs=1e-6)
        assert read.slots[i, : len(order)].tolist() == slots[order].tolist()        # nearest first
        np.testing.assert_allclose(read.weights[i, : len(order)].numpy(), weights, atol=1e-6)


def test_an_empty_bank_reads_zero():
    memory = random_memory()   # bank 2 is empty
    queries = torch.randn(3, D, requires_grad=True)
    read = memory.read(queries, torch.tensor([2, 2, 0]), return_weights=True)
    assert read.scores[:2].tolist() == [0.0, 0.0]
    assert (read.weights[:2] == 0).all() and (read.slots[:2] == -1).all()
    assert (memory.read_all(queries.detach())[:, 2] == 0).all()
    read.scores.sum().backward()   # still differentiable
    assert torch.isfinite(queries.grad).all()
    empty = EpisodicMemory(2, D)
    assert (empty.read(queries.detach(), torch.tensor([0, 1, 1])) == 0).all()
    assert (empty.read_all(queries.detach()) == 0).all()


def test_read_all_equals_read_and_a_per_class_loop():
    # banks of at most top_n slots (3, 10, 1) are read whole, the others (40, 70, 12) by selection
    memory = random_memory(num_classes=7, sizes=(40, 3, 0, 70, 12, 10, 1), top_n=10)
    queries = torch.randn(11, D, generator=torch.Generator().manual_seed(3))
    scores = memory.read_all(queries)
    assert scores.shape == (11, 7)
    loop = np.zeros((11, 7))
    for c in range(7):
        _, keys, values = memory.bank(c)
        if len(keys):
            loop[:, c] = [numpy_read(q, keys.numpy(), values.numpy(), 10)[0] for q in queries.numpy()]
        per_class = memory.read(queries, torch.full((11,), c))
        np.testing.assert_allclose(scores[:, c].numpy(), per_class.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), loop, atol=1e-5)


def test_reads_split_into_chunks_equal_unsplit_reads(monkeypatch):
    memory = random_memory(num_classes=8, sizes=(40, 3, 0, 70, 12, 33, 10, 8), top_n=10)
    queries = torch.randn(9, D, generator=torch.Generator().manual_seed(4))
    whole, one_bank = memory.read_all(queries), memory.read(queries, torch.arange(9) % 8)
    monkeypatch.setattr("ltcore.iem.memory._CHUNK_ELEMENTS", 50)   # a few rows and banks per chunk (small banks: 2 rows)
    torch.testing.assert_close(memory.read_all(queries), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(memory.read(queries, torch.arange(9) % 8), one_bank, atol=1e-6, rtol=0)


def test_read_all_is_differentiable_with_respect_to_the_queries():
    memory = random_memory().eval()
    queries = torch.randn(5, D, requires_grad=True)
    for c in (0, 1):                       # bank 0 (5 slots) is read whole, bank 1 (30) by selection
        (grad_all,) = torch.autograd.grad(memory.read_all(queries)[:, c].sum(), queries)
        (grad_one,) = torch.autograd.grad(memory.read(queries, torch.full((5,), c)).sum(), queries)
        torch.testing.assert_close(grad_all, grad_one, rtol=1e-4, atol=1e-5)


def test_read_all_cache_follows_writes():
    memory = random_memory()
    queries = torch.randn(4, D)
    first = memory.read_all(queries)
    assert torch.equal(first, memory.read_all(queries))
    memory.write(queries, torch.ones(4), torch.full((4,), 2))      # queries become keys of bank 2
    assert torch.allclose(memory.read_all(queries)[:, 2], torch.ones(4))


# ---------------------------------------------------------------------------- training (eq. 5, 16; 4.2)
def reference_scores(queries, slots, keys, values, delta=1e-3):
    """Eq. 1-2 on given slots [B, n] with dense keys [N, D] and values [N]."""
    valid = slots >= 0
    k = keys[slots.clamp_min(0)]                                     # [B, n, D]
    similarity = torch.where(valid, 1.0 / (((queries.unsqueeze(1) - k) ** 2).sum(-1) + delta), 0.0)
    weights = similarity / similarity.sum(1, keepdim=True)
    return (weights * values[slots.clamp_min(0)]).sum(1)


def test_gradients_reach_only_the_read_slots_and_adam_matches_sparse_adam():
    memory = random_memory(lr=1e-2)
    n = memory.num_slots
    keys_before, values_before = memory.keys[:n].clone(), memory.values[:n].clone()
    g = torch.Generator().manual_seed(7)
    queries = torch.randn(6, D, generator=g)
    positives, negatives = torch.tensor([0, 1, 1, 3, 3, 0]), torch.tensor([1, 3, 0, 1, 0, 1])

    # memory: two training reads (eq. 14-15), MSE (eq. 16), lazy Adam
    q_memory = queries.clone().requires_grad_(True)
    pos = memory.read(q_memory, positives, return_weights=True)
    neg = memory.read(q_memory, negatives, return_weights=True)
    loss = ((pos.scores - 1) ** 2).mean() + (neg.scores ** 2).mean()
    memory.zero_grad()
    loss.backward()
    read_slots = torch.unique(torch.cat([pos.slots, neg.slots]))
    read_slots = read_slots[read_slots >= 0]
    assert memory.step() == len(read_slots) < n

    # reference: dense parameters, the same slots, torch.optim.SparseAdam on the rows read
    keys = nn.Parameter(keys_before.clone())
    values = nn.Parameter(values_before.clone())
    q_reference = queries.clone().requires_grad_(True)
    loss = ((reference_scores(q_reference, pos.slots, keys, values) - 1) ** 2).mean() \
        + (reference_scores(q_reference, neg.slots, keys, values) ** 2).mean()
    loss.backward()
    unread = torch.ones(n, dtype=torch.bool)
    unread[read_slots] = False
    assert (keys.grad[unread] == 0).all() and (values.grad[unread] == 0).all()
    for parameter in (keys, values):
        parameter.grad = torch.sparse_coo_tensor(read_slots.unsqueeze(0), parameter.grad[read_slots],
                                                 parameter.shape, check_invariants=True)
    torch.optim.SparseAdam([keys, values], lr=1e-2).step()

    torch.testing.assert_close(q_memory.grad, q_reference.grad, rtol=1e-5, atol=1e-6)  # backbone learns too
    torch.testing.assert_close(memory.keys[:n], keys.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(memory.values[:n], values.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(memory.keys[:n][unread], keys_before[unread])      # untouched, bit for bit
    assert torch.equal(memory.values[:n][unread], values_before[unread])
    assert (memory.key_exp_avg[:n][unread] == 0).all() and (memory.key_exp_avg[read_slots] != 0).any()
    assert not (memory.keys[:n][~unread] == keys_before[~unread]).all()


def test_moved_keys_are_reindexed_for_duplicate_detection():
    memory = random_memory(lr=1e-2)
    old_slots, old_keys, _ = memory.bank(1)
    memory.read(old_keys[:1] + 0.1, torch.tensor([1])).sum().backward()
    memory.step()
    slots, keys, values = memory.bank(1)
    moved = (keys != old_keys).any(1)
    assert moved.any()
    size = memory.bank_size(1)
    memory.write(keys[moved], torch.zeros(int(moved.sum())), torch.ones(int(moved.sum()), dtype=torch.long))
    assert memory.bank_size(1) == size                          # the moved keys are found again
    memory.write(old_keys[moved], torch.zeros(int(moved.sum())), torch.ones(int(moved.sum()), dtype=torch.long))
    assert memory.bank_size(1) == size + int(moved.sum())      # their old positions are free keys


def trained_steps(memory, steps=3):
    """Reads of three banks, backward and step, then a write, ``steps`` times (seeded)."""
    for step in range(steps):
        queries = torch.randn(5, D, generator=torch.Generator().manual_seed(step))
        memory.read(queries, torch.tensor([0, 1, 3, 1, 1])).sum().backward()
        memory.step()
        memory.write(queries, torch.rand(5, generator=torch.Generator().manual_seed(step)), torch.tensor([1, 1, 0, 3, 1]))
    return memory


def test_step_in_small_chunks_equals_step_in_one_chunk(monkeypatch):
    """step's Adam and fingerprints run in chunks of rows on a CPU: the result is bit-identical."""
    whole = trained_steps(random_memory(lr=1e-2, capacity=30))
    monkeypatch.setattr("ltcore.iem.memory._CPU_ROW_CHUNK_ELEMENTS", 3 * D)   # 3 keys, or 24 values, per chunk
    chunked = trained_steps(random_memory(lr=1e-2, capacity=30))
    assert_same_memory(whole, chunked)
    assert whole._index == chunked._index and whole._slot_key_id == chunked._slot_key_id


def test_reindex_after_an_exact_fingerprint_collision_keeps_one_entry_per_key():
    """The probability-0 case made real: step gives every moved key one fingerprint; the slot first
    written keeps the index entry (nothing merged), and the next step indexes every key again."""
    memory = EpisodicMemory(1, D, top_n=3, lr=1e-2)
    memory.write(10 * torch.eye(D)[:3], torch.rand(3), torch.zeros(3, dtype=torch.long))   # slots 0, 1, 2
    real_fingerprints = memory._fingerprints
    memory._fingerprints = lambda keys: torch.zeros(len(keys), 2, dtype=torch.long)
    memory.read(torch.zeros(1, D), torch.tensor([0])).sum().backward()
    assert memory.step() == 3
    assert memory._index == {(0, 0, 0): 0} and memory.bank_size(0) == 3
    memory._fingerprints = real_fingerprints
    memory.read(torch.zeros(1, D), torch.tensor([0])).sum().backward()
    assert memory.step() == 3
    assert sorted(memory._index.values()) == [0, 1, 2]
    _, keys, _ = memory.bank(0)
    memory.write(keys, torch.rand(3), torch.zeros(3, dtype=torch.long))    # every moved key is found again
    assert memory.bank_size(0) == 3


def test_zero_grad_keeps_the_records_and_eval_reads_record_nothing():
    memory = random_memory(lr=1e-2)
    queries = torch.randn(3, D)
    score = memory.read(queries, torch.tensor([0, 1, 3])).sum()
    MemoryOptimizer(memory).zero_grad()     # the trainer zeroes gradients after the forward pass
    score.backward()
    before = memory.keys.clone()
    MemoryOptimizer(memory).step()
    assert not torch.equal(memory.keys, before) and memory.step() == 0   # applied once, then forgotten
    memory.eval()
    before = memory.keys.clone()
    memory.read(queries.requires_grad_(True), torch.tensor([0, 1, 3])).sum().backward()
    assert memory.step() == 0 and torch.equal(memory.keys, before)
    memory.train()
    with torch.no_grad():
        memory.read(queries, torch.tensor([0, 1, 3]))
    assert memory.step() == 0


def test_a_slot_evicted_after_its_read_gets_no_stale_gradient():
    memory = EpisodicMemory(1, D, capacity=3, top_n=3, lr=1e-2)
    memory.write(torch.randn(3, D), torch.rand(3), torch.zeros(3, dtype=torch.long))
    memory.read(torch.randn(2, D), torch.tensor([0, 0])).sum().backward()
    fresh = torch.randn(3, D)
    memory.write(fresh, torch.rand(3), torch.zeros(3, dtype=torch.long))   # evicts all three slots
    assert memory.step() == 0
    assert set(bank_contents(memory, 0)) == set(map(tuple, fresh.tolist()))


# ---------------------------------------------------------------------------- state
def trained_memory():
    return trained_steps(random_memory(lr=1e-2, capacity=30))


def assert_same_memory(a, b):
    queries = torch.randn(7, D, generator=torch.Generator().manual_seed(11))
    classes = torch.tensor([0, 1, 2, 3, 1, 1, 0])
    assert torch.equal(a.read_all(queries), b.read_all(queries))
    assert torch.equal(a.read(queries, classes), b.read(queries, classes))
    for c in range(a.num_classes):
        assert a.eviction_order(c) == b.eviction_order(c)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state_b[name]), name


def test_save_and_load_give_bit_identical_reads_and_the_same_future(tmp_path):
    memory = trained_memory()
    path = tmp_path / "memory.pt"
    memory.save(path)
    loaded = EpisodicMemory.load(path)
    assert loaded.config == memory.config and loaded.num_slots == memory.num_slots
    assert_same_memory(memory, loaded)
    for m in (memory, loaded):   # the same writes (with evictions) and training step afterwards
        g = torch.Generator().manual_seed(4)
        m.write(torch.randn(40, D, generator=g), torch.rand(40, generator=g), torch.randint(0, 4, (40,), generator=g))
        m.read(torch.randn(4, D, generator=g), torch.tensor([0, 1, 2, 3])).sum().backward()
        m.step()
    assert_same_memory(memory, loaded)


def test_state_dict_round_trip_inside_a_parent_module():
    parent = nn.ModuleDict({"global": trained_memory(), "local": random_memory(seed=3)})
    fresh = nn.ModuleDict({"global": EpisodicMemory(4, D, capacity=30, top_n=6, lr=1e-2),
                           "local": EpisodicMemory(4, D, top_n=6)})
    fresh.load_state_dict(parent.state_dict())
    for name in ("global", "local"):
        assert_same_memory(parent[name], fresh[name])
    with pytest.raises(ValueError, match="4 classes"):
        wrong = nn.ModuleDict({"global": EpisodicMemory(5, D), "local": EpisodicMemory(4, D)})
        wrong.load_state_dict(parent.state_dict())


def test_unreadable_files_give_errors_naming_the_file(tmp_path):
    path = tmp_path / "memory.pt"
    trained_memory().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(path)):
        EpisodicMemory.load(path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=str(foreign)):
        EpisodicMemory.load(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        EpisodicMemory.load(tmp_path / "missing.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.pt", "memory.pt"]   # no temp files left


@pytest.mark.gpu
def test_cuda_matches_cpu():
    memory = trained_memory()
    queries = torch.randn(5, D)
    on_gpu = EpisodicMemory(4, D, capacity=30, top_n=6, lr=1e-2).to("cuda")
    on_gpu.load_state_dict(memory.state_dict())
    torch.testing.assert_close(on_gpu.read_all(queries.cuda()).cpu(), memory.read_all(queries), atol=1e-5, rtol=0)
    on_gpu.write(queries.cuda(), torch.rand(5).cuda(), torch.tensor([0, 1, 2, 3, 0]).cuda())
    assert on_gpu.bank_size(2) == 1 and on_gpu.keys.is_cuda


# ---------------------------------------------------------------------------- benchmark
def test_quick_benchmark_runs_and_agrees_with_the_loop(capsys):
    from ltcore.benchmarks.memory import main
    results = main(["--quick", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "loop/product" in printed
    assert len(results["read_all"]) == 2     # large banks (selection), then banks of 5-60 slots (mostly whole)
    for number, read in enumerate(results["read_all"], 1):
        assert read["max_abs_diff_vs_loop"] <= 1e-5 and read["max_abs_diff_vs_read_loop"] <= 1e-5
        assert read["ours_ms"] > 0 and read["faiss_ms"] > 0 and read["product_ms"] > 0
        assert read["ceiling_vs_loop"] == pytest.approx(read["loop_ms"] / read["product_ms"])
        if read["speedup_vs_loop"] < 30:     # a missed target is explained by its ceiling
            assert f"set-up {number}: {read['speedup_vs_loop']:.1f}x, ceiling {read['ceiling_vs_loop']:.1f}x" in printed
    assert results["write"]["large_banks_full"]
    assert len(results["targets"]) == 3


def test_speedup_plot_draws_each_set_up_beside_its_ceiling():
    import matplotlib
    matplotlib.use("Agg")
    from ltcore.plots import plot_speedup_ceiling
    reads = [dict(classes=20, slots=4000, dim=32, queries=64, speedup_vs_loop=1.4, ceiling_vs_loop=19.7),
             dict(classes=200, slots=6400, dim=32, queries=4, speedup_vs_loop=8.5, ceiling_vs_loop=47.2)]
    fig = plot_speedup_ceiling(reads, 30)
    ax = fig.axes[0]
    assert [round(bar.get_height(), 1) for bar in ax.patches] == [1.4, 8.5, 19.7, 47.2]
    assert ax.get_lines()[0].get_ydata()[0] == 30 and ax.get_yscale() == "log"
    assert [label.get_text() for label in ax.get_xticklabels()][1] == "200 banks, 32 slots\nD 32, 4 queries"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_benchmark_on_a_missing_gpu_is_a_clear_error(capsys):
    from ltcore.benchmarks.memory import main
    with pytest.raises(SystemExit):
        main(["--quick", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
