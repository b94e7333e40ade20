"""Benchmark of the Inflated Episodic Memory (:mod:`ltcore.iem.memory`; IEM paper Section 3.1, 4.2).

Run with ``python -m ltcore bench memory`` (``--quick`` for the small sizes used by tests and
notebook 02). Everything is measured in one process, methods interleaved round by round and
the best round kept, so that the load of a shared machine hits every method alike. Before each
timed read, 128 MB are written to push every method's data out of the CPU caches, as a
backbone's forward pass would in inference; no method finds data warmed by the one before it:

1. ``read_all`` (every bank for every query, batched) against a straightforward per-class
   Python loop on the same banks, which computes each bank's eq. 1-2 with the same distance
   formula; the outputs must agree to 1e-5 (asserted) except where the n-th and (n+1)-th
   distances are exactly equal in float32 and either slot is a right answer (counted).
   Also reported, without a target: a loop over the classes calling the module's own
   ``read(queries, c)`` (what one writes without ``read_all``), and its largest difference.
2. ``read_all`` against faiss ``IndexFlatL2`` top-n, one index per class, followed by the same
   inverse-distance weighting (eq. 2) in numpy.
3. The arithmetic ceiling: the one matrix product of every query with every key (``[B, D] @
   [D, slots]``, the faster of two layouts), which any exact brute-force ``read_all`` must
   compute. ``loop / product`` is the most such a read could gain over the loop on this
   machine, even if its selection, weighting and bookkeeping took no time at all. Where it is
   below the 30x target, no exact brute-force implementation can meet the target here.
4. ``write`` cost per item into banks of ~1k slots (1000 at the start, appending, so pool
   growth is included) against banks full at 50k slots (every new key evicts the oldest
   slot); the same batches go to both, interleaved, best of the rounds.

Everything a read needs is built before timing: the loop's per-class tensors, the faiss indexes
and read_all's packed copy of the banks (in training the keys move every step, so a faiss
memory would also pay rebuilds); read_all's first, packing call is reported as "cold".

Default sizes, top_n 50 throughout: 256 queries on 100 classes with banks of 800-1200 slots
(uniform, mean ~1000) and keys of dimension 128, then 512; 256 queries, then 16 (a small
inference batch), then 1 (one image), on 1000 classes with tail-sized banks of 10-30 slots
(fewer than top_n: read whole, nothing selected), dimension 128. Writes:
40 batches of 256 keys of dimension 128 into 4 classes.

What the loop ratio measures: both sides do the same arithmetic (one distance per query and
slot, one top-n per query and bank), so batching saves the loop's per-class overhead (about
a dozen small tensor operations, ~0.05-0.2 ms per class) and little else. Where that arithmetic dominates
(hundreds of slots per bank, hundreds of queries) the ratio stays near 1 whatever the code;
it is large only where the per-class overhead dominates (many small banks, few queries).
Keys are class-clustered Gaussians. ``--threads`` sets ``torch.set_num_threads`` and
``faiss.omp_set_num_threads`` to the same value for both sides; the default is 1 because on a
shared machine an OpenMP region can wait milliseconds for a descheduled thread, which then
measures the neighbours rather than the code (``--threads 2`` to use both cores).

``--device cuda`` runs ``read_all``, the loop and the writes on a GPU (timed with
``torch.cuda.synchronize``); faiss stays on the CPU (faiss-cpu). On a GPU each small tensor
operation of the loop costs a kernel launch, so its per-class overhead weighs more than on a
CPU; we could not measure that here (no GPU).

Taught in notebook 02, *Inflated Episodic Memory*.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import faiss
import numpy as np
import torch

from ltcore.config import get_device
from ltcore.iem.memory import EpisodicMemory

TARGET_SPEEDUP_VS_LOOP = 30.0
TARGET_RATIO_VS_FAISS = 1.5
TARGET_WRITE_RATIO = 1.5
_CACHE_SWEEP_BYTES = 128 << 20   # written before each timed call: larger than a server CPU's last level cache

# read_all set-ups: (classes, smallest bank, largest bank, key dimension, queries)
DEFAULT = dict(reads=((100, 800, 1200, 128, 256), (100, 800, 1200, 512, 256), (1000, 10, 30, 128, 256),
                      (1000, 10, 30, 128, 16), (1000, 10, 30, 128, 1)), top_n=50,
               rounds=3, write_classes=4, write_dim=128, write_small=1000, write_large=50000, write_batches=40)
QUICK = dict(reads=((20, 150, 250, 32, 64), (200, 5, 60, 32, 4)), top_n=50, rounds=3,
             write_classes=4, write_dim=32, write_small=100, write_large=2000, write_batches=30)


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements, print a table and return every number."""
    parser = argparse.ArgumentParser(prog="python -m ltcore bench memory", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds), for tests and notebooks")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and faiss alike (default 1: stable on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device of the memory and the loop (default cpu)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        device = get_device(args.device)
    except RuntimeError as error:      # e.g. --device cuda without a GPU
        parser.error(str(error))
    sizes = QUICK if args.quick else DEFAULT
    previous_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    try:
        reads = []
        for number, setup in enumerate(sizes["reads"], 1):
            print(f"read_all set-up {number}/{len(sizes['reads'])}: {setup[0]} classes, banks of {setup[1]}-{setup[2]} "
                  f"slots, dim {setup[3]}, {setup[4]} queries ...", file=sys.stderr, flush=True)
            reads.append(_bench_reads(*setup, sizes, generator, device))
        print("writes ...", file=sys.stderr, flush=True)
        writes = _bench_writes(sizes, generator, device)
    finally:  # a caller (test, notebook) keeps its own thread settings
        torch.set_num_threads(previous_threads[0])
        faiss.omp_set_num_threads(previous_threads[1])
    results = {
        "quick": args.quick, "threads": args.threads, "device": str(device), "load_average_1min": os.getloadavg()[0],
        "sizes": {k: [list(r) for r in v] if k == "reads" else v for k, v in sizes.items()},
        "read_all": reads, "write": writes,
        "targets": {
            f"read_all >= {TARGET_SPEEDUP_VS_LOOP:g}x faster than the per-class loop":
                all(r["speedup_vs_loop"] >= TARGET_SPEEDUP_VS_LOOP for r in reads),
            f"read_all <= {TARGET_RATIO_VS_FAISS:g}x the time of faiss":
                all(r["time_ratio_vs_faiss"] <= TARGET_RATIO_VS_FAISS for r in reads),
            f"write per item at {sizes['write_large']} slots <= {TARGET_WRITE_RATIO:g}x at {sizes['write_small']}":
                writes["ratio_large_vs_small"] <= TARGET_WRITE_RATIO,
        },
    }
    _print_table(results)
    return results


