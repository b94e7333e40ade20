"""RAC's training recipe: retrieval set-up, precomputed neighbours, cached text embeddings, LACE, per-branch scores.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022:
Sec. 3.2 (LACE, tau = 1, label smoothing), Sec. 3.3 (two branches, "trained under a common LACE loss", eq. 5),
Sec. 3.4 (frozen E, HNSW with M = 32, "we drop the first result"), Sec. 4.3 / Table 3 (Retrieval / Base / RAC),
Sec. 4.5 / Fig. 4 (text encoders), Sec. 4.6 / Fig. 3 (k), Sec. 4.8 / Table 5 (training time). The parts are in
:mod:`ltcore.rac.model` (eq. 5, the retrieval module, the loss), :mod:`ltcore.rac.encoders` (E, T) and :mod:`ltcore.rac.index`;
this module wires them into the shared trainer :func:`ltcore.train.fit` so that notebooks stay thin.

The recipe
----------
1. :func:`build_retrieval_setup`: E (default ``image_encoder("efficientnet_lite0")`` at ``image_size`` 64 px, a
   CPU-sized choice) embeds the *un-augmented* images of every split once (cached on disk by
   :func:`ltcore.rac.encoders.embed_dataset`); the training embeddings are the keys of an HNSW index (M = 32, cosine);
   the index texts are the class names of the training labels ("which may be labels", Sec. 3.4).
2. :func:`build_rac_classifier`: ``RACModel(base=PlainClassifier(build_backbone(backbone)), retrieval, L, mode)``
   in mode "rac" | "base" | "retrieval" (Table 3's rows), wrapped in :class:`RACClassifier`, which gives the
   trainer its hooks (``training_step``, ``predict_step``, ``configure_optimizers``) and looks retrieval results
   up by the dataset index of each item (the trainer's batches are ``(image, label, index)``).
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
  once per split (:func:`text_embedding_table`; identical text lists are encoded once) and the retrieval branch
  becomes a linear layer on cached features. What that changes versus the paper: T cannot adapt its
  representation of the label lists to the task, so the retrieval branch learns only a linear read-out of a
  fixed, pretrained (or, for "Rand.", random) sentence embedding; the logits are the same as running the frozen
  T on-line (tests check it). ``train_transformer=True`` (notebooks: ``PROFILE == "full"``) is the paper's path:
  T runs on every batch and its transformer is fine-tuned, with its own AdamW optimizer at the paper's
  Places365-LT settings (lr 5e-5, weight decay 0.02, Tables S6-S7, constant) while the base branch and T's
  head keep the main optimizer and the trainer's schedule. The bag-of-words T ("Rand.") has no transformer: the flag does not apply to it.
* **Loss**: "The two branches are trained under a common LACE loss" (Sec. 3.3): ``build_loss("lace", ...)`` (the
  arithmetic of :func:`ltcore.rac.model.rac_loss`) on the fused logits, tau = 1 ("setting tau = 1", Sec. 3.2), label smoothing 0.1 (Table S7). In "base" and "retrieval"
  modes the fused logits are that branch's own, so *Base* is the plain classifier under LACE with label
  smoothing, the paper's "primary baseline" (Sec. 4.3).
* **Optimiser**: AdamW, the paper's ("We finetune with AdamW [35] instead of SGD", App. B; weight decay 0.02,
  Table S7), for every RAC row (Base, Retrieval, RAC), at lr 3e-3 (our choice for a tiny ResNet trained from
  scratch in a few epochs; the paper's 5e-5 fine-tunes a pretrained ViT) under the shared trainer's schedule.
  Why it matters here: eq. 5 divides each branch by its norm, so a branch's gradient is scaled by
  (L/2) / ||f_branch||; with SGD that shrinks the effective learning rate of both branches as their logits
  grow (with L = 10, by ~5x within a few epochs). In our quick runs RAC trained with SGD ended *below* the base
  branch trained alone, and with AdamW above it; Adam's steps do not depend on the gradient's scale.
  ``optimizer="sgd"`` gives the baselines' recipe (:class:`ltcore.train.TrainConfig`) for comparison.
* **Centred head of T** (``centre_text=True``): "This text is then fed through a text encoder and transformed
  by another linear layer into logits" (Sec. 3.3). The linear layer is :class:`CentredLinear`,
  ``W (x - mu) + b`` with mu the mean pooled embedding of the training queries under the initial T: the same
  family of affine maps (``b' = b - W mu``), reparametrised. Our reading of why it is needed: the "Rand."
  embeddings are uniform in [0, 1) ("sampled from a uniform distribution over the interval [0, 1)", Sec. 4.5),
  so every bag of words is ~0.5 in each of its 300 dimensions and a plain head turns that shared mean into a
  large constant logit vector; after eq. 5's normalisation the retrieval branch was then nearly the same for
  every image. Centring removes the shared part from W's updates (pretrained sentence embeddings also share
  a common direction). With a fine-tuned T, mu is fixed at the start of training.
* **Index determinism**: the HNSW graph is built with one thread (faiss's multi-threaded insertion order can
  vary between runs, and with it the neighbours); at our sizes this costs well under a second.

Taught in notebook 05, *Which branch learns the tail* (Fig. 2), and notebook 07, *RAC's Table 3* (Table 3,
Fig. 3-4, Table 5).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ltcore.config import seed_everything
from ltcore.data.datasets import LTSplits, evaluation_view
from ltcore.rac.encoders import ImageEncoder, TextEncoder, embed_dataset, image_encoder, text_encoder
from ltcore.experiments import evaluate
from ltcore.rac.index import VectorIndex
from ltcore.losses import build_loss
from ltcore.models import PlainClassifier, build_backbone
from ltcore.rac.model import (DROP_RULES, PAPER_K, RAC_MODES, RACModel, RACOutput, RetrievalModule,
                        label_texts)
from ltcore.results import shot_row
from ltcore.train import TrainConfig, fit, predict

DEFAULT_IMAGE_ENCODER = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 64  # CPU-sized; the paper's ViT-B-16 sees 224 px
SPLITS = ("train", "val", "test")
METHOD_NAMES = {"rac": "RAC", "base": "Base", "retrieval": "Retrieval"}  # Table 3's row names
BRANCH_KEYS = {"fused": "logits", "base": "base", "retrieval": "retrieval"}  # branch -> key of predict()'s dict
OPTIMIZERS = ("adamw", "sgd")
ADAMW_LR = 3e-3  # our choice for a tiny ResNet trained from scratch in a few epochs (paper: 5e-5, pretrained ViT)
ADAMW_WEIGHT_DECAY = 0.02  # Table S7


# ============================================================================================= settings
@dataclass(frozen=True)
class RACSettings:
    """How the retrieval branch is built and trained (module docstring for each reading).

    text_encoder:      T's name for :func:`ltcore.rac.encoders.text_encoder` ("bow_random", "minilm", "clip", ...).
    text_options:      extra keyword arguments for T (e.g. ``{"pretrained": "/path/clip.safetensors"}``).
    k:                 texts retrieved per query (paper: 30).
    drop_self:         the training-time self-hit rule of :class:`ltcore.rac.model.RetrievalModule`.
    precompute:        neighbours of the un-augmented images computed once (True) or on-line from each batch.
    train_transformer: fine-tune T's transformer (the paper) or train only T's head (quick default).
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
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        if self.drop_self not in DROP_RULES:
            raise ValueError(f"drop_self must be one of {DROP_RULES}, got {self.drop_self!r}")
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("lr", "transformer_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.cache_text and not self.precompute:
            raise ValueError("cache_text=True needs precompute=True: on-line retrieval changes the texts every batch")
        if self.cache_text and self.train_transformer and self.text_encoder != "bow_random":
            raise ValueError("cache_text=True needs a frozen T (train_transformer=False): a trained T's embeddings "
                             "change at every step")

    def loss(self, class_counts: Sequence[int]):
        """The common LACE loss of both branches (Sec. 3.3) with this tau and label smoothing, for ``fit``."""
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
                             "own preprocessing (build it with image_encoder(name, image_size=...))")
    else:
        encoder = image_encoder(encoder, image_size=image_size or DEFAULT_IMAGE_SIZE)
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


