"""RAC's training recipe: retrieval set-up, precomputed neighbours, cached text embeddings, LACE, per-branch scores.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022:
Sec. 3.2 (LACE, tau = 1, label smoothing), Sec. 3.3 (two branches, "trained under a common LACE loss", eq. 5),
Sec. 3.4 (frozen E, HNSW with M = 32, "we drop the first result"), Sec. 4.3 / Table 3 (Retrieval / Base / RAC),
Sec. 4.5 / Fig. 4 (text encoders), Sec. 4.6 / Fig. 3 (k), Sec. 4.8 / Table 5 (training time). The parts are in
:mod:`ltcore.rac.model` (eq. 5, the retrieval module), :mod:`ltcore.rac.image_encoders` (E),
:mod:`ltcore.rac.text_encoders` (T), :mod:`ltcore.rac.index` and :mod:`ltcore.rac.classifier` (the trainer's
hooks, T's centred head); this module wires them into the shared trainer :func:`ltcore.train.fit` so that
notebooks stay thin.

The recipe
----------
1. :func:`build_retrieval_setup`: E (default ``build_image_encoder("efficientnet_lite0")`` at ``image_size`` 64 px,
   a CPU-sized choice) embeds the *un-augmented* images of every split once (cached on disk by
   :func:`ltcore.rac.embeddings.embed_dataset`); the training embeddings are the keys of an HNSW index (M = 32,
   cosine); the index texts are the class names of the training labels ("which may be labels", Sec. 3.4).
2. :func:`build_rac_classifier`: ``RACModel(base=PlainClassifier(build_backbone(backbone)), retrieval, L, mode)``
   in mode "rac" | "base" | "retrieval" (Table 3's rows), wrapped in :class:`~ltcore.rac.classifier.RACClassifier`,
   which gives the trainer its hooks (``training_step``, ``predict_step``, ``configure_optimizers``) and looks
   retrieval results up by the dataset index of each item (the trainer's batches are ``(image, label, index)``).
3. :func:`train_rac`: :func:`ltcore.train.fit` under LACE with label smoothing on the fused logits, then each
   branch's logits on the test split (``predict_step`` returns ``logits`` = fused, ``base``, ``retrieval``)
   become results rows like :func:`ltcore.experiments.train_baseline`'s.

Readings and shortcuts (each a setting of :class:`RACSettings`)
---------------------------------------------------------------
* **Precomputed neighbours** (``precompute=True``, default). "During training, we produce features
  z^q = E(x^q) for each image x^q in the training batch. The k-NN is queried for each z^q" (Sec. 3.4). Because E
  and the index are frozen, the neighbours of the un-augmented training images are computed once
  (``RetrievalModule.precompute_neighbours``, training rule: self hit dropped) and so are those of the val/test
  images (no drop). What it changes: E never sees the training augmentation, so a training image retrieves the
  same k neighbours in every epoch (the paper's on-line query uses the augmented image, whose neighbours vary
  a little with the crop and flip); the base branch still trains on augmented images. What it saves: E's
  forward pass on every batch, which with our E at 64 px costs several times the base branch's whole training
  step (``python -m ltcore bench rac``). ``precompute=False`` is the paper's on-line retrieval.
* **Frozen T, cached** (``train_transformer=False``, default, and ``cache_text=None`` = cache when possible).
  The paper fine-tunes T: "the additional label encoding (and subsequent backprop), does increase the training
  time by a factor of 1.5-2x" (Sec. 4.8). On CPU a transformer T on every batch costs ~100x our base branch, so
  the quick profile freezes T's transformer and trains only T's linear head. With T frozen and the neighbours
  precomputed, a query's retrieved texts, hence T's pooled embedding, are fixed per image: they are computed
  once per split (:func:`precompute_text_tables`; identical text lists are encoded once) and the retrieval branch
  becomes a linear layer on cached features. What that changes versus the paper: T cannot adapt its
  representation of the label lists to the task, so the retrieval branch learns only a linear read-out of a
  fixed, pretrained (or, for "Rand.", random) sentence embedding; the logits are the same as running the frozen
  T on-line (tests check it). ``train_transformer=True`` (notebooks: ``PROFILE == "full"``) is the paper's path:
  T runs on every batch and its transformer is fine-tuned, with its own AdamW optimizer at the paper's
  Places365-LT settings (lr 5e-5, weight decay 0.02, Tables S6-S7, constant) while the base branch and T's
  head keep the main optimizer and the trainer's schedule. The bag-of-words T ("Rand.") has no transformer: the
  flag does not apply to it.
* **Loss** (:meth:`RACSettings.loss`): "The two branches are trained under a common LACE loss" (Sec. 3.3):
  ``build_loss("lace", ...)`` on the fused logits, tau = 1 ("setting tau = 1", Sec. 3.2), label smoothing 0.1
  (Table S7). In "base" and "retrieval" modes the fused logits are that branch's own, so *Base* is the plain
  classifier under LACE with label smoothing, the paper's "primary baseline" (Sec. 4.3).
* **Optimiser**: AdamW, the paper's ("We finetune with AdamW [35] instead of SGD", App. B; weight decay 0.02,
  Table S7), for every RAC row (Base, Retrieval, RAC), at lr 3e-3 (our choice for a tiny ResNet trained from
  scratch in a few epochs; the paper's 5e-5 fine-tunes a pretrained ViT) under the shared trainer's schedule.
  Why it matters here: eq. 5 divides each branch by its norm, so a branch's gradient is scaled by
  (L/2) / ||f_branch||; with SGD that shrinks the effective learning rate of both branches as their logits
  grow (with L = 10, by ~5x within a few epochs). In our quick runs RAC trained with SGD ended *below* the base
  branch trained alone, and with AdamW above it; Adam's steps do not depend on the gradient's scale.
  ``optimizer="sgd"`` gives the baselines' recipe (:class:`ltcore.train.TrainConfig`) for comparison.
* **Centred head of T** (``centre_text=True``): "This text is then fed through a text encoder and transformed
  by another linear layer into logits" (Sec. 3.3). The linear layer is
  :class:`~ltcore.rac.classifier.CentredLinear`, ``W (x - mu) + b`` with mu the mean pooled embedding of the
  training queries under the initial T (why: :mod:`ltcore.rac.classifier`).
* **Index determinism**: the HNSW graph is built with one thread (faiss's multi-threaded insertion order can
  vary between runs, and with it the neighbours); at our sizes this costs well under a second.

Taught in notebook 05, *Each branch, class by class* (Fig. 2), and notebook 07, *One recipe for every row*
(Table 3, Fig. 3-4, Table 5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ltcore.checks import check_choice, check_float, check_int
from ltcore.config import seed_everything
from ltcore.data.datasets import LTSplits, evaluation_view
from ltcore.experiments import evaluate
from ltcore.losses import build_loss
from ltcore.models import PlainClassifier, build_backbone
from ltcore.rac.classifier import OPTIMIZERS, RACClassifier, centre_text_head
from ltcore.rac.embeddings import embed_dataset
from ltcore.rac.image_encoders import ImageEncoder, build_image_encoder
from ltcore.rac.index import VectorIndex
from ltcore.rac.model import DROP_RULES, PAPER_K, RACModel, RetrievalModule, label_texts, mode_branches
from ltcore.rac.text_encoders import TEXT_ENCODERS, TextEncoder, build_text_encoder, has_transformer
from ltcore.results import shot_row
from ltcore.run import fit_or_resume
from ltcore.train import TrainConfig, predict

DEFAULT_IMAGE_ENCODER = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 64  # CPU-sized; the paper's ViT-B-16 sees 224 px
SPLITS = ("train", "val", "test")
METHOD_NAMES = {"rac": "RAC", "base": "Base", "retrieval": "Retrieval"}  # Table 3's row names
BRANCH_KEYS = {"fused": "logits", "base": "base", "retrieval": "retrieval"}  # branch -> key of predict()'s dict
ADAMW_LR = 3e-3  # our choice for a tiny ResNet trained from scratch in a few epochs (paper: 5e-5, pretrained ViT)
ADAMW_WEIGHT_DECAY = 0.02  # Table S7


# ============================================================================================= settings
@dataclass(frozen=True)
class RACSettings:
    """How the retrieval branch is built and trained (module docstring for each reading).

    text_encoder:      T's name for :func:`ltcore.rac.text_encoders.build_text_encoder` ("bow_random", "minilm",
                       "clip", ...).
    text_options:      extra keyword arguments for T (e.g. ``{"pretrained": "/path/clip.safetensors"}``).
    k:                 texts retrieved per query (paper: 30).
    drop_self:         the training-time self-hit rule of :class:`ltcore.rac.model.RetrievalModule`.
    precompute:        neighbours of the un-augmented images computed once (True) or on-line from each batch.
    train_transformer: fine-tune T's transformer (the paper) or train only T's head (quick default); the bag of
                       words has no transformer (:attr:`fine_tunes_transformer`).
    cache_text:        cache T's per-query embeddings: None = whenever possible (T frozen and neighbours
                       precomputed), True = required (an error if impossible), False = never.
    centre_text:       T's head sees its embeddings minus their mean over the training queries (module docstring).
    tau, label_smoothing: LACE's temperature and label smoothing (paper: 1 and 0.1).
    optimizer:         "adamw" (the paper's, default) or "sgd" (the baselines' recipe of :class:`TrainConfig`).
    lr, weight_decay:  of the main optimizer (B and T's head); None = 3e-3 and 0.02 for AdamW, the
                       :class:`TrainConfig`'s for SGD. The lr follows the config's schedule (warm-up, milestones).
    transformer_lr, transformer_weight_decay: AdamW for a fine-tuned T (paper, Places365-LT: 5e-5 and 0.02).
    """

    text_encoder: str = "bow_random"
    text_options: Mapping = field(default_factory=dict)
    k: int = PAPER_K
    drop_self: str = "first"
    precompute: bool = True
    train_transformer: bool = False
    cache_text: Optional[bool] = None
    centre_text: bool = True
    tau: float = 1.0
    label_smoothing: float = 0.1
    optimizer: str = "adamw"
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    transformer_lr: float = 5e-5
    transformer_weight_decay: float = 0.02

    def __post_init__(self) -> None:
        check_choice("text_encoder", self.text_encoder, TEXT_ENCODERS)
        check_int("k", self.k, 1)
        check_choice("drop_self", self.drop_self, DROP_RULES)
        check_float("tau", self.tau, 0.0)
        check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr is not None:
            check_float("lr", self.lr, 0.0, low_open=True)
        if self.weight_decay is not None:
            check_float("weight_decay", self.weight_decay, 0.0)
        check_float("transformer_lr", self.transformer_lr, 0.0, low_open=True)
        check_float("transformer_weight_decay", self.transformer_weight_decay, 0.0)
        if self.cache_text and not self.precompute:
            raise ValueError("cache_text=True needs precompute=True: on-line retrieval changes the texts every batch")
        if self.cache_text and self.fine_tunes_transformer:
            raise ValueError("cache_text=True needs a frozen T (train_transformer=False): a trained T's embeddings "
                             "change at every step")

    @property
    def fine_tunes_transformer(self) -> bool:
        """Whether T's transformer trains: ``train_transformer`` and T has one (the bag of words has none)."""
        return self.train_transformer and has_transformer(self.text_encoder)

    def loss(self, class_counts: Sequence[int]):
        """The common LACE loss of both branches (Sec. 3.3) with this tau and label smoothing, for ``fit``:
        ``loss(fused_logits, labels, epoch=None)``."""
        return build_loss("lace", class_counts, tau=self.tau, label_smoothing=self.label_smoothing)

    def train_config(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this optimizer's lr and weight decay (the schedule, epochs and batch size are kept)."""
        if self.optimizer == "sgd":
            lr, weight_decay = config.lr, config.weight_decay
        else:
            lr, weight_decay = ADAMW_LR, ADAMW_WEIGHT_DECAY
        return replace(config, lr=self.lr if self.lr is not None else lr,
                       weight_decay=self.weight_decay if self.weight_decay is not None else weight_decay)


# ======================================================================================== retrieval set-up
@dataclass
class RetrievalSetup:
    """The frozen half of RAC's retrieval module for one benchmark (Sec. 3.4).

    image_encoder: E (frozen).  index: keys = E's embeddings of the un-augmented training images, id = row.
    texts: the training images' class names, one per key.  embeddings: split -> [N_split, D] E-embeddings of
    that split's un-augmented images (row = dataset index).  seconds: wall time of embedding and indexing.
    """

    image_encoder: ImageEncoder
    index: VectorIndex
    texts: list
    embeddings: dict
    seconds: float


def build_retrieval_setup(
    splits: LTSplits,
    encoder: str | ImageEncoder = DEFAULT_IMAGE_ENCODER,
    image_size: Optional[int] = None,
    *,
    index_kind: str = "hnsw",
    embed_splits: Sequence[str] = SPLITS,
    batch_size: int = 128,
    cache: bool = True,
    cache_dir: Optional[str] = None,
    progress: bool = True,
) -> RetrievalSetup:
    """E, the index of the training keys and the per-split embeddings for ``splits`` (step 1 of the recipe).

    encoder:    a registered name (built here at ``image_size``, default 64 px) or a ready :class:`ImageEncoder`
                (then ``image_size`` must be None: E's own preprocessing serves keys and on-line queries alike).
    index_kind: "hnsw" (the paper's, M = 32) or "flat" (exact); cosine similarity either way.
    embed_splits: the splits embedded ("train" is required: it fills the index); missing splits are skipped.
    """
    if "train" not in embed_splits:
        raise ValueError(f"embed_splits must contain 'train' (the index keys), got {list(embed_splits)}")
    unknown = sorted(set(embed_splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} in embed_splits; valid: {SPLITS}")
    if not splits.class_names:
        raise ValueError(f"{splits.name} has no class_names: RAC's index texts are the class names of its labels")
    if isinstance(encoder, ImageEncoder):
        if image_size is not None:
            raise ValueError("image_size applies to an encoder built here by name; a ready ImageEncoder keeps its "
                             "own preprocessing (build it with build_image_encoder(name, image_size=...))")
    else:
        encoder = build_image_encoder(encoder, image_size=image_size or DEFAULT_IMAGE_SIZE)
    started = time.perf_counter()
    embeddings = {}
    for name in embed_splits:
        dataset = getattr(splits, name)
        if dataset is not None:
            # E sees every split as the test split does: without augmentation, with its resize and crop
            embeddings[name] = embed_dataset(encoder, evaluation_view(dataset, splits.test), batch_size, cache=cache,
                                             cache_dir=cache_dir, progress=progress)
    index = VectorIndex.build(embeddings["train"], index_kind, "cosine", progress=False, threads=1)
    texts = label_texts(np.asarray(splits.train.labels, dtype=np.int64), splits.class_names)
    return RetrievalSetup(encoder, index, texts, embeddings, time.perf_counter() - started)


def build_retrieval_module(setup: RetrievalSetup, text: TextEncoder, k: int = PAPER_K, drop_self: str = "first"
                           ) -> RetrievalModule:
    """A :class:`RetrievalModule` over the set-up's E, index and texts with text encoder ``text``."""
    return RetrievalModule(setup.image_encoder, setup.index, setup.texts, text, k=k, drop_self=drop_self)


def precompute_neighbour_tables(retrieval: RetrievalModule, embeddings: Mapping[str, np.ndarray]
                                ) -> dict[str, Tensor]:
    """Precomputed neighbour ids [N_split, k] per split (a classifier's ``neighbour_tables``).

    "train" gets the training rule (the query's own key, whose id is its row, is dropped per ``drop_self``);
    other splits are searched as at evaluation (k hits, none dropped). Row n belongs to dataset item n.
    """
    tables = {}
    for name, queries in embeddings.items():
        is_train = name == "train"
        if is_train and len(queries) != retrieval.index.ntotal:
            raise ValueError(f"{len(queries)} training embeddings for an index of {retrieval.index.ntotal} keys: "
                             "the training rows must be the index keys")
        query_ids = torch.arange(len(queries)) if is_train else None
        tables[name] = retrieval.precompute_neighbours(queries, query_ids=query_ids, drop=is_train, progress=False)
    return tables


# ============================================================================================ text tables
@torch.no_grad()
def encode_texts(text: TextEncoder, texts: Sequence[Sequence[str]], batch_size: int = 256) -> Tensor:
    """T's pooled embeddings [N, D] (no head) of N queries' retrieved texts, with T's current weights.

    Equal text lists are encoded once (labels repeat: many queries retrieve the same list), in first-seen order
    and fixed batches, so the result is deterministic.
    """
    if not len(texts):
        return torch.empty((0, text.embed_dim))
    position: dict[tuple, int] = {}
    inverse = torch.tensor([position.setdefault(tuple(row), len(position)) for row in texts])  # (N,) -> unique row
    unique = [list(row) for row in position]
    chunks = [text.embed(unique[start:start + batch_size]) for start in range(0, len(unique), batch_size)]
    return torch.cat(chunks).float()[inverse]  # (U, D) -> (N, D)


def text_embedding_table(text: TextEncoder, texts: Sequence[Sequence[str]], batch_size: int = 256) -> Tensor:
    """The cache of a frozen T: :func:`encode_texts`, refused when T's transformer trains."""
    if text.train_transformer:
        raise ValueError("T's transformer trains: its embeddings change at every step and cannot be cached")
    return encode_texts(text, texts, batch_size)


def precompute_text_tables(retrieval: RetrievalModule, neighbour_tables: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Cached T embeddings [N_split, D] per split (a classifier's ``text_tables``), from the neighbour tables."""
    return {name: text_embedding_table(retrieval.text_encoder, retrieval.retrieved_texts(ids))
            for name, ids in neighbour_tables.items()}


# ============================================================================================== the classifier
def build_rac_classifier(
    splits: LTSplits,
    settings: RACSettings = RACSettings(),
    *,
    setup: Optional[RetrievalSetup] = None,
    mode: str = "rac",
    backbone: str = "resnet10_tiny",
    seed: int = 0,
    pretrained: bool = False,
) -> RACClassifier:
    """Step 2 of the recipe: B, T, the retrieval module, the precomputed tables, wrapped for the trainer.

    The base branch is built first from ``seed`` (so "base" and "rac" runs start from the same B), then T.
    ``pretrained``: B starts from its ImageNet weights (the paper's ViT-B/16; :func:`ltcore.models.build_backbone`).
    ``classifier.retrieval_seconds`` is the time spent precomputing neighbours and text embeddings.
    """
    branches = mode_branches(mode)
    if "retrieval" in branches and setup is None:
        raise ValueError(f"mode {mode!r} needs a RetrievalSetup (build_retrieval_setup(splits, ...))")
    seed_everything(seed)
    base = None
    if "base" in branches:
        in_chans = splits.train[0][0].shape[0]
        base = PlainClassifier(build_backbone(backbone, in_chans, pretrained=pretrained), splits.num_classes)
    retrieval, neighbour_tables, text_tables = None, {}, {}
    started = time.perf_counter()
    if "retrieval" in branches:
        text = build_text_encoder(settings.text_encoder, splits.num_classes,
                                  train_transformer=settings.train_transformer, **dict(settings.text_options))
        retrieval = build_retrieval_module(setup, text, settings.k, settings.drop_self)
        if settings.precompute:
            neighbour_tables = precompute_neighbour_tables(retrieval, setup.embeddings)
        can_cache = settings.precompute and not text.train_transformer  # RACSettings rejects cache_text otherwise
        if can_cache and settings.cache_text is not False:
            text_tables = precompute_text_tables(retrieval, neighbour_tables)
        if settings.centre_text:
            train_embeddings = text_tables.get("train")
            if train_embeddings is None:  # T trains or retrieval is on-line: encode the training queries once
                train_ids = neighbour_tables.get("train")
                if train_ids is None:
                    train_ids = precompute_neighbour_tables(retrieval, {"train": setup.embeddings["train"]})["train"]
                train_embeddings = encode_texts(text, retrieval.retrieved_texts(train_ids))
            centre_text_head(text, train_embeddings)
    classifier = RACClassifier(RACModel(base, retrieval, splits.num_classes, mode=mode),
                               neighbour_tables=neighbour_tables, text_tables=text_tables,
                               optimizer=settings.optimizer, transformer_lr=settings.transformer_lr,
                               transformer_weight_decay=settings.transformer_weight_decay)
    classifier.retrieval_seconds = time.perf_counter() - started
    return classifier


# ============================================================================================ train + score
def train_rac(
    splits: LTSplits,
    config: TrainConfig,
    settings: RACSettings = RACSettings(),
    *,
    setup: Optional[RetrievalSetup] = None,
    mode: str = "rac",
    backbone: str = "resnet10_tiny",
    method: Optional[str] = None,
    progress: bool = True,
    pretrained: bool = False,
    resumable=None,
) -> dict:
    """Train a RAC model (or one of its branches alone) under LACE and score every branch on the test split.

    Returns a dict: ``row`` (results row of the fused output, method "RAC" / "Base" / "Retrieval" unless
    ``method`` is given), ``rows`` (branch -> row; in "rac" mode also "<method>: base branch" and
    "<method>: retrieval branch"), ``shots`` (branch -> :class:`~ltcore.metrics.ShotAccuracy`), ``predictions``
    (:func:`~ltcore.train.predict` output: ``logits``, ``base``, ``retrieval``, ``labels``, ``indices``),
    ``history``, ``model`` (the :class:`~ltcore.rac.classifier.RACClassifier`). ``config`` gives epochs, batch
    size and schedule; its lr and weight decay are replaced per ``settings.optimizer``
    (:meth:`RACSettings.train_config`), so one config serves the SGD baselines and the RAC rows. Rows carry
    ``k``, ``text_encoder`` and ``text_encoder_mode`` (how T ran, :attr:`RACClassifier.text_encoder_mode`; None
    in "base" mode), ``optimizer`` and ``retrieval_seconds``. ``seconds`` in the rows is training plus test
    prediction, as in :func:`ltcore.experiments.train_baseline`; ``retrieval_seconds`` is this run's one-off
    precomputation (the set-up's embedding and indexing time is ``setup.seconds``). ``pretrained``: B's pretrained
    weights (:func:`build_rac_classifier`). ``resumable`` (a
    :class:`ltcore.run.Resumable`): train with the train command's checkpointed, resumable loop
    (:func:`ltcore.run.fit_resumable`) instead of :func:`ltcore.train.fit`, as the notebooks' full profile does.
    """
    classifier = build_rac_classifier(splits, settings, setup=setup, mode=mode, backbone=backbone, seed=config.seed,
                                      pretrained=pretrained)
    loss_fn = settings.loss(splits.class_counts)
    tables = classifier.neighbour_tables
    val_set = splits.val if splits.val is not None and (not tables or "val" in tables) else None
    if "test" not in tables and tables:
        raise ValueError("the retrieval set-up has no test embeddings (embed_splits must contain 'test')")
    config = settings.train_config(config)
    started = time.perf_counter()
    history = fit_or_resume(classifier, splits, loss_fn, config, val_set, resumable)
    with classifier.evaluating_on("test"):
        predictions = predict(classifier, splits.test, config.eval_batch_size, progress=progress)
    seconds = time.perf_counter() - started

    method = method or METHOD_NAMES[mode]
    shots = {branch: evaluate(predictions, splits.class_counts, key)
             for branch, key in BRANCH_KEYS.items() if key in predictions}
    extra = {"k": None, "text_encoder": None, "text_encoder_mode": None}
    if mode != "base":
        extra = {"k": settings.k, "text_encoder": settings.text_encoder,
                 "text_encoder_mode": classifier.text_encoder_mode}
    extra |= {"optimizer": settings.optimizer, "retrieval_seconds": round(classifier.retrieval_seconds, 1)}
    names = {"fused": method, "base": f"{method}: base branch", "retrieval": f"{method}: retrieval branch"}
    branches = ("fused", "base", "retrieval") if mode == "rac" else ("fused",)
    rows = {branch: shot_row(splits.name, names[branch], shots[branch], seconds, **extra) for branch in branches}
    return {"row": rows["fused"], "rows": rows, "shots": shots, "predictions": predictions, "history": history,
            "model": classifier}
