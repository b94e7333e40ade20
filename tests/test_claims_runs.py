"""Tests of ltcore.claims_runs: the claims' paired runs as jobs, the same rows on one process or two."""
from __future__ import annotations

import numpy as np
import pytest

from ltcore.claims_runs import run_claims_job, run_claims_jobs
from ltcore.data.longtail import longtail_counts, permuted_longtail_split
from ltcore.features import FeatureArrays
from ltcore.iem.claims import IEMClaimsRecipe
from ltcore.rac.claims import RACClaimsRecipe
from ltcore.train import TrainConfig
from synthetic import class_images

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]
C = len(CLASS_NAMES)
CONFIG = TrainConfig(epochs=1, batch_size=16, lr=0.05, progress=False, device="cpu")
RAC = RACClaimsRecipe(text_encoder="bow_random", epochs=2, lr=3e-3, batch_size=64)
FROZEN = IEMClaimsRecipe(CONFIG, "test_frozen", dict(warmup_epochs=0))
E2E = IEMClaimsRecipe(CONFIG, "test", dict(warmup_epochs=0))


def _features(labels: np.ndarray, seed: int) -> FeatureArrays:
    """Pooled vectors [N, 8] and maps [N, 6, 3, 3] in which class c lights up channel c."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0.0, 0.5, size=(len(labels), 6, 3, 3))
    maps[np.arange(len(labels)), labels] += 2.0
    pooled = np.concatenate([maps.mean((2, 3)), rng.normal(size=(len(labels), 2))], 1).astype(np.float32)
    return FeatureArrays(pooled, maps.astype(np.float16), "synthetic", 3, "synthetic")


@pytest.fixture(scope="module")
def inputs() -> dict:
    per_class = 70
    train_labels = np.repeat(np.arange(C), per_class)
    images, _ = class_images([per_class] * C, seed=0)
    splits = {p: permuted_longtail_split(train_labels, longtail_counts(60, C, 10.0), p, 8) for p in (0, 1)}
    pool = splits[0].pool
    test_labels = np.repeat(np.arange(C), 6)
    test_images, _ = class_images([6] * C, seed=1)
    return dict(splits=splits, train_labels=train_labels, test_labels=test_labels, pool_images=images[pool],
                test_images=test_images, pool_base=_features(train_labels[pool], 1),
                test_base=_features(test_labels, 2), pool_retrieval=_features(train_labels[pool], 3),
                test_retrieval=_features(test_labels, 4), class_names=CLASS_NAMES)


JOBS = [{"kind": "rac", "permutation": 1, "seeds": (0, 1), "recipe": RAC},
        {"kind": "frozen-features", "permutation": 0, "seeds": (0,), "recipe": FROZEN},
        {"kind": "e2e", "permutation": 1, "seeds": (2,), "recipe": E2E}]


def test_two_processes_give_the_rows_of_one_in_job_order(inputs):
    serial, serial_seconds = run_claims_jobs(JOBS, inputs, workers=1, progress=False)
    parallel, parallel_seconds = run_claims_jobs(JOBS, inputs, workers=2, progress=False)
    assert len(serial_seconds) == len(parallel_seconds) == len(JOBS)
    assert all(seconds > 0 for seconds in serial_seconds + parallel_seconds)
    # job order, then seed order: the RAC job's two seeds, then the frozen-features run, then the e2e run
    runs = list(dict.fromkeys((r["setting"], r["seed"], r["permutation"]) for r in serial))
    assert runs == [("frozen-features", 0, 1), ("frozen-features", 1, 1), ("frozen-features", 0, 0), ("e2e", 2, 1)]
    assert serial[0]["method"] == "base-lace"  # the first of ltcore.rac.claims.RAC_CLAIM_METHODS
    np.testing.assert_equal(parallel, serial)  # every number identical (NaN = NaN), curves included


def test_the_memory_variant_diagnostic_is_a_job_of_its_own(inputs):
    from ltcore.iem.claims import MEMORY_VARIANTS, compare_memory_variants

    job = {"kind": "memory-variants", "permutation": 0, "seeds": (0, 1), "recipe": FROZEN}
    rows, _ = run_claims_jobs([job], inputs, workers=1, progress=False)
    direct = compare_memory_variants(inputs["pool_base"], inputs["train_labels"], inputs["splits"][0],
                                     inputs["test_base"], inputs["test_labels"], seeds=(0, 1), recipe=FROZEN)
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, s) for v in MEMORY_VARIANTS for s in (0, 1)]
    assert all(r["diagnostic"] == "memory-variant" and r["permutation"] == 0 for r in rows)
    assert [r["val_overall"] for r in rows] == [value for values in direct.values() for value in values]


def test_a_job_is_the_module_runs_it_names(inputs):
    from ltcore.iem.claims import run_iem_claims_methods

    job, = [job for job in JOBS if job["kind"] == "frozen-features"]
    direct = run_iem_claims_methods(inputs["pool_base"], inputs["train_labels"], inputs["splits"][0],
                                    inputs["test_base"], inputs["test_labels"], seed=0, permutation=0,
                                    setting="frozen-features", recipe=FROZEN)
    np.testing.assert_equal(run_claims_job(inputs, job), direct)


@pytest.mark.parametrize("job, error, says", [
    ({"kind": "iem", "permutation": 0, "seeds": (0,)}, ValueError, "job kind must be one of"),
    ({"kind": "e2e", "permutation": 7, "seeds": (0,)}, KeyError, "no split for permutation 7"),
    ({"kind": "e2e", "permutation": 0, "seeds": (-1,)}, ValueError, "seed"),
])
def test_a_bad_job_is_an_error_naming_it(inputs, job, error, says):
    with pytest.raises(error, match=says):
        run_claims_job(inputs, job)


def test_a_bad_job_or_worker_count_fails_before_anything_runs(inputs):
    with pytest.raises(ValueError, match="job kind must be one of"):
        run_claims_jobs([JOBS[0], {"kind": "nope", "permutation": 0}], inputs, workers=2, progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_claims_jobs(JOBS, inputs, workers=0, progress=False)
