"""Tests of the Inflated Episodic Memory (ltcore.iem.memory*; IEM paper Section 3.1, eq. 1-4, Section 4.2).

The fast memory is checked equal to the plain reference of eq. 1-4 (ltcore.iem.memory_reference) on
writes, evictions, duplicates, read and read_all; its lazy Adam equal to torch.optim.SparseAdam.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ltcore.iem.memory import EpisodicMemory, MemoryOptimizer
from ltcore.iem.memory_reference import ReferenceMemory
from ltcore.iem.memory_storage import SlotIndex

D = 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_batch(num_classes=4, sizes=(5, 30, 0, 12), seed=0):
    """Keys [N, D], values [N] and labels [N] giving bank c sizes[c] random keys, in shuffled class order."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=g)]
    return torch.randn(len(labels), D, generator=g), torch.rand(len(labels), generator=g), labels


def random_memory(num_classes=4, sizes=(5, 30, 0, 12), top_n=6, capacity=50, seed=0, **kwargs):
    """A memory whose bank c holds sizes[c] random keys, written in shuffled class order."""
    memory = EpisodicMemory(num_classes, D, capacity=capacity, top_n=top_n, **kwargs)
    memory.write(*random_batch(num_classes, sizes, seed))
    return memory


def random_pair(num_classes=4, sizes=(5, 30, 0, 12), top_n=6, capacity=50, seed=0):
    """The same random writes into the memory and into the reference."""
    reference = ReferenceMemory(num_classes, capacity=capacity, top_n=top_n)
    reference.write(*random_batch(num_classes, sizes, seed))
    return random_memory(num_classes, sizes, top_n, capacity, seed), reference


def bank_contents(memory, c):
    """{key as a tuple: value} of bank c."""
    _, keys, values = memory.bank(c)
    return {tuple(k): v for k, v in zip(keys.tolist(), values.tolist())}


def slots_of(memory, c, keys):
    """Slots of bank c holding the given keys (tuples)."""
    slots, bank_keys, _ = memory.bank(c)
    slot_of_key = dict(zip(map(tuple, bank_keys.tolist()), slots.tolist()))
    return [slot_of_key[key] for key in keys]


def saved(memory, name):
    """A tensor of the memory's saved state (the pool cut to the slots in use)."""
    return memory.state_dict()[name].clone()


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, name", [
    (dict(capacity=0), "capacity"), (dict(top_n=0), "top_n"), (dict(num_classes=0), "num_classes"),
    (dict(key_dim=0), "key_dim"), (dict(delta=0.0), "delta"), (dict(gamma=1.5), "gamma"),
    (dict(capacity=2.5), "capacity"), (dict(delta=1e-40), "delta"), (dict(chunk_elements=0), "chunk_elements"),
    (dict(betas=(0.9,)), "betas"), (dict(betas=(0.9, 1.0)), "betas"), (dict(eps=0.0), "eps"), (dict(lr=-1.0), "lr"),
])
def test_bad_configuration_is_rejected(kwargs, name):
    arguments = dict(num_classes=3, key_dim=D) | kwargs
    with pytest.raises(ValueError, match=name):
        EpisodicMemory(**arguments)


