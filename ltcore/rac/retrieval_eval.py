"""Standard retrieval accuracy of a frozen encoder, and exact against HNSW search.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022,
Sec. 4.4 and Table 4 (retrieval accuracy and construction time per encoder), Sec. 3.4 (the HNSW index).

    "In Table 4 we perform standard retrieval with ImageNet pretrained encoders on both datasets, encoding
    the training set and then querying it with encoded test images, returning the label of the closest image
    in the training set as the prediction. All comparisons are done on exact match indexes with the l2
    distance, no data augmentation and consistent crop, interpolation and normalization constants."  (Sec. 4.4)

    "Table 4: Analysis of standard retrieval performance and Construction Time (CT) which includes both image
    encoding and HNSW indexing."

    "For fast querying of the index, we make use of the FAISS implementation [24] of the Hierarchical
    Navigable Small World (HNSW) approximate k-NN lookup [37]. We construct the index with default settings
    aside from the hyperparameter M = 32"  (Sec. 3.4)

Our reading:

* Prediction = label of the single nearest training image (1-NN) in an exact ``faiss.IndexFlatL2`` over the
  raw (un-normalised) embeddings; accuracy per shot group with :func:`ltcore.metrics.shot_accuracy`
  (classifier-balancing buckets, ``overall`` = mean per-class accuracy).
* "no data augmentation": the training set is embedded with the *test* split's transform (for
  Fashion-MNIST-LT: none; for the file-based benchmarks: the evaluation resize and centre crop).
* CT = wall seconds to embed the training set (never read from the embedding cache: the encoding is what is
  timed) + seconds to build an HNSW (M = 32, faiss defaults otherwise) index over those keys. Encoding the
  test queries is not construction and is not counted; it may come from the embedding cache. The paper's
  accuracies come from the exact index while its CT names HNSW indexing; we do the same.
* recall@k of an approximate search = mean over queries of |approximate top-k ids  intersect  exact top-k ids| / k,
  the usual definition (faiss's "intersection measure").

Taught in notebook 04, *Retrieval alone: how well does a frozen encoder classify?* (RAC Table 4 on our data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ltcore.checks import check_int
from ltcore.data.datasets import LTSplits, evaluation_view
from ltcore.metrics import ShotAccuracy, shot_accuracy
from ltcore.rac.embeddings import embed_dataset
from ltcore.rac.image_encoders import ImageEncoder
from ltcore.rac.index import HNSW_M, VectorIndex, timed_search
from ltcore.results import shot_row


# ================================================================================================ validation
def _as_matrix(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {tuple(array.shape)}")
    return array


def _as_labels(values: np.ndarray, name: str, length: int, rows_name: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if len(labels) != length:
        raise ValueError(f"{name} has {len(labels)} entries but {rows_name} has {length} rows")
    return labels.astype(np.int64, copy=False)


def _as_ids(values: np.ndarray, name: str) -> np.ndarray:
    ids = _as_matrix(values, name)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    if (ids < 0).any():
        raise ValueError(f"{name} contains negative ids (faiss returns -1 for missing neighbours)")
    return ids


# ============================================================================================== 1-NN accuracy
def nearest_neighbour_labels(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    query_embeddings: np.ndarray,
    *,
    index_kind: str = "flat",
    metric: str = "l2",
    **index_options,
) -> np.ndarray:
    """Label of each query's nearest training key: train [N, D], labels [N], queries [Q, D] -> [Q] int64.

    ``index_kind`` / ``metric`` / ``index_options`` as :class:`ltcore.rac.index.VectorIndex` (default: the
    paper's exact l2 index).
    """
    keys = _as_matrix(train_embeddings, "train_embeddings")
    labels = _as_labels(train_labels, "train_labels", len(keys), "train_embeddings")
    queries = _as_matrix(query_embeddings, "query_embeddings")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"query_embeddings have dimension {queries.shape[1]}, train_embeddings {keys.shape[1]}")
    index = VectorIndex.build(keys, index_kind, metric, progress=False, **index_options)
    _, ids = index.search(queries, 1)  # (Q, 1)
    return labels[ids[:, 0]]


def knn_accuracy(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    class_counts: np.ndarray,
    *,
    index_kind: str = "flat",
    metric: str = "l2",
    **index_options,
) -> ShotAccuracy:
    """1-NN retrieval accuracy per shot group (RAC Table 4): each test image gets its nearest training label.

    train_embeddings [N, D], train_labels [N], test_embeddings [Q, D], test_labels [Q], class_counts [C]
    (training images per class, defines many / medium / few). Returns fractions in [0, 1].
    """
    test_labels = _as_labels(test_labels, "test_labels", len(_as_matrix(test_embeddings, "test_embeddings")),
                             "test_embeddings")
    predictions = nearest_neighbour_labels(
        train_embeddings, train_labels, test_embeddings, index_kind=index_kind, metric=metric, **index_options
    )
    return shot_accuracy(predictions, test_labels, class_counts)


# ====================================================================================== one encoder, timed
@dataclass(frozen=True, eq=False)
class EncoderRetrieval:
    """One row of Table 4: an encoder's keys, queries, 1-NN accuracy and construction time."""

    encoder: str
    image_size: int  # side of the (square) images the encoder sees
    train_embeddings: np.ndarray  # (N, D) keys
    test_embeddings: np.ndarray  # (Q, D) queries
    shots: ShotAccuracy
    encode_seconds: float  # embedding the training set
    index_seconds: float  # building the HNSW (M = 32) index over the keys

    @property
    def construction_seconds(self) -> float:
        """The paper's CT: encoding + HNSW indexing of the training set."""
        return self.encode_seconds + self.index_seconds

    def row(self, dataset: str) -> dict:
        """A results row (accuracies in percent, ``seconds`` = CT) with image size, key dimension and CT parts."""
        return shot_row(
            dataset, self.encoder, self.shots, self.construction_seconds,
            image_size=self.image_size, dim=int(self.train_embeddings.shape[1]),
            encode_seconds=round(self.encode_seconds, 2), index_seconds=round(self.index_seconds, 2),
        )


def evaluate_encoder(
    encoder: ImageEncoder,
    splits: LTSplits,
    *,
    image_size: int | None = None,
    batch_size: int = 32,
    metric: str = "l2",
    cache_queries: bool = True,
    progress: bool = False,
) -> EncoderRetrieval:
    """Embed the training set (timed, uncached) and build an HNSW index on it (timed): the CT; embed the test
    set (cached if ``cache_queries``) and score 1-NN retrieval on an exact ``metric`` index.

    ``image_size`` overrides the encoder's input size (the result records the size used; for an encoder that
    keeps the native size, the images' side). Small batches are faster on CPU for small images
    (the activations stay in cache).
    """
    train = evaluation_view(splits.train, splits.test)
    started = time.perf_counter()
    keys = embed_dataset(encoder, train, batch_size, image_size, cache=False, progress=progress)  # (N, D)
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    VectorIndex.build(keys, "hnsw", metric, progress=False)
    index_seconds = time.perf_counter() - started
    queries = embed_dataset(encoder, splits.test, batch_size, image_size, cache=cache_queries, progress=progress)
    shots = knn_accuracy(keys, np.asarray(train.labels), queries, np.asarray(splits.test.labels),
                         splits.class_counts, index_kind="flat", metric=metric)
    size = image_size if image_size is not None else encoder.preprocessing.image_size
    if size is None:  # the encoder keeps the native size (raw pixels): report the images' side
        size = int(train[0][0].shape[-1])
    return EncoderRetrieval(encoder.name, size, keys, queries, shots, encode_seconds, index_seconds)


# ================================================================================================ exact vs HNSW
def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k  intersect  exact top-k| / k. Both [Q, k] int ids, rows are queries.

    (With both lists of length k the measure is symmetric in its two arguments.)
    """
    exact, approx = _as_ids(exact_ids, "exact_ids"), _as_ids(approx_ids, "approx_ids")
    if exact.shape != approx.shape:
        raise ValueError(f"exact_ids has shape {exact.shape} but approx_ids has {approx.shape}")
    found = (approx[:, :, None] == exact[:, None, :]).any(axis=2)  # (Q, k, 1) == (Q, 1, k) -> (Q, k)
    return float(found.sum(axis=1).mean() / exact.shape[1])


def compare_exact_hnsw(
    keys: np.ndarray,
    queries: np.ndarray,
    k: int = 30,
    *,
    metric: str = "cosine",
    ef_search: Sequence[int] = (16, 64),
    hnsw_m: int = HNSW_M,
    batch: int = 256,
    repeats: int = 3,
    threads: int | None = 1,
) -> list[dict]:
    """Exact (flat) against HNSW search of ``queries`` [Q, D] in ``keys`` [N, D]: one results row per index.

    Rows: ``method`` (the index), ``keys``, ``dim``, ``k``, ``ef_search`` (None for exact), ``seconds`` (building
    the index), ``queries_per_s`` (best of ``repeats`` passes in batches of ``batch``, after a warm-up batch),
    ``recall`` (recall@k against the exact top-k; 1 for exact) and ``speedup`` (throughput / exact throughput).
    ``threads=1`` makes the HNSW graph, and so its recall, reproducible.
    """
    keys = _as_matrix(keys, "keys")
    queries = _as_matrix(queries, "queries")
    k = check_int("k", k, 1, len(keys))  # at most the number of keys
    if not len(ef_search):
        raise ValueError("ef_search must list at least one candidate-list size")
    ef_search = [check_int("ef_search", ef, 1) for ef in ef_search]
    started = time.perf_counter()
    exact = VectorIndex.build(keys, "flat", metric, threads=threads, progress=False)
    exact_build = time.perf_counter() - started
    started = time.perf_counter()
    hnsw = VectorIndex.build(keys, "hnsw", metric, hnsw_m=hnsw_m, threads=threads, progress=False)
    hnsw_build = time.perf_counter() - started

    exact_qps, exact_ids = timed_search(exact, queries, k, batch, repeats)
    common = {"keys": len(keys), "dim": int(keys.shape[1]), "k": int(k)}
    rows = [{"method": "exact (flat)", **common, "ef_search": None, "seconds": round(exact_build, 3),
             "queries_per_s": round(exact_qps, 1), "recall": 1.0, "speedup": 1.0}]
    for ef in ef_search:
        qps, ids = timed_search(hnsw, queries, k, batch, repeats, ef_search=int(ef))
        rows.append({"method": f"HNSW M={hnsw_m} efSearch={int(ef)}", **common, "ef_search": int(ef),
                     "seconds": round(hnsw_build, 3), "queries_per_s": round(qps, 1),
                     "recall": round(recall_at_k(exact_ids, ids), 4), "speedup": round(qps / exact_qps, 2)})
    return rows