# ---------------------------------------------------------------------------- reads
def _bench_reads(num_classes: int, bank_min: int, bank_max: int, dim: int, num_queries: int, sizes: dict,
                 generator: torch.Generator, device: torch.device) -> dict:
    top_n = sizes["top_n"]
    bank_sizes = torch.randint(bank_min, bank_max + 1, (num_classes,), generator=generator)
    labels = torch.repeat_interleave(torch.arange(num_classes), bank_sizes)
    labels = labels[torch.randperm(len(labels), generator=generator)]   # banks interleaved in the pool
    centres = torch.randn(num_classes, dim, generator=generator)
    keys = centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=generator)
    memory = EpisodicMemory(num_classes, dim, top_n=top_n, device=device).eval()
    memory.write(keys.to(device), torch.rand(len(labels), generator=generator).to(device), labels.to(device))
    query_classes = torch.randint(0, num_classes, (num_queries,), generator=generator)
    queries = centres[query_classes] + 0.5 * torch.randn(num_queries, dim, generator=generator)

    banks = [memory.bank(c)[1:] for c in range(num_classes)]           # per-class (keys [L, D], values [L])
    cpu_banks = [(keys.cpu(), values.cpu()) for keys, values in banks]  # faiss-cpu's copy
    indexes = [_faiss_index(bank_keys) for bank_keys, _ in cpu_banks]
    device_queries = queries.to(device)
    all_keys = memory.keys[:memory.num_slots]                           # [S, D]
    all_keys_t = all_keys.T.contiguous()                                # [D, S]
    with torch.no_grad():
        start = time.perf_counter()
        _synchronize(device)
        memory.read_all(device_queries)                                 # packs the banks
        _synchronize(device)
        cold = time.perf_counter() - start
        times, outputs = _interleaved({
            "ours": lambda: memory.read_all(device_queries),
            "loop": lambda: _per_class_loop(device_queries, banks, top_n, memory.delta),
            "read_loop": lambda: _read_loop(memory, device_queries),
            "faiss": lambda: _faiss_read_all(queries.numpy(), indexes, cpu_banks, top_n, memory.delta),
            "product_qk": lambda: torch.mm(device_queries, all_keys_t),  # [B, S]: the arithmetic ceiling,
            "product_kq": lambda: torch.mm(all_keys, device_queries.T),  # [S, B]: in its faster layout
        }, sizes["rounds"], device)
    product = min(times["product_qk"], times["product_kq"])
    outputs = {name: output.cpu() if isinstance(output, torch.Tensor) else output for name, output in outputs.items()}
    # An exact float32 tie between the n-th and (n+1)-th distance lets either slot in: both
    # answers are right, so these (query, class) pairs are compared separately.
    ties = _boundary_ties(device_queries, banks, top_n).cpu()   # in the arithmetic of the device
    diff_loop = (outputs["ours"] - outputs["loop"]).abs()
    diff_loop_untied = float(diff_loop[~ties].max())
    diff_faiss = np.abs(outputs["ours"].numpy() - outputs["faiss"])
    assert diff_loop_untied <= 1e-5, f"read_all differs from the per-class loop by {diff_loop_untied:.2e} > 1e-5"
    return {"classes": num_classes, "dim": dim, "queries": num_queries, "slots": memory.num_slots, "ours_ms": 1e3 * times["ours"],
            "ours_cold_ms": 1e3 * cold, "loop_ms": 1e3 * times["loop"],
            "faiss_ms": 1e3 * times["faiss"], "speedup_vs_loop": times["loop"] / times["ours"],
            "product_ms": 1e3 * product, "ceiling_vs_loop": times["loop"] / product,
            "read_loop_ms": 1e3 * times["read_loop"], "speedup_vs_read_loop": times["read_loop"] / times["ours"],
            "max_abs_diff_vs_read_loop": float((outputs["ours"] - outputs["read_loop"]).abs().max()),
            "time_ratio_vs_faiss": times["ours"] / times["faiss"], "max_abs_diff_vs_loop": diff_loop_untied,
            "tied_pairs": int(ties.sum()), "max_abs_diff_vs_loop_tied_pairs": float(diff_loop.max()),
            "max_abs_diff_vs_faiss": float(diff_faiss.max()),
            # faiss rounds distances differently, so near-ties (not only exact ones) can swap a slot
            "pairs_differing_from_faiss_by_1e-5": int((diff_faiss > 1e-5).sum())}