@pytest.mark.hostile
@pytest.mark.parametrize("name", ["delta", "gamma", "lr", "eps", "betas"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_settings_are_refused(name, value):
    arguments = dict(betas=(0.9, value)) if name == "betas" else {name: value}
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        EpisodicMemory(3, D, **arguments)


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


@pytest.mark.parametrize("call, message", [
    (lambda m: m.read(torch.randn(2, D + 1), torch.tensor([0, 1])), "queries"),
    (lambda m: m.read_all(torch.tensor([[float("nan")] * D])), "queries"),
    (lambda m: m.read(torch.tensor([[float("inf")] * D]), torch.tensor([0])), "queries"),
    (lambda m: m.read(torch.randn(2, D), torch.tensor([0, 4])), "classes"),
    (lambda m: m.read(torch.randn(2, D), torch.tensor([0])), "classes"),
    (lambda m: m.bank_size(9), r"class must be an integer in \[0, 3\], got 9"),
    (lambda m: m.eviction_order(-1), "class"),
])
def test_bad_reads_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call(random_memory())


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
            assert memory.eviction_order(c) == slots_of(memory, c, reference.eviction_order(c))
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
    memory, reference = EpisodicMemory(1, 2), ReferenceMemory(1)
    for m in (memory, reference):
        m.write(torch.tensor([[0.0, 1.0], [-0.0, 1.0]]), torch.tensor([0.3, 0.6]), torch.tensor([0, 0]))
    assert memory.bank_size(0) == len(reference.banks[0]) == 1
    assert bank_contents(memory, 0) == dict(reference.banks[0])
    next_up = torch.nextafter(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 2.0]]))
    memory.write(next_up, torch.tensor([0.1]), torch.tensor([0]))
    assert memory.bank_size(0) == 2


def test_eviction_replaces_the_least_recently_touched_slot():
    memory = EpisodicMemory(1, D, capacity=3)
    k = torch.randn(5, D)
    label = torch.tensor([0])
    memory.write(k[:3], torch.rand(3), torch.tensor([0, 0, 0]))   # touched in batch order: k0, k1, k2
    memory.write(k[0:1], torch.rand(1), label)                      # duplicate: k0 becomes the youngest
    assert memory.eviction_order(0) == slots_of(memory, 0, [tuple(k[i].tolist()) for i in (1, 2, 0)])
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
        pools.add(memory.allocated_slots)
        assert memory.num_slots <= memory.allocated_slots
    assert memory.num_slots == 300
    assert pools == {64, 128, 256, 512}   # one copy per doubling, not per write
    assert memory.state_dict()["bank_table"].shape[1] < 300   # the table of slot ids doubles too
    assert len(memory.state_dict()["keys"]) == 300             # and only the slots in use are saved