def make_text_encoder(name: str, num_classes: int, *, train_transformer: bool = False, **options) -> TextEncoder:
    """T by name; ``train_transformer`` is passed to transformer encoders (the bag of words has none)."""
    if name == "bow_random":
        return text_encoder(name, num_classes, **options)
    return text_encoder(name, num_classes, train_transformer=train_transformer, **options)


def retrieval_module(setup: RetrievalSetup, text: TextEncoder, k: int = PAPER_K, drop_self: str = "first"
                     ) -> RetrievalModule:
    """A :class:`RetrievalModule` over the set-up's E, index and texts with text encoder ``text``."""
    return RetrievalModule(setup.image_encoder, setup.index, setup.texts, text, k=k, drop_self=drop_self)


def neighbour_tables(retrieval: RetrievalModule, embeddings: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Precomputed neighbour ids [N_split, k] per split.

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


def text_tables(retrieval: RetrievalModule, tables: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Cached T embeddings [N_split, D] per split, from the neighbour tables."""
    return {name: text_embedding_table(retrieval.text_encoder, retrieval.retrieved_texts(ids))
            for name, ids in tables.items()}


class CentredLinear(nn.Linear):
    """T's head on centred embeddings: ``W (x - centre) + b``, x [B, D] -> [B, L].

    The same family of affine maps as ``nn.Linear`` (``b' = b - W centre``), parametrised so that gradient steps
    on W follow the embeddings' variation rather than their common mean (module docstring).
    """

    centre: Tensor

    def __init__(self, linear: nn.Linear, centre: Tensor) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        if tuple(centre.shape) != (linear.in_features,):
            raise ValueError(f"centre must have shape ({linear.in_features},), got {tuple(centre.shape)}")
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.register_buffer("centre", centre.detach().to(linear.weight).clone())

    def forward(self, embeddings: Tensor) -> Tensor:
        return super().forward(embeddings - self.centre)  # (B, D) - (D,) -> (B, D) -> (B, L)


def centre_text_head(text: TextEncoder, train_embeddings: Tensor) -> None:
    """Replace T's head by a :class:`CentredLinear` centred on the mean of ``train_embeddings`` [N, D]."""
    text.head = CentredLinear(text.head, train_embeddings.mean(dim=0))  # (N, D) -> (D,)


# =========================================================================================== the classifier
class RACClassifier(nn.Module):
    """A :class:`RACModel` with the hooks of :func:`ltcore.train.fit`, retrieval looked up by dataset index.

    neighbour_tables: split -> ids [N_split, k] (precomputed retrieval); empty = on-line retrieval from the images.
    text_tables:      split -> cached embeddings [N_split, D] of a frozen T; the retrieval logits are then
                      ``T.head(table[indices])`` (identical to running the frozen T on the retrieved texts).
    In training mode the "train" tables are used, in eval mode those of ``eval_split`` (:meth:`evaluating_on`).
    """

    def __init__(
        self,
        model: RACModel,
        *,
        neighbour_tables: Optional[Mapping[str, Tensor]] = None,
        text_tables: Optional[Mapping[str, Tensor]] = None,
        optimizer: str = "adamw",
        transformer_lr: float = 5e-5,
        transformer_weight_decay: float = 0.02,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.model = model
        self.optimizer = optimizer
        self.neighbour_tables = dict(neighbour_tables or {})
        self.text_tables = dict(text_tables or {})
        self.transformer_lr = float(transformer_lr)
        self.transformer_weight_decay = float(transformer_weight_decay)
        self.eval_split = "test"
        self.retrieval_seconds = 0.0  # set by build_rac_classifier: precomputing neighbours and text embeddings
        self._check_tables()

    def _check_tables(self) -> None:
        retrieval = self.model.retrieval
        if (self.neighbour_tables or self.text_tables) and retrieval is None:
            raise ValueError("retrieval tables given to a model without a retrieval branch")
        for name, table in self.neighbour_tables.items():
            if table.ndim != 2 or table.shape[1] != retrieval.k:
                raise ValueError(f"neighbour table {name!r} must be [N, {retrieval.k}], got {tuple(table.shape)}")
        if self.text_tables:
            if retrieval.text_encoder.train_transformer:
                raise ValueError("cached text embeddings need a frozen T (its transformer trains)")
            if set(self.text_tables) != set(self.neighbour_tables):
                raise ValueError(f"text tables for splits {sorted(self.text_tables)} but neighbour tables for "
                                 f"{sorted(self.neighbour_tables)}")
            for name, table in self.text_tables.items():
                expected = (len(self.neighbour_tables[name]), retrieval.text_encoder.embed_dim)
                if tuple(table.shape) != expected:
                    raise ValueError(f"text table {name!r} must be {list(expected)}, got {tuple(table.shape)}")

    @property
    def mode(self) -> str:
        return self.model.mode

    @property
    def split(self) -> str:
        """The split whose tables serve the current batches: "train" in training mode, else ``eval_split``."""
        return "train" if self.training else self.eval_split

    @contextlib.contextmanager
    def evaluating_on(self, split: str) -> Iterator["RACClassifier"]:
        """Within the block, eval-mode batches are items of ``split`` (their indices key its tables)."""
        previous, self.eval_split = self.eval_split, split
        try:
            yield self
        finally:
            self.eval_split = previous

    def _lookup(self, tables: Mapping[str, Tensor], indices: Optional[Tensor]) -> Tensor:
        if indices is None:
            raise ValueError("precomputed retrieval needs the batch's dataset indices")
        if self.split not in tables:
            raise KeyError(f"no precomputed retrieval for split {self.split!r} (have {sorted(tables)}); "
                           "use evaluating_on(<split>) around predict()")
        table = tables[self.split]
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(table)):
            raise IndexError(f"dataset indices [{int(indices.min())}, {int(indices.max())}] out of range for the "
                             f"{len(table)} rows of split {self.split!r}")
        return table[indices]

    def forward(self, images: Tensor, indices: Optional[Tensor] = None) -> RACOutput:
        """images [B, C, H, W] (base branch; E's too for on-line retrieval), indices [B] -> RACOutput ([B, L] each)."""
        if self.mode == "base":
            return self.model(images)
        if self.text_tables:  # a frozen T's cached output: only T's head runs
            return self.model(images, text_embeddings=self._lookup(self.text_tables, indices))  # (B, D_T)
        neighbour_ids = self._lookup(self.neighbour_tables, indices) if self.neighbour_tables else None
        return self.model(images, neighbour_ids=neighbour_ids)

    # ------------------------------------------------------------------------------------------ trainer hooks
    def training_step(self, images: Tensor, labels: Tensor, indices: Tensor, loss_fn, epoch: int) -> Tensor:
        """The common loss on the fused logits; ``loss_fn(logits, labels, epoch=epoch)`` (ltcore's losses)."""
        return loss_fn(self(images, indices).fused, labels, epoch=epoch)

    def predict_step(self, images: Tensor, indices: Optional[Tensor] = None) -> dict[str, Tensor]:
        """``logits`` (fused, what the loss sees) and each computed branch's own logits, [B, L] each."""
        output = self(images, indices)
        branches = {"base": output.base, "retrieval": output.retrieval}
        return {"logits": output.fused, **{name: value for name, value in branches.items() if value is not None}}

    def transformer_parameters(self) -> list[nn.Parameter]:
        """Parameters of T other than its head that train (empty unless T's transformer is fine-tuned)."""
        if self.model.retrieval is None:
            return []
        text = self.model.retrieval.text_encoder
        return [p for name, p in text.named_parameters() if p.requires_grad and not name.startswith("head.")]

    def configure_optimizers(self, config: TrainConfig) -> list[torch.optim.Optimizer]:
        """B and T's head: AdamW or SGD at ``config``'s lr and weight decay (the first optimizer follows the
        trainer's schedule); a fine-tuned transformer: its own AdamW at a constant ``transformer_lr``."""
        transformer = self.transformer_parameters()
        excluded = {id(p) for p in transformer}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in excluded]
        if self.optimizer == "adamw":
            first = torch.optim.AdamW(main, lr=config.lr, weight_decay=config.weight_decay)
        else:
            first = torch.optim.SGD(main, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        optimizers = [first]
        if transformer:
            optimizers.append(torch.optim.AdamW(transformer, lr=self.transformer_lr,
                                                weight_decay=self.transformer_weight_decay))
        return optimizers


def t_mode(settings: RACSettings, cached: bool) -> str:
    """How T runs, for tables: "frozen, cached" | "frozen" | "fine-tuned" (the bag of words is always frozen)."""
    if settings.train_transformer and settings.text_encoder != "bow_random":
        return "fine-tuned"
    return "frozen, cached" if cached else "frozen"


def build_rac_classifier(
    splits: LTSplits,
    settings: RACSettings = RACSettings(),
    *,
    setup: Optional[RetrievalSetup] = None,
    mode: str = "rac",
    backbone: str = "resnet10_tiny",
    seed: int = 0,
) -> RACClassifier:
    """Steps 2 of the recipe: B, T, the retrieval module, the precomputed tables, wrapped for the trainer.

    The base branch is built first from ``seed`` (so "base" and "rac" runs start from the same B), then T.
    ``classifier.retrieval_seconds`` is the time spent precomputing neighbours and text embeddings.
    """
    if mode not in RAC_MODES:
        raise ValueError(f"mode must be one of {RAC_MODES}, got {mode!r}")
    if mode != "base" and setup is None:
        raise ValueError(f"mode {mode!r} needs a RetrievalSetup (build_retrieval_setup(splits, ...))")
    seed_everything(seed)
    base = None
    if mode != "retrieval":
        in_chans = splits.train[0][0].shape[0]
        base = PlainClassifier(build_backbone(backbone, in_chans), splits.num_classes)
    retrieval, tables, cached = None, {}, {}
    started = time.perf_counter()
    if mode != "base":
        text = make_text_encoder(settings.text_encoder, splits.num_classes,
                                 train_transformer=settings.train_transformer, **dict(settings.text_options))
        retrieval = retrieval_module(setup, text, settings.k, settings.drop_self)
        if settings.precompute:
            tables = neighbour_tables(retrieval, setup.embeddings)
        can_cache = settings.precompute and not text.train_transformer   # RACSettings rejects cache_text otherwise
        if can_cache and settings.cache_text is not False:
            cached = text_tables(retrieval, tables)
        if settings.centre_text:
            train_embeddings = cached.get("train")
            if train_embeddings is None:  # T trains or retrieval is on-line: encode the training queries once
                train_ids = tables.get("train")
                if train_ids is None:
                    train_ids = neighbour_tables(retrieval, {"train": setup.embeddings["train"]})["train"]
                train_embeddings = encode_texts(text, retrieval.retrieved_texts(train_ids))
            centre_text_head(text, train_embeddings)
    classifier = RACClassifier(RACModel(base, retrieval, splits.num_classes, mode=mode), neighbour_tables=tables,
                               text_tables=cached, optimizer=settings.optimizer,
                               transformer_lr=settings.transformer_lr,
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
) -> dict:
    """Train a RAC model (or one of its branches alone) under LACE and score every branch on the test split.

    Returns a dict: ``row`` (results row of the fused output, method "RAC" / "Base" / "Retrieval" unless
    ``method`` is given), ``rows`` (branch -> row; in "rac" mode also "<method>: base branch" and
    "<method>: retrieval branch"), ``shots`` (branch -> :class:`~ltcore.metrics.ShotAccuracy`), ``predictions``
    (:func:`~ltcore.train.predict` output: ``logits``, ``base``, ``retrieval``, ``labels``, ``indices``),
    ``history``, ``model`` (the :class:`RACClassifier`). ``config`` gives epochs, batch size and schedule; its lr
    and weight decay are replaced per ``settings.optimizer`` (:meth:`RACSettings.train_config`), so one
    config serves the SGD baselines and the RAC rows. ``seconds`` in the rows is training plus test
    prediction, as in :func:`ltcore.experiments.train_baseline`; ``retrieval_seconds`` is this run's one-off
    precomputation (the set-up's embedding and indexing time is ``setup.seconds``).
    """
    classifier = build_rac_classifier(splits, settings, setup=setup, mode=mode, backbone=backbone, seed=config.seed)
    loss_fn = settings.loss(splits.class_counts)
    tables = classifier.neighbour_tables
    val_set = splits.val if splits.val is not None and (not tables or "val" in tables) else None
    if "test" not in tables and tables:
        raise ValueError("the retrieval set-up has no test embeddings (embed_splits must contain 'test')")
    config = settings.train_config(config)
    started = time.perf_counter()
    with classifier.evaluating_on("val"):
        history = fit(classifier, splits.train, loss_fn, config, val_set=val_set)
    with classifier.evaluating_on("test"):
        predictions = predict(classifier, splits.test, config.eval_batch_size, progress=progress)
    seconds = time.perf_counter() - started

    method = method or METHOD_NAMES[mode]
    shots = {branch: evaluate(predictions, splits.class_counts, key)
             for branch, key in BRANCH_KEYS.items() if key in predictions}
    extra = {"k": None, "text_encoder": None, "t_mode": None}
    if mode != "base":
        extra = {"k": settings.k, "text_encoder": settings.text_encoder,
                 "t_mode": t_mode(settings, bool(classifier.text_tables))}
    extra |= {"optimizer": settings.optimizer, "retrieval_seconds": round(classifier.retrieval_seconds, 1)}
    names = {"fused": method, "base": f"{method}: base branch", "retrieval": f"{method}: retrieval branch"}
    branches = ("fused", "base", "retrieval") if mode == "rac" else ("fused",)
    rows = {branch: shot_row(splits.name, names[branch], shots[branch], seconds, **extra) for branch in branches}
    return {"row": rows["fused"], "rows": rows, "shots": shots, "predictions": predictions, "history": history,
            "model": classifier}