def _per_class_loop(queries: torch.Tensor, banks: list[tuple[torch.Tensor, torch.Tensor]], top_n: int,
                    delta: float) -> torch.Tensor:
    """Eq. 1-2 one bank at a time: the straightforward implementation read_all replaces."""
    scores = queries.new_zeros(len(queries), len(banks))
    query_sq = queries.square().sum(1, keepdim=True)                    # [B, 1]
    for c, (keys, values) in enumerate(banks):
        if len(keys) == 0:
            continue
        top_rank, top_index = _ranking(queries, keys).topk(min(top_n, len(keys)), dim=1, largest=False)  # [B, n]
        top_dist = top_rank.add_(query_sq).clamp_min_(0)                # + ||q||^2: squared distances
        similarity = (top_dist + delta).reciprocal_()                   # 1 / x, as read_all writes it
        scores[:, c] = (similarity * values[top_index]).sum(1) / similarity.sum(1)
    return scores


def _read_loop(memory: EpisodicMemory, queries: torch.Tensor) -> torch.Tensor:
    """[B, C] by the module's own one-bank read, one class at a time: what one writes without read_all."""
    return torch.stack([memory.read(queries, torch.full((len(queries),), c, device=queries.device))
                        for c in range(memory.num_classes)], dim=1)


def _ranking(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[B, L] ||k||^2 - 2 q.k, which ranks a bank's keys like ||q - k||^2, as read_all ranks them."""
    return torch.addmm(keys.square().sum(1), queries, keys.T, alpha=-2)


def _boundary_ties(queries: torch.Tensor, banks: list, top_n: int) -> torch.Tensor:
    """[B, C] True where the n-th and (n+1)-th smallest distance of the bank are equal (in read_all's ranking)."""
    ties = torch.zeros(len(queries), len(banks), dtype=torch.bool, device=queries.device)
    for c, (keys, _) in enumerate(banks):
        if len(keys) > top_n:
            smallest = _ranking(queries, keys).topk(top_n + 1, dim=1, largest=False).values  # sorted
            ties[:, c] = smallest[:, -1] == smallest[:, -2]
    return ties


def _faiss_index(keys: torch.Tensor) -> faiss.IndexFlatL2:
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(np.ascontiguousarray(keys.numpy()))
    return index


def _faiss_read_all(queries: np.ndarray, indexes: list, banks: list, top_n: int, delta: float) -> np.ndarray:
    scores = np.zeros((len(queries), len(indexes)), dtype=np.float32)
    for c, (index, (_, values)) in enumerate(zip(indexes, banks)):
        top_dist, top_index = index.search(queries, min(top_n, index.ntotal))  # [B, n], [B, n]
        similarity = 1.0 / (top_dist + delta)
        scores[:, c] = (similarity * values.numpy()[top_index]).sum(1) / similarity.sum(1)
    return scores


# ---------------------------------------------------------------------------- writes
def _bench_writes(sizes: dict, generator: torch.Generator, device: torch.device) -> dict:
    num_classes, dim, batch = sizes["write_classes"], sizes["write_dim"], 256

    def filled(slots_per_bank: int) -> EpisodicMemory:
        memory = EpisodicMemory(num_classes, dim, capacity=sizes["write_large"], device=device)
        fill = slots_per_bank * num_classes
        for start in range(0, fill, 4096):
            count = min(4096, fill - start)
            memory.write(torch.randn(count, dim, generator=generator).to(device),
                         torch.rand(count, generator=generator).to(device),
                         (torch.arange(start, start + count) % num_classes).to(device))
        return memory

    large = filled(sizes["write_large"])          # stays full: every round evicts as much as the first
    batches = [(torch.randn(batch, dim, generator=generator).to(device), torch.rand(batch, generator=generator).to(device),
                torch.randint(0, num_classes, (batch,), generator=generator).to(device))
               for _ in range(sizes["write_batches"])]
    best = {"small": float("inf"), "large": float("inf")}
    for _ in range(sizes["rounds"]):
        memories = {"small": filled(sizes["write_small"]), "large": large}   # a fresh ~1k-slot memory per round
        total = {"small": 0.0, "large": 0.0}
        for keys, values, labels in batches:                            # interleaved, same batches for both
            for name, memory in memories.items():
                start = time.perf_counter()
                memory.write(keys, values, labels)
                _synchronize(device)
                total[name] += time.perf_counter() - start
        best = {name: min(best[name], total[name]) for name in best}
    items = batch * len(batches)
    small, large_cost = 1e6 * best["small"] / items, 1e6 * best["large"] / items
    return {"dim": dim, "classes": num_classes, "batch": batch, "items": items,
            "small_slots_per_bank": sizes["write_small"], "large_slots_per_bank": sizes["write_large"],
            "us_per_item_small": small, "us_per_item_large": large_cost, "ratio_large_vs_small": large_cost / small,
            "large_banks_full": all(large.bank_size(c) == sizes["write_large"] for c in range(num_classes))}


# ---------------------------------------------------------------------------- helpers
def _interleaved(methods: dict[str, Callable[[], object]], rounds: int,
                 device: torch.device) -> tuple[dict, dict]:
    """Best wall time of each method over ``rounds`` rounds that run every method once, and its output.

    Each call starts with the CPU caches holding other data (as after a backbone's forward in
    inference), so that no method finds its keys in a cache warmed by the one before it.
    """
    best = {name: float("inf") for name in methods}
    outputs = {}
    cache_sweep = torch.zeros(_CACHE_SWEEP_BYTES // 4)
    for _ in range(rounds):
        for name, method in methods.items():
            cache_sweep.add_(1.0)                       # evicts the last level cache (32 MB here)
            _synchronize(device)
            start = time.perf_counter()
            outputs[name] = method()
            _synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that wall times measure it (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_table(results: dict) -> None:
    print(f"IEM memory benchmark ({'quick' if results['quick'] else 'default'} sizes, device {results['device']}, "
          f"{results['threads']} thread(s) for torch and faiss, load average {results['load_average_1min']:.1f})")
    print(f"{'read_all':<9}{'classes':>8}{'dim':>5}{'queries':>8}{'slots':>8}{'ours ms':>9}{'(cold)':>8}{'loop ms':>9}"
          f"{'faiss ms':>9}{'loop/ours':>11}{'ours/faiss':>11}{'|d| loop':>10}{'ties':>6}{'|d| faiss':>10}"
          f"{'read() loop ms':>16}{'/ours':>9}{'product ms':>12}{'loop/product':>14}")
    for r in results["read_all"]:
        print(f"{'':<9}{r['classes']:>8}{r['dim']:>5}{r['queries']:>8}{r['slots']:>8}{r['ours_ms']:>9.1f}{r['ours_cold_ms']:>8.1f}"
              f"{r['loop_ms']:>9.1f}{r['faiss_ms']:>9.1f}"
              f"{r['speedup_vs_loop']:>10.2f}x{r['time_ratio_vs_faiss']:>10.2f}x"
              f"{r['max_abs_diff_vs_loop']:>10.1e}{r['tied_pairs']:>6}{r['max_abs_diff_vs_faiss']:>10.1e}"
              f"{r['read_loop_ms']:>16.1f}{r['speedup_vs_read_loop']:>8.2f}x{r['product_ms']:>12.1f}"
              f"{r['ceiling_vs_loop']:>13.2f}x")
    print("(|d| loop: max abs difference over (query, class) pairs without an exact tie at the n-th neighbour;\n"
          " read() loop: the classes looped over the module's own read(queries, c), no target;\n"
          " product: queries @ keys alone, which every exact brute-force read_all computes, so loop/product\n"
          " is the most any such read_all could gain over the loop here)")
    w = results["write"]
    print(f"write: {w['us_per_item_small']:.1f} us/item at {w['small_slots_per_bank']} slots per bank, "
          f"{w['us_per_item_large']:.1f} us/item at {w['large_slots_per_bank']} (full, evicting): "
          f"ratio {w['ratio_large_vs_small']:.2f}")
    for target, met in results["targets"].items():
        print(f"target {'met    ' if met else 'NOT met'}: {target}")
    for number, r in enumerate(results["read_all"], 1):
        if r["speedup_vs_loop"] < TARGET_SPEEDUP_VS_LOOP:
            reachable = ("reachable in principle" if r["ceiling_vs_loop"] >= TARGET_SPEEDUP_VS_LOOP
                         else "unreachable by any exact brute-force read on this machine")
            print(f"  set-up {number}: {r['speedup_vs_loop']:.1f}x, ceiling {r['ceiling_vs_loop']:.1f}x: "
                  f"{TARGET_SPEEDUP_VS_LOOP:g}x {reachable}")


if __name__ == "__main__":
    main()
