"""k-NN index over the frozen image keys of RAC's retrieval module.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022,
Sec. 3.4 (Retrieval Module), Sec. 4.8 (Runtime), App. A.2 / Table S2 (index ablations).

    "For fast querying of the index, we make use of the FAISS implementation [24] of the Hierarchical
    Navigable Small World (HNSW) approximate k-NN lookup [37]. We construct the index with default
    settings aside from the hyperparameter M = 32."  (Sec. 3.4)

    "The k-NN is queried for each z^q and returns a list of indices of the k closest keys in Z, where
    cosine similarity is the distance metric."  (Sec. 3.4)

Two kinds of index, two metrics:

* ``kind="flat"``: exact search. ``metric="cosine"`` is ``faiss.IndexFlatIP`` on L2-normalised vectors;
  ``metric="l2"`` is ``faiss.IndexFlatL2`` on the raw vectors (the metric of the paper's Table 4).
* ``kind="hnsw"``: ``faiss.IndexHNSWFlat`` with ``M = 32`` (the paper's setting) and faiss's own defaults
  ``efConstruction = 40``, ``efSearch = 16`` (settable; faiss searches with ``max(efSearch, k)`` candidates,
  so with the paper's k = 30 the effective list is at least 30).

Our reading of "cosine" for HNSW: the graph is built with the L2 metric on L2-normalised vectors, because
for unit vectors ``||a - b||^2 = 2 - 2 cos(a, b)``: the neighbour order is exactly the cosine order, and HNSW
keeps the metric-space guarantees its graph construction relies on (an inner-product HNSW graph is not built
in a metric space). The returned scores are converted back to cosine similarities, so flat and HNSW cosine
indexes return the same kind of number.

Scores returned by :meth:`VectorIndex.search`:
    metric "cosine" -> cosine similarity, higher is closer (a stored key finds itself with score ~1);
    metric "l2"     -> squared Euclidean distance, lower is closer (a stored key finds itself at ~0).

Ids are the 0-based row positions of the vectors in the order they were added, so ``ids`` index directly
into the per-image text list of the retrieval module.

Files: :meth:`VectorIndex.save` writes ``path`` (``faiss.write_index``) and a JSON sidecar ``path + ".json"``
(kind, metric, dim, normalisation, HNSW parameters, number of vectors, byte size and sha256 of the index
file, and ``metadata_sha256``: the sha256 of all the other fields), each to a temporary name first and then
renamed into place. :meth:`VectorIndex.load` checks the sidecar against its own checksum (an edited
``"metric"`` would otherwise turn similarities into distances), then the index file against the sidecar and the
faiss index type against kind and metric; a missing, damaged, edited or truncated file is an error naming it.
Neither file is unpickled: the sidecar is JSON and the index faiss's own binary format.

Taught in notebook 04, *Exact search against HNSW*.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np
from tqdm.auto import tqdm

from ltcore.checks import check_choice, check_int
from ltcore.config import progress_disabled
from ltcore.io import atomic_write

INDEX_KINDS = ("flat", "hnsw")
METRICS = ("cosine", "l2")
FILE_FORMAT = "ltcore.index/2"  # sidecar format; "ltcore.index/1" sidecars lack metadata_sha256 and are refused
SIDECAR_KEYS = ("format", "kind", "metric", "normalised", "dim", "ntotal", "hnsw_m", "ef_construction", "ef_search",
                "faiss_version", "size_bytes", "sha256", "metadata_sha256")

# The paper's HNSW setting, and faiss's own defaults for the rest ("default settings aside from M = 32").
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 16


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run the enclosed faiss calls with ``threads`` OpenMP threads (None: leave faiss's setting alone)."""
    if threads is None:
        yield
        return
    threads = check_int("threads", threads, 1)
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def l2_normalise(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero). [N, D] -> [N, D] float32, a new array."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    return (vectors / np.maximum(norms, eps)).astype(np.float32, copy=False)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata_sha256(meta: dict) -> str:
    """sha256 of every sidecar field but ``metadata_sha256`` itself, as canonical JSON (sorted keys)."""
    fields = {key: value for key, value in meta.items() if key != "metadata_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _read_sidecar(sidecar: Path) -> dict:
    """The sidecar's fields, checked: JSON object, this format, every key present, its checksum intact."""
    if not sidecar.is_file():
        raise FileNotFoundError(f"index metadata not found: {sidecar} (written by VectorIndex.save)")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"index metadata {sidecar} is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"index metadata {sidecar} must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FILE_FORMAT:
        raise ValueError(f"{sidecar}: unknown format {meta.get('format')!r}, expected {FILE_FORMAT!r}; rebuild the "
                         "index and save it again (VectorIndex.build(...).save(path))")
    missing = [key for key in SIDECAR_KEYS if key not in meta]
    if missing:
        raise ValueError(f"index metadata {sidecar} is damaged: missing {', '.join(missing)}")
    if meta["metadata_sha256"] != _metadata_sha256(meta):
        raise ValueError(f"index metadata {sidecar} does not match its checksum (metadata_sha256): edited or damaged")
    return meta


class VectorIndex:
    """A faiss index of D-dimensional keys with exact ("flat") or HNSW search and cosine or L2 metric.

    >>> index = VectorIndex.build(keys, kind="hnsw")          # keys: [N, D]
    >>> scores, ids = index.search(queries, k=30)              # [B, 30], [B, 30]
    """

    def __init__(
        self,
        dim: int,
        kind: str = "hnsw",
        metric: str = "cosine",
        *,
        hnsw_m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
        threads: int | None = None,
    ) -> None:
        self.kind = check_choice("kind", kind, INDEX_KINDS)
        self.metric = check_choice("metric", metric, METRICS)
        self.dim = check_int("dim", dim, 1)
        self.hnsw_m = check_int("hnsw_m", hnsw_m, 1)
        self.ef_construction = check_int("ef_construction", ef_construction, 1)
        self.ef_search = check_int("ef_search", ef_search, 1)
        self.threads = None if threads is None else check_int("threads", threads, 1)
        self._index = self._new_faiss_index()

    # ----------------------------------------------------------------------------------------- construction
    def _new_faiss_index(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m)  # L2 graph; cosine = L2 on unit vectors
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    @property
    def normalised(self) -> bool:
        """Whether keys and queries are L2-normalised before they reach faiss (metric "cosine")."""
        return self.metric == "cosine"

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        extra = f", M={self.hnsw_m}, efC={self.ef_construction}, efS={self.ef_search}" if self.kind == "hnsw" else ""
        return f"VectorIndex(kind={self.kind!r}, metric={self.metric!r}, dim={self.dim}, ntotal={self.ntotal}{extra})"

    def _as_rows(self, vectors: np.ndarray, name: str) -> np.ndarray:
        """Validate [N, dim] input and return the float32, C-contiguous (normalised for cosine) rows faiss sees."""
        array = np.asarray(vectors.detach().cpu() if hasattr(vectors, "detach") else vectors)
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D [N, {self.dim}], got shape {tuple(array.shape)}")
        if array.shape[1] != self.dim:
            raise ValueError(f"{name} have dimension {array.shape[1]} but the index has dimension {self.dim}")
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contain NaN or inf values")
        return l2_normalise(array) if self.normalised else array

    def add(self, vectors: np.ndarray, *, progress: bool = False, chunk_size: int = 16384) -> None:
        """Append keys [N, dim]; they get ids ntotal .. ntotal + N - 1. Added in chunks of ``chunk_size``."""
        rows = self._as_rows(vectors, "vectors")
        starts = range(0, rows.shape[0], max(1, int(chunk_size)))
        bar = tqdm(total=rows.shape[0], desc=f"index add ({self.kind})", unit="vec",
                   disable=progress_disabled(progress))
        with faiss_threads(self.threads), bar:
            for start in starts:
                chunk = rows[start : start + chunk_size]
                self._index.add(chunk)
                bar.update(chunk.shape[0])

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        kind: str = "hnsw",
        metric: str = "cosine",
        *,
        progress: bool = True,
        chunk_size: int = 16384,
        **options,
    ) -> "VectorIndex":
        """A new index over ``vectors`` [N, D] (ids 0..N-1). ``options``: hnsw_m, ef_construction, ef_search,
        threads (see the class)."""
        array = np.asarray(vectors.detach().cpu() if hasattr(vectors, "detach") else vectors)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"vectors must be a non-empty 2-D array [N, D], got shape {tuple(array.shape)}")
        index = cls(array.shape[1], kind, metric, **options)
        index.add(array, progress=progress, chunk_size=chunk_size)
        return index

    # ----------------------------------------------------------------------------------------------- search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef_search: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest keys of each query.

        queries [B, dim] -> (scores [B, k] float32, ids [B, k] int64), best first. Scores are cosine
        similarities (metric "cosine") or squared L2 distances (metric "l2"). ``ef_search`` overrides the
        HNSW candidate-list size for this call; ``batch_size`` splits a large query set (with a progress bar
        if ``progress``).
        """
        k = check_int("k", k, 1, self.ntotal)  # at most the number of stored keys
        rows = self._as_rows(queries, "queries")
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.ef_search if ef_search is None else check_int("ef_search", ef_search, 1)
        step = rows.shape[0] if batch_size is None else check_int("batch_size", batch_size, 1)
        scores = np.empty((rows.shape[0], k), dtype=np.float32)
        ids = np.empty((rows.shape[0], k), dtype=np.int64)
        with faiss_threads(self.threads):
            for start in tqdm(range(0, rows.shape[0], max(step, 1)), desc="index search",
                              disable=progress_disabled(progress)):
                stop = start + step
                scores[start:stop], ids[start:stop] = self._index.search(rows[start:stop], k)
        if (ids < 0).any():
            raise RuntimeError(
                f"faiss returned fewer than k={k} neighbours for some queries; raise ef_search (now "
                f"{self._index.hnsw.efSearch if self.kind == 'hnsw' else 'n/a'})"
            )
        if self.kind == "hnsw" and self.metric == "cosine":
            scores = 1.0 - scores / 2.0  # ||a - b||^2 = 2 - 2 cos(a, b) for unit vectors
        return scores, ids

    # -------------------------------------------------------------------------------------------- save/load
    def metadata(self) -> dict:
        """The index's configuration as written to the sidecar (without the file's size and checksums)."""
        return {
            "format": FILE_FORMAT,
            "kind": self.kind,
            "metric": self.metric,
            "normalised": self.normalised,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "faiss_version": faiss.__version__,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` and its metadata to ``path + ".json"`` (both atomically)."""
        path = atomic_write(path, lambda tmp: faiss.write_index(self._index, tmp))
        meta = self.metadata() | {"size_bytes": path.stat().st_size, "sha256": _sha256_file(path)}
        meta["metadata_sha256"] = _metadata_sha256(meta)
        atomic_write(_sidecar(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, threads: int | None = None) -> "VectorIndex":
        """Read an index written by :meth:`save`; a missing, damaged, edited or truncated file (index or sidecar)
        is an error naming it (module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index file not found: {path}")
        sidecar = _sidecar(path)
        meta = _read_sidecar(sidecar)
        try:
            index = cls(meta["dim"], meta["kind"], meta["metric"], hnsw_m=meta["hnsw_m"],
                        ef_construction=meta["ef_construction"], ef_search=meta["ef_search"], threads=threads)
        except ValueError as error:
            raise ValueError(f"index metadata {sidecar}: {error}") from None
        if meta["normalised"] is not index.normalised:
            raise ValueError(f"index metadata {sidecar}: normalised={meta['normalised']!r} contradicts metric "
                             f"{index.metric!r}")
        size = path.stat().st_size
        if size != meta["size_bytes"]:
            raise ValueError(
                f"index file {path} is {size} bytes but {meta['size_bytes']} were written: truncated or replaced"
            )
        if _sha256_file(path) != meta["sha256"]:
            raise ValueError(f"index file {path} does not match the checksum in {sidecar}: corrupt")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1][:200]
            raise ValueError(f"could not read faiss index {path} (truncated or corrupt?): {reason}") from None
        expected = index._index  # a new, empty faiss index of the described kind and metric
        if type(raw) is not type(expected) or raw.metric_type != expected.metric_type:
            raise ValueError(f"index file {path} holds a {type(raw).__name__}, but {sidecar} describes a "
                             f"{index.kind} {index.metric} index ({type(expected).__name__})")
        if raw.d != index.dim or raw.ntotal != meta["ntotal"]:
            raise ValueError(
                f"index file {path} holds {raw.ntotal} vectors of dim {raw.d}, metadata says "
                f"{meta['ntotal']} of dim {meta['dim']}"
            )
        index._index = raw
        return index


def timed_search(index: VectorIndex, queries: np.ndarray, k: int, batch: int, repeats: int, **options):
    """(queries per second, ids [Q, k]) over batches of ``batch`` queries, best of ``repeats`` runs."""
    index.search(queries[:batch], k, **options)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ids = [index.search(queries[i : i + batch], k, **options)[1] for i in range(0, len(queries), batch)]
        best = min(best, time.perf_counter() - start)
    return len(queries) / best, np.concatenate(ids)