# ---------------------------------------------------------------------------- reading (eq. 1-2)
def assert_read_matches_the_reference(memory, reference, queries, classes, read):
    """Scores, weights and the slots read (nearest first) of ``read`` against the reference, per query."""
    for i, c in enumerate(classes.tolist()):
        score, neighbours = reference.read(queries[i], c)
        n = len(neighbours)
        assert read.scores[i].item() == pytest.approx(score, abs=1e-6)
        np.testing.assert_allclose(read.weights[i, :n].detach().numpy(), [w for _, w in neighbours], atol=1e-6)
        assert read.slots[i, :n].tolist() == slots_of(memory, c, [key for key, _ in neighbours])   # nearest first
        assert (read.slots[i, n:] == -1).all() and (read.weights[i, n:] == 0).all()
        if n:
            assert read.weights[i].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_read_matches_the_reference_of_eq_1_and_2():
    memory, reference = random_pair()
    queries = torch.randn(9, D, generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([0, 1, 3, 1, 0, 3, 1, 1, 0])
    with torch.no_grad():
        read = memory.read(queries, classes, return_weights=True)
    assert_read_matches_the_reference(memory, reference, queries, classes, read)


def test_a_stored_key_finds_itself_first():
    memory = random_memory()
    slots, keys, values = memory.bank(1)
    read = memory.read(keys, torch.ones(len(keys), dtype=torch.long), return_weights=True)
    assert torch.equal(read.slots[:, 0], slots)
    assert bool((read.weights[:, 0] > 0.99).all())   # 1 / delta dominates the other weights


def test_banks_smaller_than_top_n_use_every_slot_and_pad():
    memory, reference = random_pair(sizes=(1, 3, 17, 9), top_n=20)   # 17 is padded to width 18
    queries = torch.randn(4, D)
    read = memory.read(queries, torch.arange(4), return_weights=True)
    for c, size in enumerate((1, 3, 17, 9)):
        assert sorted(read.slots[c, :size].tolist()) == sorted(memory.bank(c)[0].tolist())
        assert (read.slots[c, size:] == -1).all() and (read.weights[c, size:] == 0).all()
        assert memory.read_all(queries)[c, c].item() == pytest.approx(reference.read(queries[c], c)[0], abs=1e-5)
    assert_read_matches_the_reference(memory, reference, queries, torch.arange(4), read)
    few = memory.read(queries[[1, 3]], torch.tensor([1, 3]), return_weights=True)   # banks gathered, not the pool
    assert sorted(few.slots[0, :3].tolist()) == sorted(memory.bank(1)[0].tolist()) and (few.slots[0, 3:] == -1).all()
    torch.testing.assert_close(few.scores, read.scores[[1, 3]])


def test_read_with_uneven_queries_per_bank_matches_the_reference():
    # banks of several padded widths (3 .. 70 slots, one empty) read by 1 to 9 queries each
    memory, reference = random_pair(num_classes=6, sizes=(70, 3, 0, 41, 12, 9), top_n=10, capacity=100)
    classes = torch.tensor([0] * 9 + [1] + [2] * 2 + [3] * 5 + [4] * 3 + [5])[torch.randperm(21)]
    queries = torch.randn(21, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        read = memory.read(queries, classes, return_weights=True)
    assert_read_matches_the_reference(memory, reference, queries, classes, read)
    assert (read.scores[classes == 2] == 0).all() and (read.slots[classes == 2] == -1).all()


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


def test_read_all_equals_read_and_the_reference():
    # banks of at most top_n slots (3, 10, 1) are read whole, the others (40, 70, 12) by selection
    memory, reference = random_pair(num_classes=7, sizes=(40, 3, 0, 70, 12, 10, 1), top_n=10)
    queries = torch.randn(11, D, generator=torch.Generator().manual_seed(3))
    scores = memory.read_all(queries)
    assert scores.shape == (11, 7)
    for c in range(7):
        per_class = memory.read(queries, torch.full((11,), c))
        np.testing.assert_allclose(scores[:, c].numpy(), per_class.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), [reference.read_all(q) for q in queries], atol=1e-5)


def test_reads_split_into_chunks_equal_unsplit_reads():
    whole = random_memory(num_classes=8, sizes=(40, 3, 0, 70, 12, 33, 10, 8), top_n=10)
    chunked = random_memory(num_classes=8, sizes=(40, 3, 0, 70, 12, 33, 10, 8), top_n=10,
                            chunk_elements=50)   # a few rows and banks per chunk (small banks: 2 rows)
    queries = torch.randn(9, D, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(chunked.read_all(queries), whole.read_all(queries), atol=1e-6, rtol=0)
    classes = torch.arange(9) % 8
    torch.testing.assert_close(chunked.read(queries, classes), whole.read(queries, classes), atol=1e-6, rtol=0)


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


@pytest.mark.hostile
@pytest.mark.parametrize("magnitude", [1e3, 1e6, 1e10, 1e19, 1e30, 1e38])
def test_read_and_read_all_agree_on_huge_finite_queries(magnitude):
    """Queries far from every key: the two reads choose the same neighbours and give the reference's finite
    scores (eq. 1-2 in float64), where ||q||^2 overflowed float32 into NaN in read_all and 0 in read."""
    memory, reference = random_pair(num_classes=5, sizes=(40, 3, 0, 70, 12), top_n=10)
    directions = torch.randn(6, D, generator=torch.Generator().manual_seed(8))
    queries = magnitude * directions / directions.abs().amax(1, keepdim=True)   # largest coordinate: magnitude
    scores = memory.read_all(queries)
    for c in range(5):
        one_bank = memory.read(queries, torch.full((6,), c)).detach()
        expected = [reference.read(q.tolist(), c)[0] for q in queries]
        np.testing.assert_allclose(scores[:, c].numpy(), one_bank.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one_bank.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.hostile
@pytest.mark.parametrize("key_scale, value_scale", [(1e30, 1.0), (1.0, 1e30), (1e38, 1e38)])
def test_huge_finite_keys_and_values_read_finite_and_alike(key_scale, value_scale):
    memory, reference = EpisodicMemory(3, D, top_n=4), ReferenceMemory(3, top_n=4)
    keys, values, labels = random_batch(3, (9, 2, 5), seed=2)
    for m in (memory, reference):
        m.write(key_scale * keys / 4, value_scale * values, labels)   # /4: every coordinate stays finite
    queries = key_scale * torch.randn(5, D, generator=torch.Generator().manual_seed(9)) / 4
    scores = memory.read_all(queries)
    assert torch.isfinite(scores).all()
    for c in range(3):
        one_bank = memory.read(queries, torch.full((5,), c)).detach()
        np.testing.assert_allclose(scores[:, c].numpy(), one_bank.numpy(), rtol=1e-5)
        np.testing.assert_allclose(one_bank.numpy(), [reference.read(q.tolist(), c)[0] for q in queries], rtol=1e-5)


# ---------------------------------------------------------------------------- training (eq. 5, 16; 4.2)
def reference_scores(queries, slots, keys, values, delta=1e-3):
    """Eq. 1-2 on given slots [B, n] with dense keys [N, D] and values [N] (differentiable)."""
    valid = slots >= 0
    k = keys[slots.clamp_min(0)]                                     # [B, n, D]
    similarity = torch.where(valid, 1.0 / (((queries.unsqueeze(1) - k) ** 2).sum(-1) + delta), 0.0)
    weights = similarity / similarity.sum(1, keepdim=True)
    return (weights * values[slots.clamp_min(0)]).sum(1)


def test_gradients_reach_only_the_read_slots_and_adam_matches_sparse_adam():
    memory = random_memory(lr=1e-2)
    n = memory.num_slots
    keys_before, values_before = saved(memory, "keys"), saved(memory, "values")
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

    keys_after, values_after, key_moment = saved(memory, "keys"), saved(memory, "values"), saved(memory, "key_exp_avg")
    torch.testing.assert_close(q_memory.grad, q_reference.grad, rtol=1e-5, atol=1e-6)  # backbone learns too
    torch.testing.assert_close(keys_after, keys.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(values_after, values.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(keys_after[unread], keys_before[unread])      # untouched, bit for bit
    assert torch.equal(values_after[unread], values_before[unread])
    assert (key_moment[unread] == 0).all() and (key_moment[read_slots] != 0).any()
    assert not (keys_after[~unread] == keys_before[~unread]).all()


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


def assert_every_key_is_found_again(memory):
    """Writing each bank's keys again adds no slot: the exact-key index knows every key where it is."""
    sizes = memory.bank_sizes()
    for c in range(memory.num_classes):
        _, keys, _ = memory.bank(c)
        memory.write(keys, torch.rand(len(keys)), torch.full((len(keys),), c))
    assert memory.bank_sizes().tolist() == sizes.tolist()


def test_step_in_small_chunks_equals_step_in_one_chunk():
    """step's Adam and fingerprints run in chunks of rows on a CPU: the result is bit-identical."""
    whole = trained_steps(random_memory(lr=1e-2, capacity=30))
    chunked = trained_steps(random_memory(lr=1e-2, capacity=30, chunk_elements=3 * D))   # 3 keys, or 24 values
    same_chunks = EpisodicMemory(**{**chunked.config, "chunk_elements": whole.chunk_elements})
    same_chunks.load_state_dict(chunked.state_dict())   # reads chunked alike, so they can be compared bit for bit
    assert_same_memory(whole, same_chunks)
    assert_every_key_is_found_again(whole)
    assert_every_key_is_found_again(chunked)


def test_reindex_after_an_exact_fingerprint_collision_keeps_one_entry_per_key():
    """The probability-0 case made real on the storage's index: when moved keys all get one fingerprint,
    the slot first written keeps the index entry (nothing merged), and the next re-index finds every key."""
    index = SlotIndex(num_classes=1, capacity=3)
    index.reserve(3)
    assert [index.place((0, fingerprint, 0)) for fingerprint in (1, 2, 3)] == [0, 1, 2]
    index.reindex([2, 0, 1], np.zeros((3, 2), dtype=np.int64))          # an exact collision of the three keys
    assert index.slot_of_key == {(0, 0, 0): 0} and len(index.age_order[0]) == 3
    assert list(index.age_order[0]) == [0, 1, 2]                          # touched in the order first written
    index.reindex([0, 1, 2], np.array([[4, 0], [5, 0], [6, 0]]))
    assert [index.find((0, fingerprint, 0)) for fingerprint in (4, 5, 6)] == [0, 1, 2]
    assert index.find((0, 0, 0)) is None and sorted(index.slot_of_key.values()) == [0, 1, 2]


def test_zero_grad_keeps_the_records_and_eval_reads_record_nothing():
    memory = random_memory(lr=1e-2)
    queries = torch.randn(3, D)
    score = memory.read(queries, torch.tensor([0, 1, 3])).sum()
    MemoryOptimizer(memory).zero_grad()     # the trainer zeroes gradients after the forward pass
    score.backward()
    before = saved(memory, "keys")
    MemoryOptimizer(memory).step()
    assert not torch.equal(saved(memory, "keys"), before) and memory.step() == 0   # applied once, then forgotten
    memory.eval()
    before = saved(memory, "keys")
    memory.read(queries.requires_grad_(True), torch.tensor([0, 1, 3])).sum().backward()
    assert memory.step() == 0 and torch.equal(saved(memory, "keys"), before)
    memory.train()
    with torch.no_grad():
        memory.read(queries, torch.tensor([0, 1, 3]))
    assert memory.step() == 0
    with pytest.raises(ValueError, match="EpisodicMemory"):
        MemoryOptimizer(nn.Linear(2, 2))


def test_a_slot_evicted_after_its_read_gets_no_stale_gradient():
    memory = EpisodicMemory(1, D, capacity=3, top_n=3, lr=1e-2)
    memory.write(torch.randn(3, D), torch.rand(3), torch.zeros(3, dtype=torch.long))
    memory.read(torch.randn(2, D), torch.tensor([0, 0])).sum().backward()
    fresh = torch.randn(3, D)
    memory.write(fresh, torch.rand(3), torch.zeros(3, dtype=torch.long))   # evicts all three slots
    assert memory.step() == 0
    assert set(bank_contents(memory, 0)) == set(map(tuple, fresh.tolist()))


@pytest.mark.hostile
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_step_refuses_a_non_finite_gradient_and_changes_nothing(bad):
    memory, twin = trained_memory(), trained_memory()
    before = memory.state_dict()
    queries = torch.randn(4, D)
    (memory.read(queries, torch.tensor([0, 1, 3, 1])).sum() * bad).backward()   # gradients NaN (or inf and NaN)
    with pytest.raises(ValueError, match="EpisodicMemory.step: the gradient .* is non-finite"):
        memory.step()
    for name, value in memory.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[name]), name    # keys, values, Adam moments unchanged
    assert memory.step() == 0                                # the refused records are forgotten
    for m in (memory, twin):                                 # and the next step is the one the twin takes
        m.read(queries, torch.tensor([0, 1, 3, 1])).sum().backward()
        m.step()
    assert_same_memory(memory, twin)
    assert torch.isfinite(memory.read_all(queries)).all()


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


@pytest.mark.hostile
def test_a_saved_memory_loads_with_weights_only(tmp_path):
    """The file holds tensors and plain data only, so it loads without unpickling code."""
    path = tmp_path / "memory.pt"
    trained_memory().save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "ltcore.memory.EpisodicMemory/2" and payload["config"]["capacity"] == 30


def test_files_of_format_1_still_load(tmp_path):
    """Format 1 lacks chunk_elements and the stored bounds; its state-dict keys are those of format 2."""
    memory = trained_memory()
    path = tmp_path / "memory.pt"
    memory.save(path)
    payload = torch.load(path, weights_only=True)
    payload["format"] = "ltcore.memory.EpisodicMemory/1"
    del payload["config"]["chunk_elements"]
    for name in ("key_bound", "value_bound"):
        del payload["state_dict"]["_extra_state"][name]
    torch.save(payload, path)
    assert_same_memory(memory, EpisodicMemory.load(path))


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
    future = tmp_path / "future.pt"
    torch.save({"format": "ltcore.memory.EpisodicMemory/3", "config": {}, "state_dict": {}}, future)
    with pytest.raises(ValueError, match=f"{future} has format 'ltcore.memory.EpisodicMemory/3'"):
        EpisodicMemory.load(future)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        EpisodicMemory.load(tmp_path / "missing.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.pt", "future.pt", "memory.pt"]   # no temp files


def _saved(payload, name):
    """A tensor of a loaded file's state dict or of its extra state."""
    state = payload["state_dict"]
    return state[name] if name in state else state["_extra_state"][name]


def _set(payload, name, index, value):
    _saved(payload, name)[index] = value


TAMPERINGS = {   # what a damaged or crafted file may hold, and the error it gets
    "NaN key": (lambda p: _set(p, "keys", (0, 0), math.nan), "non-finite keys"),
    "inf value": (lambda p: _set(p, "values", 1, math.inf), "non-finite values"),
    "NaN Adam moment": (lambda p: _set(p, "value_exp_avg", 0, math.nan), "non-finite value_exp_avg"),
    "negative second moment": (lambda p: _set(p, "key_exp_avg_sq", (0, 0), -1.0), "negative second moments"),
    "banks beyond the capacity": (lambda p: p["config"].update(capacity=10), r"bank sizes in \[.*, 30\]"),
    "infinite lr": (lambda p: p["config"].update(lr=math.inf), "lr must be a finite number"),
    "a slot in two banks": (lambda p: _set(p, "bank_table", (0, 0), int(_saved(p, "bank_table")[1, 0])),
                            "table and age order differ|each slot exactly once"),
    "bound below the keys": (lambda p: p["state_dict"]["_extra_state"].update(key_bound=0.0), "bounds"),
    "repeated generation": (lambda p: _set(p, "insert_seq", 1, int(_saved(p, "insert_seq")[0])), "generations"),
}


@pytest.mark.hostile
@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_memory_file_is_refused_naming_the_file(tmp_path, tampering):
    """Non-finite state, banks beyond the configured capacity and inconsistent tables do not load."""
    path = tmp_path / "memory.pt"
    trained_memory().save(path)
    payload = torch.load(path, weights_only=True)
    tamper, message = TAMPERINGS[tampering]
    tamper(payload)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=f"episodic memory file {path} is corrupt: .*({message})"):
        EpisodicMemory.load(path)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    memory = trained_memory()
    queries = torch.randn(5, D)
    on_gpu = EpisodicMemory(4, D, capacity=30, top_n=6, lr=1e-2).to("cuda")
    on_gpu.load_state_dict(memory.state_dict())
    torch.testing.assert_close(on_gpu.read_all(queries.cuda()).cpu(), memory.read_all(queries), atol=1e-5, rtol=0)
    on_gpu.write(queries.cuda(), torch.rand(5).cuda(), torch.tensor([0, 1, 2, 3, 0]).cuda())
    assert on_gpu.bank_size(2) == 1 and on_gpu.device.type == "cuda" and on_gpu.bank(2)[1].is_cuda


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_benchmark_on_a_missing_gpu_is_a_clear_error(capsys):
    from ltcore.benchmarks.memory import main
    with pytest.raises(SystemExit):
        main(["--quick", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
