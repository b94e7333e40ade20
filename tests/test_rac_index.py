"""Tests of ltcore.rac.index: the faiss k-NN index of RAC's retrieval module (Sec. 3.4, App. A.2)."""

from __future__ import annotations

import hashlib
import json
import re

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


@pytest.mark.parametrize("make, message", [
    (lambda: VectorIndex(8, kind="ivf"), "kind must be one of"),
    (lambda: VectorIndex(8, metric="dot"), "metric must be one of"),
    (lambda: VectorIndex(0), "dim must be an integer >= 1"),
    (lambda: VectorIndex(8, hnsw_m=0), "hnsw_m must be an integer >= 1"),
    (lambda: VectorIndex(8, threads=0), "threads must be an integer >= 1"),
])
def test_bad_settings_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_queries_are_rejected(keys):
    index = VectorIndex.build(keys[:10], "flat", progress=False)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\], got 11"):
        index.search(keys[:2], 11)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 24), np.nan, np.float32), 1)


@pytest.mark.hostile
@pytest.mark.parametrize("k", [2.7, True, 0, -1, "3", None])
def test_a_k_that_is_not_a_count_is_a_clear_error(keys, k):
    """A non-integer, bool or non-positive k names k (2.7 was searched as 2, True as 1)."""
    index = VectorIndex.build(keys[:10], "flat", progress=False)
    with pytest.raises(ValueError, match=rf"k must be an integer in \[1, 10\], got {re.escape(repr(k))}"):
        index.search(keys[:2], k)


@pytest.mark.hostile
@pytest.mark.parametrize("field, value", [("metric", "l2"), ("kind", "flat"), ("normalised", False),
                                          ("ntotal", 7), ("sha256", "0" * 64)])
def test_an_edited_sidecar_is_refused(keys, tmp_path, field, value):
    """The checksum covers the sidecar's own fields: an edited "metric" would turn similarities into distances."""
    path = VectorIndex.build(keys[:50], "hnsw", "cosine", progress=False).save(tmp_path / "keys.faiss")
    sidecar = tmp_path / "keys.faiss.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(meta | {field: value}))
    with pytest.raises(ValueError, match=rf"{re.escape(str(sidecar))} does not match its checksum"):
        VectorIndex.load(path)


@pytest.mark.hostile
@pytest.mark.parametrize("damage, message", [
    (lambda meta: {k: v for k, v in meta.items() if k != "sha256"}, "is damaged: missing sha256"),
    (lambda meta: {k: v for k, v in meta.items() if k not in ("dim", "metadata_sha256")},
     "is damaged: missing dim, metadata_sha256"),
    (lambda meta: '{"format": "ltcore.index/2", "kind": ', "is not valid JSON"),
    (lambda meta: b"\xff\xfe\x00", "is not valid JSON"),
    (lambda meta: [meta], "must be a JSON object, got list"),
    (lambda meta: meta | {"format": "ltcore.index/1"}, "unknown format 'ltcore.index/1'"),
])
def test_a_damaged_sidecar_is_an_error_naming_it(keys, tmp_path, damage, message):
    path = VectorIndex.build(keys[:50], "flat", progress=False).save(tmp_path / "keys.faiss")
    sidecar = tmp_path / "keys.faiss.json"
    damaged = damage(json.loads(sidecar.read_text()))
    if isinstance(damaged, bytes):
        sidecar.write_bytes(damaged)
    else:
        sidecar.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(ValueError, match=re.escape(str(sidecar))) as caught:
        VectorIndex.load(path)
    assert message in str(caught.value)


@pytest.mark.hostile
def test_a_sidecar_of_another_index_kind_is_refused(keys, tmp_path):
    """An index file swapped for one of another kind, with its own consistent sidecar fields rewritten."""
    flat = VectorIndex.build(keys[:50], "flat", "cosine", progress=False).save(tmp_path / "flat.faiss")
    l2 = VectorIndex.build(keys[:50], "flat", "l2", progress=False).save(tmp_path / "l2.faiss")
    meta = json.loads((tmp_path / "flat.faiss.json").read_text())
    other = json.loads((tmp_path / "l2.faiss.json").read_text())
    meta |= {"size_bytes": other["size_bytes"], "sha256": other["sha256"]}
    meta["metadata_sha256"] = hashlib.sha256(json.dumps(
        {k: v for k, v in meta.items() if k != "metadata_sha256"}, sort_keys=True).encode()).hexdigest()
    (tmp_path / "l2.faiss.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"l2\.faiss holds a IndexFlatL2, but .* describes a flat cosine index"):
        VectorIndex.load(l2)
    assert VectorIndex.load(flat).metric == "cosine"


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
