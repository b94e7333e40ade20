"""RAC's claims and the negative control on frozen pretrained features: every method of one paired run.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022: Sec. 3.1
(eq. 2, BalCE), Sec. 3.2 (eq. 3, LACE with tau = 1), Sec. 3.3 (two branches fused by eq. 5), Sec. 3.4 (the
retrieval module: frozen E, HNSW with M = 32, cosine, "we drop the first result"), Table 3 (BalCE / Base /
Retrieval / RAC), Fig. 2 (each branch, class by class), Fig. 3 (k), Fig. 4 (text encoders). The claims are
pre-registered in :mod:`ltcore.claims`; this module computes the methods they name (:data:`RAC_CLAIM_METHODS`,
spelled as in :data:`ltcore.claims.METHODS`) on one run: a seed and a class-to-rank permutation
(:func:`ltcore.data.longtail.permuted_longtail_split`).

The setting
-----------
"RAC requires a pretrained network for the retrieval module. While it is possible to train the base network from
scratch, this is not a fair comparison" (Sec. 4, footnote 2). So both branches read frozen ImageNet-pretrained
features, extracted once (:func:`ltcore.features.extract_features`, the ``pooled`` vectors):

* **Base** B: a linear head on the base encoder's pooled features (standardised with the mean and standard
  deviation of the run's training images), trained under the method's loss.
* **Retrieval branch**: an HNSW index (M = 32, cosine; :class:`ltcore.rac.index.VectorIndex`) over E's pooled
  features of the run's training images, E another encoder or resolution than B; the k nearest training images
  of each query (a training query drops the first hit, the paper's rule), their class names as texts, a frozen
  text encoder T (:func:`ltcore.rac.text_encoders.build_text_encoder`) and T's trainable head
  (:class:`ltcore.rac.classifier.CentredLinear`) giving f_ret.
* **RAC**: eq. 5 (:func:`ltcore.rac.fuse_logits`) of the two, trained under the common LACE loss (tau = 1;
  :meth:`ltcore.rac.train.RACSettings.loss`; label smoothing chosen on validation: 0, not Table S7's 0.1). Its
  branches are then scored alone from the same trained model (Fig. 2: ``rac-base-branch``,
  ``rac-retrieval-branch``), with no further training.

Every head trains with AdamW ("We finetune with AdamW", App. B; weight decay 0.02, Table S7) on the cached
tensors, in minibatches whose order is drawn from the run's seed, which also draws the initial weights. B is
drawn first, so every method of a run starts from the same B; two methods that differ only in their loss
(``base-lace`` and ``balce-ren``) then compute the same numbers up to float rounding: the negative control.

> **Our reading: T reads the retrieved texts as a bag.** The paper joins the k texts into one string for one T
> call ("Text strings are truncated after 76 tokens", Sec. 3.4). With T frozen, every distinct ordered list of k
> class names is a distinct string to encode: on Fashion-MNIST-LT at k = 30, 9,887 of a permutation's 13,478
> queries (training, validation, test) are distinct (375 at k = 3), and MiniLM encodes 77-token strings at 20-40
> per second on one core here: 4 to 8 minutes per permutation. By default (``text_reading="bag"``) T encodes
> each class name alone (C strings, once) and a query's embedding is the mean over its retrieved texts that fit
> T's context whole, as the joined string would be cut there (for MiniLM 12 to 30 of 30 Fashion-MNIST names,
> "T-shirt/top" being 5 word pieces and "Coat" one; the bag of words keeps 76 words). The order of the
> neighbours is lost, the labels retrieved within the context are kept; on validation the two readings score
> alike where both are affordable (table below). ``text_reading="joined"`` is the paper's string, exact through
> :func:`ltcore.rac.train.text_embedding_table`. Both T's read the same way, so ``rac`` and ``rac-random-bow``
> (Fig. 4) differ only in where the vectors of the texts come from: MiniLM's pretrained sentence embedding of a
> class name, or the mean of cached uniform random word vectors ("Rand."). With k = 1 the readings coincide.
>
> **Our reading of BalCE:** ``balce-eq2`` is eq. 2 as printed, ``balce-ren`` Ren et al.'s balanced softmax,
> which equals LACE at tau = 1 (:mod:`ltcore.losses`). All three base losses use the same label smoothing.

Choices, made on the validation split (:func:`choose_on_validation`)
-------------------------------------------------------------------
Evidence: mean validation overall accuracy (percent, class-averaged) of ``base-lace``, ``rac`` and
``retrieval-only`` at their best epoch, on Fashion-MNIST-LT (counts 1000 .. 10, 100 validation images per
class), permutations 0-2 with seed 0; B = EfficientNet-Lite0 at 64 px, E = Lite0 at 96 px. The paper's value
is kept unless validation beats it by more than the tolerance of 0.1 points.

==================  ==========================================================  ===============================
choice              validation (percent)                                        chosen
==================  ==========================================================  ===============================
label smoothing,    eps 0: 75.54 (lr 1e-3), 75.64 (lr 3e-3);                    eps 0, lr 3e-3
AdamW lr            eps 0.1 (Table S7): 74.52, 74.47. RAC alone: 75.47 at eps
                    0, 72.23 at eps 0.1 (lr 1e-3)
epochs              best-so-far mean within 0.1 of 75.64 from epoch 15 (of 40)  15, best validation epoch kept
k (rac and          k = 3: 74.83, 10: 75.72, 30: 75.76 (seeds 0-1)              30 (the paper's)
retrieval-only)
base head           linear 73.81, one hidden layer of 256: 70.63 (eps 0.1)      linear
batch size          256: 75.56, 512: 75.42                                      256
T's reading         retrieval-only, k = 3: bag 72.67, joined 72.70; k = 5: bag  bag (joined is unaffordable at
                    74.43, joined 74.80 (eps 0.1, lr 1e-3)                      k = 30; above)
==================  ==========================================================  ===============================

> **Our reading of the label smoothing result:** eq. 5 normalises each branch, so RAC's fused logits are
> bounded (L/2 times two unit vectors: at most 10 apart here, L = 10); label smoothing asks for a floor on every
> class's probability as well, and RAC ended 3 points below its unsmoothed self on validation. The paper's L is
> 365 or 8,142. One run of the whole method list takes about 3 seconds on one thread here (the machine's other
> core busy); E's index and T's cached embeddings of a permutation (:class:`RetrievalTables`, built once for its
> seeds) about 1 second, plus about 10 seconds once per process to load MiniLM.

Taught in notebook 08, *The runs*.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ltcore.checks import check_choice, check_float, check_int
from ltcore.losses import build_loss
from ltcore.metrics import per_class_accuracy, shot_accuracy
from ltcore.rac.classifier import CentredLinear
from ltcore.rac.index import VectorIndex
from ltcore.rac.model import PAPER_K, RACOutput, fuse_logits, label_texts, mode_branches
from ltcore.rac.text_encoders import TEXT_ENCODERS, TextEncoder, build_text_encoder
from ltcore.rac.train import ADAMW_WEIGHT_DECAY, RACSettings, text_embedding_table
from ltcore.train import check_finite_weights, optimization_step

__all__ = ["RAC_CLAIM_METHODS", "TEXT_READINGS", "CachedFeatureRAC", "RACClaimsRecipe",
           "RetrievalTables", "build_retrieval_tables", "choose_on_validation", "run_rac_claims_methods",
           "text_features"]

SETTING = "frozen-features"
RAC_CLAIM_METHODS = ("base-lace", "balce-eq2", "balce-ren", "base-lace-reordered", "rac", "rac-random-bow",
                     "rac-base-branch", "rac-retrieval-branch", "retrieval-only", "retrieval-only-k1",
                     "retrieval-only-k30")
# The data-order seed of "base-lace-reordered": the run's seed plus this (its initial weights keep the run's seed).
REORDERED_OFFSET = 2**31
TEXT_READINGS = ("bag", "joined")
RANDOM_TEXT_ENCODER = "bow_random"  # the paper's "Rand." (Fig. 4)
SPLIT_NAMES = ("train", "val", "test")


# ============================================================================================ the recipe
@dataclass(frozen=True)
class RACClaimsRecipe:
    """How every head of the RAC claims trains; the defaults were chosen on validation (module docstring, with
    the evidence): label smoothing 0 rather than Table S7's 0.1, AdamW at lr 3e-3 with Table S7's weight decay,
    at most 15 epochs keeping the best validation epoch, the paper's k = 30, a linear base head.

    k:             texts retrieved per query for ``rac``, ``rac-random-bow`` and ``retrieval-only`` (paper: 30).
    text_encoder:  T of ``rac`` and the ``retrieval-only`` methods (``rac-random-bow`` uses "bow_random").
    text_reading:  "bag" (each text encoded alone, averaged) or "joined" (the paper's one string per query).
    epochs, lr, weight_decay, batch_size: AdamW on the cached tensors; ``epochs`` is a cap, the weights of the
                   best validation epoch are the ones scored.
    tau, label_smoothing: of every loss (LACE's tau; eq. 2 and Ren et al.'s form take the same smoothing).
    hidden:        0 for a linear base head; > 0 for one hidden ReLU layer of that width.
    """

    k: int = PAPER_K
    text_encoder: str = "minilm"
    text_reading: str = "bag"
    epochs: int = 15
    lr: float = 3e-3
    weight_decay: float = ADAMW_WEIGHT_DECAY
    batch_size: int = 256
    tau: float = 1.0
    label_smoothing: float = 0.0
    hidden: int = 0

    def __post_init__(self) -> None:
        check_int("k", self.k, 1)
        check_choice("text_encoder", self.text_encoder, TEXT_ENCODERS)
        check_choice("text_reading", self.text_reading, TEXT_READINGS)
        check_int("epochs", self.epochs, 1)
        check_float("lr", self.lr, 0.0, low_open=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_int("batch_size", self.batch_size, 1)
        check_float("tau", self.tau, 0.0)
        check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check_int("hidden", self.hidden, 0)

    def loss(self, name: str, class_counts: Sequence[int]):
        """The named loss of a method: "lace" (RAC's common loss, :meth:`RACSettings.loss`), "balce_eq2" or
        "balanced_softmax", all with this label smoothing."""
        if name == "lace":
            return RACSettings(tau=self.tau, label_smoothing=self.label_smoothing).loss(class_counts)
        return build_loss(name, class_counts, label_smoothing=self.label_smoothing)


class _Training(NamedTuple):
    """One trained configuration; several methods may read it (a RAC model and its two branches)."""

    mode: str  # RAC mode: "base", "retrieval" or "rac"
    loss: str  # build_loss name
    text_encoder: str  # "" in "base" mode
    k: int  # 0 in "base" mode
    reordered: bool = False  # data order drawn from seed + REORDERED_OFFSET (the data-order control)


def _method_plan(method: str, recipe: RACClaimsRecipe) -> tuple[_Training, str]:
    """The training a method needs and which of its outputs it scores ("fused", "base" or "retrieval")."""
    base_losses = {"base-lace": "lace", "balce-eq2": "balce_eq2", "balce-ren": "balanced_softmax"}
    if method in base_losses:
        return _Training("base", base_losses[method], "", 0), "fused"
    if method == "base-lace-reordered":
        return _Training("base", "lace", "", 0, reordered=True), "fused"
    rac = _Training("rac", "lace", recipe.text_encoder, recipe.k)
    plans = {"rac": (rac, "fused"), "rac-base-branch": (rac, "base"), "rac-retrieval-branch": (rac, "retrieval"),
             "rac-random-bow": (rac._replace(text_encoder=RANDOM_TEXT_ENCODER), "fused"),
             "retrieval-only": (rac._replace(mode="retrieval"), "fused"),
             "retrieval-only-k1": (rac._replace(mode="retrieval", k=1), "fused"),
             "retrieval-only-k30": (rac._replace(mode="retrieval", k=30), "fused")}
    return plans[check_choice("method", method, RAC_CLAIM_METHODS)]


# ============================================================================================ the model
class CachedFeatureRAC(nn.Module):
    """RAC on cached features (Sec. 3.3): B's head on the base features, T's head on T's cached embeddings, eq. 5.

    ``mode`` as :class:`ltcore.rac.model.RACModel`: "rac" fuses the branches by eq. 5, "base" and "retrieval"
    return that branch's own logits as ``fused``. forward(base_features [B, D_B], text_features [B, D_T]) ->
    :class:`~ltcore.rac.model.RACOutput` of [B, L] logits.
    """

    def __init__(self, base: Optional[nn.Module], text_head: Optional[nn.Module], mode: str) -> None:
        super().__init__()
        self.branches = mode_branches(mode)
        if ("base" in self.branches) != (base is not None) or ("retrieval" in self.branches) != (text_head is not None):
            raise ValueError(f"mode {mode!r} runs the branches {self.branches}: give exactly their heads")
        self.mode, self.base, self.text_head = mode, base, text_head

    def forward(self, base_features: Optional[Tensor], text_features: Optional[Tensor]) -> RACOutput:
        base = self.base(base_features) if self.base is not None else None  # (B, D_B) -> (B, L)
        retrieval = self.text_head(text_features) if self.text_head is not None else None  # (B, D_T) -> (B, L)
        if self.mode == "base":
            return RACOutput(base, base, None)
        if self.mode == "retrieval":
            return RACOutput(retrieval, None, retrieval)
        return RACOutput(fuse_logits(retrieval, base), base, retrieval)  # eq. 5

    def training_step(self, inputs: tuple, labels: Tensor, indices: Tensor, loss_fn, epoch: int) -> Tensor:
        """The method's loss on the fused logits (the hook :func:`ltcore.train.optimization_step` calls)."""
        return loss_fn(self(*inputs).fused, labels, epoch=epoch)


def _base_head(in_features: int, num_classes: int, hidden: int) -> nn.Module:
    if not hidden:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


# ======================================================================================== retrieval tables
@functools.lru_cache(maxsize=None)
def _frozen_text_encoder(name: str) -> TextEncoder:
    """T, frozen, built once per process (MiniLM takes seconds to load); its own head is never used here."""
    return build_text_encoder(name, 1, train_transformer=False)


def text_features(neighbour_labels: np.ndarray, text: TextEncoder, class_names: Sequence[str],
                  reading: str = "bag") -> Tensor:
    """T's embeddings [N, D_T] of N queries whose retrieved labels are ``neighbour_labels`` [N, k], best first.

    "joined": the k class names joined into one string, cut at T's context (the paper; every distinct list is
    encoded once). "bag": the mean of T's embeddings of the class names, each encoded alone, over the leading
    texts that fit T's context whole, as the joined string would be cut (the first text always counts).
    """
    check_choice("text_reading", reading, TEXT_READINGS)
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    if labels.ndim != 2 or labels.shape[1] == 0:
        raise ValueError(f"neighbour_labels must be [N, k] with k >= 1, got shape {labels.shape}")
    if reading == "joined":
        return text_embedding_table(text, [label_texts(row, class_names) for row in labels])
    names = label_texts(np.arange(len(class_names)), class_names)
    if labels.min() < 0 or labels.max() >= len(names):
        raise ValueError(f"neighbour_labels must be in [0, {len(names) - 1}], got [{labels.min()}, {labels.max()}]")
    class_vectors = text_embedding_table(text, [[name] for name in names])  # (C, D_T)
    lengths = np.array([len(text.text_ids(name)) for name in names])  # tokens (or words) per class name
    separator = len(text.text_ids(text.separator))
    room = text.context_length - len(text.start_ids) - len(text.end_ids)
    used = np.cumsum(lengths[labels] + separator, axis=1) - separator  # (N, k): tokens through text i
    inside = used <= room
    inside[:, 0] = True
    one_hot = labels[:, :, None] == np.arange(len(names))  # (N, k) -> (N, k, C)
    histogram = (one_hot & inside[:, :, None]).sum(axis=1).astype(np.float32)  # (N, k, C) -> (N, C)
    weights = torch.from_numpy(histogram / histogram.sum(axis=1, keepdims=True))
    return weights @ class_vectors  # (N, C) @ (C, D_T) -> (N, D_T)


class RetrievalTables:
    """The retrieval module of one permutation (Sec. 3.4): E's index over the run's training images and what each
    query retrieves, per k, shared by every seed of the permutation (E and the index do not depend on the seed).

    :meth:`neighbour_labels` gives the labels [N, k] of each split's neighbours (training queries search k + 1 and
    drop the first hit, the paper's rule; validation and test queries search k), :meth:`text_features` T's
    embeddings of them (:func:`text_features`), divided by one number so that the centred training embeddings
    have unit root mean square (measured at k = 30 on Fashion-MNIST-LT: 0.03 for MiniLM's unit-length sentence
    embeddings, 0.17 for the bag of uniform random words), so one learning rate serves every T as it serves
    the standardised base features; T's head, an affine map, can represent the same functions either way. Both
    are computed once per k (and T, reading) and kept.
    """

    def __init__(self, index: VectorIndex, queries: Mapping[str, np.ndarray], key_labels: np.ndarray,
                 class_names: Sequence[str], permutation: int, train: np.ndarray) -> None:
        self.index, self.queries, self.key_labels = index, dict(queries), key_labels
        self.class_names, self.permutation, self.train = list(class_names), permutation, train
        self._labels: dict[int, dict[str, np.ndarray]] = {}
        self._texts: dict[tuple, dict[str, Tensor]] = {}

    def neighbour_labels(self, k: int) -> dict[str, np.ndarray]:
        k = check_int("k", k, 1, self.index.ntotal - 1)  # a training query searches k + 1
        if k not in self._labels:
            tables = {}
            for name, queries in self.queries.items():
                if name == "train":
                    ids = self.index.search(queries, k + 1)[1][:, 1:]  # (N, k + 1) -> (N, k): drop the first hit
                else:
                    ids = self.index.search(queries, k)[1]  # (N, k)
                tables[name] = self.key_labels[ids]  # (N, k) ids -> (N, k) labels
            self._labels[k] = tables
        return self._labels[k]

    def text_features(self, text_encoder: str, k: int, reading: str = "bag") -> dict[str, Tensor]:
        key = (check_choice("text_encoder", text_encoder, TEXT_ENCODERS), k, reading)
        if key not in self._texts:
            text = _frozen_text_encoder(text_encoder)
            features = {name: text_features(labels, text, self.class_names, reading)
                        for name, labels in self.neighbour_labels(k).items()}
            train = features["train"]
            spread = (train - train.mean(dim=0)).pow(2).mean().sqrt().clamp_min(1e-12)  # RMS of centred entries
            self._texts[key] = {name: values / spread for name, values in features.items()}
        return self._texts[key]


def build_retrieval_tables(pool_retrieval: Any, train_labels: np.ndarray, split: Any, test_retrieval: Any,
                           class_names: Sequence[str]) -> RetrievalTables:
    """E's HNSW index (M = 32, cosine, one thread for a deterministic graph) over the run's training images.

    ``pool_retrieval[i]``: E's pooled features [P, D_E] of training image ``split.pool[i]`` (a
    :class:`~ltcore.features.FeatureArrays` gives its ``pooled``); ``test_retrieval`` [N_test, D_E];
    ``train_labels``: the official training labels that ``split.train`` and ``split.val`` index.
    """
    pool_features = _pooled("pool_retrieval", pool_retrieval)
    rows = _split_rows(split, len(pool_features))
    train_labels = np.asarray(train_labels, dtype=np.int64)
    keys = pool_features[rows["train"]]
    index = VectorIndex.build(keys, "hnsw", "cosine", progress=False, threads=1)
    queries = {"train": keys, "val": pool_features[rows["val"]], "test": _pooled("test_retrieval", test_retrieval)}
    return RetrievalTables(index, queries, train_labels[np.asarray(split.train)], class_names,
                           int(split.permutation), np.asarray(split.train))


# ============================================================================================ one run
def run_rac_claims_methods(pool_base: Any, pool_retrieval: Any, train_labels: np.ndarray, split: Any,
                           test_base: Any, test_retrieval: Any, test_labels: np.ndarray, *, seed: int,
                           permutation: int, class_names: Sequence[str],
                           methods: Sequence[str] = RAC_CLAIM_METHODS, recipe: Optional[RACClaimsRecipe] = None,
                           retrieval: Optional[RetrievalTables] = None) -> list[dict]:
    """Train and score ``methods`` on one run: one result dict per method, in the order given.

    pool_base, pool_retrieval: the base encoder's and E's pooled features of the pool (row i = training image
    ``split.pool[i]``; arrays [P, D] or :class:`~ltcore.features.FeatureArrays`); test_base, test_retrieval: of
    the full test split. ``split``: a :class:`~ltcore.data.longtail.PermutedSplit` (``train``, ``val``, ``pool``,
    ``class_counts``, ``permutation``) indexing ``train_labels``. ``retrieval``: the permutation's
    :class:`RetrievalTables` (:func:`build_retrieval_tables`), to share across seeds; built here if None.
    A training several methods read (``rac`` and its two branches; ``retrieval-only`` and ``retrieval-only-k30``
    when k = 30) runs once.

    Each result: ``method``, ``seed``, ``permutation``, ``setting`` ("frozen-features"); ``many``, ``medium``,
    ``few``, ``overall`` and ``per_class`` in percent on the full test split (shot groups from the run's class
    counts, :func:`ltcore.metrics.shot_accuracy`); ``curve`` (validation overall accuracy after each epoch, in
    percent) and ``val_overall`` (its value at the kept epoch). The weights scored are those of the epoch with
    the best validation accuracy (early stopping on the validation split, never on test; for ``rac``'s
    branches, the epoch the fused model scored best).
    """
    seed = check_int("seed", seed, 0, 2**32 - 1)
    permutation = check_int("permutation", permutation, 0)
    if int(split.permutation) != permutation:
        raise ValueError(f"the split was drawn for permutation {split.permutation}, not {permutation}")
    recipe = recipe or RACClaimsRecipe()
    plans = {method: _method_plan(method, recipe) for method in methods}
    if retrieval is None:
        retrieval = build_retrieval_tables(pool_retrieval, train_labels, split, test_retrieval, class_names)
    elif retrieval.permutation != permutation or not np.array_equal(retrieval.train, np.asarray(split.train)):
        raise ValueError("the retrieval tables were built for another split (permutation "
                         f"{retrieval.permutation}): build them with build_retrieval_tables(..., split, ...)")
    data = _RunData.build(pool_base, train_labels, split, test_base, test_labels)
    trained: dict[_Training, dict] = {}
    results = []
    for method in methods:
        training, output = plans[method]
        if training not in trained:
            trained[training] = _train(training, data, retrieval, recipe, seed)
        run = trained[training]
        test = shot_accuracy(run["test"][output].argmax(1), data.labels["test"], data.class_counts)
        curve = run["curves"][output]
        results.append({"method": method, "seed": seed, "permutation": permutation, "setting": SETTING,
                        "many": 100 * test.many, "medium": 100 * test.medium, "few": 100 * test.few,
                        "overall": 100 * test.overall, "per_class": [100 * float(a) for a in test.per_class],
                        "val_overall": curve[run["kept"] - 1], "curve": curve})
    return results


class _RunData(NamedTuple):
    """The base features (standardised by the training split's statistics) and labels of one run, per split."""

    base: dict  # split -> float32 tensor [N, D_B]
    labels: dict  # split -> int64 array [N]
    class_counts: np.ndarray

    @classmethod
    def build(cls, pool_base: Any, train_labels: np.ndarray, split: Any, test_base: Any,
              test_labels: np.ndarray) -> "_RunData":
        pool_features = _pooled("pool_base", pool_base)
        rows = _split_rows(split, len(pool_features))
        train_labels, test_labels = (np.asarray(x, dtype=np.int64) for x in (train_labels, test_labels))
        features = {"train": pool_features[rows["train"]], "val": pool_features[rows["val"]],
                    "test": _pooled("test_base", test_base)}
        if len(features["test"]) != len(test_labels):
            raise ValueError(f"test_base holds {len(features['test'])} rows but test_labels {len(test_labels)}")
        mean = features["train"].mean(axis=0)
        std = features["train"].std(axis=0) + 1e-6  # a constant feature stays finite
        base = {name: torch.from_numpy((array - mean) / std).float() for name, array in features.items()}
        labels = {"train": train_labels[np.asarray(split.train)], "val": train_labels[np.asarray(split.val)],
                  "test": test_labels}
        counts = np.asarray(split.class_counts, dtype=np.int64)
        if not np.array_equal(np.bincount(labels["train"], minlength=len(counts)), counts):
            raise ValueError("split.class_counts does not count the labels of split.train")
        return cls(base, labels, counts)


def _train(training: _Training, data: _RunData, retrieval: RetrievalTables, recipe: RACClaimsRecipe,
           seed: int) -> dict:
    """Train one configuration: its outputs' logits on the test split with the weights of the epoch that scored
    best on validation (``kept``, 1-based; judged by the trained output, the fused one for RAC), and every
    output's validation curve."""
    branches = mode_branches(training.mode)
    num_classes = len(data.class_counts)
    texts = retrieval.text_features(training.text_encoder, training.k, recipe.text_reading) \
        if "retrieval" in branches else {name: None for name in SPLIT_NAMES}
    torch.manual_seed(seed)  # B first, so every method of the run starts from the same B
    base = _base_head(data.base["train"].shape[1], num_classes, recipe.hidden) if "base" in branches else None
    text_head = None
    if "retrieval" in branches:
        linear = nn.Linear(texts["train"].shape[1], num_classes)
        text_head = CentredLinear(linear, texts["train"].mean(dim=0))  # (N, D_T) -> (D_T,)
    model = CachedFeatureRAC(base, text_head, training.mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loss_fn = recipe.loss(training.loss, data.class_counts)
    labels = torch.from_numpy(data.labels["train"])
    inputs = {name: (data.base[name] if base is not None else None, texts[name]) for name in SPLIT_NAMES}
    outputs = ("fused", "base", "retrieval") if training.mode == "rac" else ("fused",)
    curves: dict[str, list[float]] = {output: [] for output in outputs}
    kept, kept_state = 0, None
    order, order_seed = torch.Generator(), seed + (REORDERED_OFFSET if training.reordered else 0)
    for epoch in range(recipe.epochs):
        order.manual_seed(order_seed * 100_003 + epoch)  # the data order of fit(), epoch by epoch
        model.train()
        for batch in torch.randperm(len(labels), generator=order).split(recipe.batch_size):
            batch_inputs = tuple(None if x is None else x[batch] for x in inputs["train"])
            optimization_step(model, [optimizer], batch_inputs, labels[batch], batch, loss_fn, epoch)
        check_finite_weights(model, f"after epoch {epoch + 1}")
        val_logits = _logits(model, inputs["val"], outputs)
        for output in outputs:
            accuracy = per_class_accuracy(val_logits[output].argmax(1), data.labels["val"], num_classes)
            curves[output].append(100 * float(np.nanmean(accuracy)))
        if kept_state is None or curves["fused"][-1] > curves["fused"][kept - 1]:
            kept, kept_state = epoch + 1, copy.deepcopy(model.state_dict())
    model.load_state_dict(kept_state)  # the weights of the best validation epoch (the earliest of equals)
    return {"test": _logits(model, inputs["test"], outputs), "curves": curves, "kept": kept}


@torch.no_grad()
def _logits(model: CachedFeatureRAC, inputs: tuple, outputs: Sequence[str]) -> dict[str, np.ndarray]:
    model.eval()
    result = model(*inputs)
    return {output: getattr(result, output).numpy() for output in outputs}


# ======================================================================================= validation choices
def choose_on_validation(run_inputs: Sequence[Mapping[str, Any]], candidates: Mapping[str, Sequence],
                         methods: Sequence[str] = ("base-lace", "rac", "retrieval-only"),
                         recipe: Optional[RACClaimsRecipe] = None, tolerance: float = 0.1) -> dict:
    """Pick the recipe's settings on the validation split: every combination of ``candidates`` on every run.

    run_inputs: keyword arguments of :func:`run_rac_claims_methods` for each run used (their ``recipe`` and
    ``methods`` are set here). candidates: recipe field -> values tried (e.g. ``{"lr": [3e-4, 1e-3, 3e-3]}``),
    each combination trained for at most ``recipe.epochs`` epochs. A combination's ``score`` is the mean over
    runs and ``methods`` of ``val_overall`` (the best epoch's); its ``reached`` curve, at epoch e, the same mean
    of the best validation accuracy within the first e epochs. The choice: the best score, and as the epoch cap
    the fewest epochs whose ``reached`` value is within ``tolerance`` points of that score (training longer
    changes nothing the choice can see). The test numbers the runs also compute are discarded. Returns
    ``{"recipe": the chosen RACClaimsRecipe, "scores": [{**combination, "score", "curve", "reached"}, ...]}``,
    ``curve`` the mean validation curve.
    """
    recipe = recipe or RACClaimsRecipe()
    tolerance = check_float("tolerance", tolerance, 0.0)
    names = list(candidates)
    grid = [dict(zip(names, values)) for values in _product([list(candidates[name]) for name in names])]
    scores = []
    for combination in grid:
        tried = dataclasses.replace(recipe, **combination)
        results = [result for inputs in run_inputs
                   for result in run_rac_claims_methods(**{**inputs, "methods": tuple(methods), "recipe": tried})]
        curves = np.array([result["curve"] for result in results])  # (runs x methods, epochs)
        scores.append({**combination, "score": float(np.mean([result["val_overall"] for result in results])),
                       "curve": curves.mean(axis=0).tolist(),
                       "reached": np.maximum.accumulate(curves, axis=1).mean(axis=0).tolist()})
    best = max(scores, key=lambda row: row["score"])
    epochs = 1 + next(e for e, value in enumerate(best["reached"]) if value >= best["score"] - tolerance)
    return {"recipe": dataclasses.replace(recipe, **{name: best[name] for name in names}, epochs=epochs),
            "scores": scores}


def _product(values: list[list]) -> list[tuple]:
    combos: list[tuple] = [()]
    for options in values:
        combos = [combo + (option,) for combo in combos for option in options]
    return combos


# ================================================================================================ inputs
def _pooled(name: str, features: Any) -> np.ndarray:
    """The pooled vectors [N, D] of a FeatureArrays (its ``pooled``) or an array, as finite float32."""
    array = np.asarray(getattr(features, "pooled", features))
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or len(array) == 0:
        raise ValueError(f"{name} must be pooled features [N, D] (or a FeatureArrays), got shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or inf")
    return array


def _split_rows(split: Any, pool_rows: int) -> dict[str, np.ndarray]:
    """Rows of the pool's features holding ``split.train`` and ``split.val`` (the pool is sorted)."""
    pool = np.asarray(split.pool)
    if len(pool) != pool_rows:
        raise ValueError(f"the pool features hold {pool_rows} rows but the split's pool has {len(pool)}: row i must "
                         f"be training image split.pool[i]")
    rows = {}
    for name in ("train", "val"):
        indices = np.asarray(getattr(split, name))
        found = np.searchsorted(pool, indices)
        inside = found < len(pool)
        inside[inside] = pool[found[inside]] == indices[inside]
        if not inside.all():
            raise ValueError(f"split.{name} holds training index {int(indices[~inside][0])}, which is not in "
                             f"split.pool")
        rows[name] = found
    if not len(rows["val"]):
        raise ValueError("the split has no validation images: every choice and every curve needs them")
    return rows
