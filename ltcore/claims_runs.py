"""The claims' paired runs as independent jobs, run one after another or on several processes (issue 11).

Notebook 08 trains every method of both papers on 15 frozen-feature runs and 5 end-to-end runs. The runs do not
depend on each other (each seeds itself, :func:`ltcore.config.seed_everything`), so on a machine with two cores
two processes finish them in about half the time. A **job** is one of:

* ``{"kind": "rac", "permutation": p, "seeds": (s, ...)}``: every RAC method (:mod:`ltcore.rac.claims`) on the
  runs (s, p), sharing the permutation's retrieval tables (:func:`ltcore.rac.claims.build_retrieval_tables`);
* ``{"kind": "frozen-features" | "e2e", "permutation": p, "seeds": (s, ...)}``: every IEM method
  (:mod:`ltcore.iem.claims`) on the runs (s, p), on the cached feature maps or from scratch on the images.

* ``{"kind": "memory-variants", "permutation": p, "seeds": (s, ...)}``: the diagnostic of notebook 08's section 6,
  :func:`ltcore.iem.claims.compare_memory_variants` on the runs (s, p), one row per (variant, seed):
  ``{"diagnostic": "memory-variant", "variant", "seed", "permutation", "val_overall"}`` (validation only). These
  rows are not claim results: a caller separates them by their ``"diagnostic"`` key.

A job may also name its ``"recipe"`` (a :class:`ltcore.rac.claims.RACClaimsRecipe` or
:class:`ltcore.iem.claims.IEMClaimsRecipe`); by default each module's own, chosen on validation.

:func:`run_claims_jobs` returns the result rows in job order, the same rows whatever the number of workers: a
worker is a fresh (spawned) Python process with one thread, as the notebook's kernel, and receives the shared
inputs once, when it starts. Tested equal to the serial run in ``tests/test_claims_runs.py``.

Taught in notebook 08, *The runs*.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Mapping, Sequence

from ltcore.checks import check_choice, check_int

__all__ = ["JOB_KINDS", "ClaimsInputs", "run_claims_job", "run_claims_jobs"]

JOB_KINDS = ("rac", "frozen-features", "e2e", "memory-variants")

# What every job reads: the split of each permutation, the labels, the pool's and the test split's images and
# cached features. Keys: "splits" {permutation: PermutedSplit}, "train_labels" [60000], "test_labels" [10000],
# "pool_images" [P, 28, 28] uint8 (row i = training image splits[p].pool[i]), "test_images" [10000, 28, 28],
# "pool_base" / "test_base" (FeatureArrays of the base encoder, with its maps), "pool_retrieval" /
# "test_retrieval" (FeatureArrays of E), "class_names".
ClaimsInputs = Mapping[str, Any]

_WORKER_INPUTS: dict = {}


def run_claims_job(inputs: ClaimsInputs, job: Mapping[str, Any]) -> list[dict]:
    """The result rows of one job (see the module docstring), in seed order and, within a seed, method order."""
    kind = check_choice("job kind", job.get("kind"), JOB_KINDS)
    permutation = check_int("permutation", job.get("permutation"), 0)
    if permutation not in inputs["splits"]:
        raise KeyError(f"no split for permutation {permutation}; the inputs hold {sorted(inputs['splits'])}")
    split = inputs["splits"][permutation]
    seeds = [check_int("seed", seed, 0) for seed in job.get("seeds", ())]
    rows: list[dict] = []
    if kind == "rac":
        from ltcore.rac.claims import build_retrieval_tables, run_rac_claims_methods

        tables = build_retrieval_tables(inputs["pool_retrieval"], inputs["train_labels"], split,
                                        inputs["test_retrieval"], inputs["class_names"])
        for seed in seeds:
            rows += run_rac_claims_methods(inputs["pool_base"], inputs["pool_retrieval"], inputs["train_labels"],
                                           split, inputs["test_base"], inputs["test_retrieval"],
                                           inputs["test_labels"], seed=seed, permutation=permutation,
                                           class_names=inputs["class_names"], retrieval=tables,
                                           recipe=job.get("recipe"))
        return rows
    from ltcore.iem.claims import compare_memory_variants, run_iem_claims_methods

    if kind == "memory-variants":
        scores = compare_memory_variants(inputs["pool_base"], inputs["train_labels"], split, inputs["test_base"],
                                         inputs["test_labels"], seeds=seeds, recipe=job.get("recipe"))
        return [{"diagnostic": "memory-variant", "variant": variant, "seed": seed, "permutation": permutation,
                 "val_overall": value} for variant, values in scores.items() for seed, value in zip(seeds, values)]
    pool, test = ((inputs["pool_base"], inputs["test_base"]) if kind == "frozen-features"
                  else (inputs["pool_images"], inputs["test_images"]))
    for seed in seeds:
        rows += run_iem_claims_methods(pool, inputs["train_labels"], split, test, inputs["test_labels"], seed=seed,
                                       permutation=permutation, setting=kind, recipe=job.get("recipe"))
    return rows


def run_claims_jobs(jobs: Sequence[Mapping[str, Any]], inputs: ClaimsInputs, workers: int = 1,
                    progress: bool = True) -> tuple[list[dict], list[float]]:
    """Run ``jobs`` on ``workers`` processes (1: in this process); returns every job's rows, concatenated in job
    order, and each job's seconds (as measured inside its worker)."""
    workers = check_int("workers", workers, 1)
    jobs = list(jobs)
    for job in jobs:  # a bad job is an error before anything runs
        check_choice("job kind", job.get("kind"), JOB_KINDS)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="claims runs", unit="job", disable=not progress)
    outputs: list = [None] * len(jobs)
    try:
        if workers == 1:
            for i, job in enumerate(jobs):
                outputs[i] = _timed(inputs, job)
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or locks
            with ProcessPoolExecutor(min(workers, len(jobs)) or 1, mp_context=context, initializer=_set_inputs,
                                     initargs=(inputs,)) as pool:
                futures = {pool.submit(_timed_in_worker, job): i for i, job in enumerate(jobs)}
                for future in as_completed(futures):
                    outputs[futures[future]] = future.result()
                    bar.update()
    finally:
        bar.close()
    return [row for rows, _ in outputs for row in rows], [seconds for _, seconds in outputs]


def _timed(inputs: ClaimsInputs, job: Mapping[str, Any]) -> tuple[list[dict], float]:
    started = time.perf_counter()
    rows = run_claims_job(inputs, job)
    return rows, time.perf_counter() - started


def _set_inputs(inputs: ClaimsInputs) -> None:
    import torch

    torch.set_num_threads(1)  # as the kernel: the results do not depend on the core count
    _WORKER_INPUTS.clear()
    _WORKER_INPUTS.update(inputs)


def _timed_in_worker(job: Mapping[str, Any]) -> tuple[list[dict], float]:
    return _timed(_WORKER_INPUTS, job)
