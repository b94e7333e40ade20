"""Tests of ltcore.rac.index: the faiss k-NN index of RAC's retrieval module (Sec. 3.4, App. A.2)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from ltcore.rac.index import VectorIndex, faiss_threads, l2_normalise


def clustered(n: int, dim: int, clusters: int = 10, seed: int = 0) -> np.ndarray:
    """Seeded Gaussian clusters [n, dim] float32 (well separated, no duplicates)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def keys() -> np.ndarray:
    return clustered(2000, 24)


def exact_cosine_topk(keys: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarity = l2_normalise(queries) @ l2_normalise(keys).T  # (B, N)
    ids = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarity, ids, axis=1), ids


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_stored_keys_find_themselves_cosine(keys, kind):
    index = VectorIndex.build(keys, kind, "cosine", ef_search=64, progress=False)
    scores, ids = index.search(keys, 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(len(keys)))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_stored_keys_find_themselves_l2(keys, kind):
    index = VectorIndex.build(keys, kind, "l2", ef_search=64, progress=False)
    distances, ids = index.search(keys, 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(len(keys)))
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-4)


def test_flat_cosine_matches_direct_computation(keys):
    queries = clustered(50, 24, seed=1)
    scores, ids = VectorIndex.build(keys, "flat", "cosine", progress=False).search(queries, 7)
    want_scores, want_ids = exact_cosine_topk(keys, queries, 7)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_flat_l2_returns_squared_distances(keys):
    queries = clustered(20, 24, seed=2)
    distances, ids = VectorIndex.build(keys, "flat", "l2", progress=False).search(queries, 4)
    direct = ((queries[:, None, :] - keys[None, :, :]) ** 2).sum(-1)  # (B, N)
    np.testing.assert_array_equal(ids, np.argsort(direct, axis=1)[:, :4])
    np.testing.assert_allclose(distances, np.take_along_axis(direct, ids, axis=1), rtol=1e-4, atol=1e-3)


def test_hnsw_cosine_scores_are_cosine_similarities(keys):
    """HNSW-cosine runs L2 on unit vectors; the returned scores must be converted back to cosines."""
    queries = clustered(30, 24, seed=3)
    scores, ids = VectorIndex.build(keys, "hnsw", "cosine", progress=False).search(queries, 10)
    cosine = l2_normalise(queries) @ l2_normalise(keys).T  # (B, N)
    np.testing.assert_allclose(scores, np.take_along_axis(cosine, ids, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be sorted best first"


def test_hnsw_recall_at_30_on_seeded_set():
    data = clustered(5200, 32, clusters=20, seed=4)
    keys, queries = data[:5000], data[5000:]
    _, exact = VectorIndex.build(keys, "flat", progress=False).search(queries, 30)
    index = VectorIndex.build(keys, "hnsw", progress=False)
    assert (index.hnsw_m, index.ef_construction, index.ef_search) == (32, 40, 16)
    _, approx = index.search(queries, 30)
    recall = np.mean([len(set(a) & set(e)) / 30 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip_gives_identical_results(keys, kind, tmp_path):
    index = VectorIndex.build(keys, kind, progress=False)
    queries = clustered(40, 24, seed=5)
    before = index.search(queries, 30)
    path = index.save(tmp_path / "keys.faiss")
    loaded = VectorIndex.load(path)
    after = loaded.search(queries, 30)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert (loaded.kind, loaded.metric, loaded.dim, loaded.ntotal) == (kind, "cosine", 24, len(keys))
    meta = json.loads((tmp_path / "keys.faiss.json").read_text())
    assert meta["normalised"] is True and meta["hnsw_m"] == 32
    assert not list(tmp_path.glob("*.tmp")), "temporary files must be renamed into place"


def test_truncated_file_is_reported_by_name(keys, tmp_path):
    path = VectorIndex.build(keys, "hnsw", progress=False).save(tmp_path / "keys.faiss")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"keys\.faiss.*truncated"):
        VectorIndex.load(path)


def test_corrupt_file_of_the_right_size_is_detected(keys, tmp_path):
    path = VectorIndex.build(keys, "flat", progress=False).save(tmp_path / "keys.faiss")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"keys\.faiss.*corrupt"):
        VectorIndex.load(path)


def test_missing_files_are_reported(keys, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.faiss"):
        VectorIndex.load(tmp_path / "nothing.faiss")
    path = VectorIndex.build(keys, "flat", progress=False).save(tmp_path / "keys.faiss")
    (tmp_path / "keys.faiss.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"keys\.faiss\.json"):
        VectorIndex.load(path)


def test_dimension_mismatch_on_add_and_search(keys):
    index = VectorIndex.build(keys, "flat", progress=False)
    with pytest.raises(ValueError, match="dimension 23 but the index has dimension 24"):
        index.add(keys[:, :23])
    with pytest.raises(ValueError, match="dimension 25 but the index has dimension 24"):
        index.search(np.zeros((3, 25), np.float32), 5)
    with pytest.raises(ValueError, match="2-D"):
        index.search(np.zeros(24, np.float32), 5)


def test_bad_arguments_are_rejected(keys):
    index = VectorIndex.build(keys[:10], "flat", progress=False)
    with pytest.raises(ValueError, match="k must be between 1 and"):
        index.search(keys[:2], 11)
    with pytest.raises(ValueError, match="kind"):
        VectorIndex(8, kind="ivf")
    with pytest.raises(ValueError, match="metric"):
        VectorIndex(8, metric="dot")
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 24), np.nan, np.float32), 1)


def test_ids_follow_insertion_order_across_chunks(keys):
    index = VectorIndex(24, "flat")
    index.add(keys[:1000], chunk_size=300)
    index.add(keys[1000:], chunk_size=300)
    _, ids = index.search(keys[[0, 999, 1000, 1999]], 1)
    np.testing.assert_array_equal(ids[:, 0], [0, 999, 1000, 1999])


def test_thread_count_is_set_and_restored(keys):
    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    index = VectorIndex.build(keys, "flat", threads=1, progress=False)
    index.search(keys[:3], 2)
    assert faiss.omp_get_max_threads() == before
