"""Retrieval Augmented Classification: a base branch fused with a retrieval branch.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022,
Sec. 3.3 (two branches, eq. 5), Sec. 3.4 (retrieval module), Sec. 4.6 (k), Table 3 (Base / Retrieval / RAC).

    "Split the scorer into two branches (see Fig. 1), where one branch (retrieval) exhibits implicit
    invariance to class frequency. The two branches are trained under a common LACE loss, with their
    individual logits combined with a norm, addition and re-scale operation" (Sec. 3.3)

    f(x) = L/2 * ( f_ret(x) / ||f_ret(x)||_2 + f_base(x) / ||f_base(x)||_2 )                  (eq. 5)

with L the number of classes. :func:`fuse_logits` is eq. 5.

> **Our reading of a vanishing branch:** eq. 5 divides by a norm that can be zero. The norm is clamped below
> by ``eps`` (1e-3, far below the logits of any classifier here): a branch whose logits are that close to zero
> votes with proportionally less weight, an all-zero branch contributes zero, and the gradient with respect to
> a branch is at most (L/2) / eps (a vanishing eps such as 1e-12 would let it reach 1.5e12 for an all-zero
> branch of 3 classes).

Retrieval module (Sec. 3.4): a frozen image encoder E embeds the query image, the index returns the k
(paper: k = 30) nearest stored keys by cosine similarity, their texts (by default the class names of
their labels) go through the text encoder T, whose head gives the retrieval logits f_ret [B, L].

    "During training, we drop the first result, as when training data is included in the index, the first
    result is often the original image" (Sec. 3.4)

Our reading, as ``drop_self``:
    "first" (default, the paper's rule): in training mode search k + 1 and drop rank 0, whatever it is;
    "id":   in training mode search k + 1 and drop the query's own id (``query_ids``: its row in the index)
            wherever it appears; if it is absent, drop the (k+1)-th hit, so k texts remain;
    "none": never drop (e.g. an index that holds no training images, Fig. 5).
In eval mode k are searched and none is dropped.

Precomputed retrieval: E and the index are frozen, so the neighbours of un-augmented training images can be
computed once (:meth:`RetrievalModule.precompute_neighbours`) and passed as ``neighbour_ids`` (or the
embeddings as ``query_embeddings``). What that changes: E then never sees the training augmentation, so
each training image retrieves the same k neighbours in every epoch (the paper queries with the augmented
batch image, so its neighbours vary slightly with augmentation); the base branch still sees augmented
images. With ``drop_self="first"`` the precomputed table equals what on-line retrieval gives for the
un-augmented image.

Branch modes of :class:`RACModel` (Table 3's rows, :data:`RAC_MODES`): "rac" returns eq. 5; "base" and
"retrieval" return that branch's own logits unchanged as ``fused`` (the paper's "Base" baseline is a plain
classifier trained under LACE, so no normalisation is imposed on it) and skip the other branch.

Loss: "The two branches are trained under a common LACE loss" on the fused logits, with label smoothing
0.1 (Table S7) and tau = 1 (Sec. 3.2): :meth:`ltcore.rac.train.RACSettings.loss`.

Taught in notebook 05, *The retrieval module*, and notebook 07, *One recipe for every row*.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ltcore.checks import check_choice, check_float, check_int
from ltcore.config import progress_disabled
from ltcore.rac.image_encoders import ImageEncoder
from ltcore.rac.index import VectorIndex
from ltcore.rac.text_encoders import TextEncoder

DROP_RULES = ("first", "id", "none")
RAC_MODES = {"rac": ("base", "retrieval"), "base": ("base",), "retrieval": ("retrieval",)}  # mode -> branches run
PAPER_K = 30
FUSION_EPS = 1e-3  # smallest branch norm eq. 5 divides by (module docstring)


def mode_branches(mode: str) -> tuple[str, ...]:
    """The branches that RAC mode ``mode`` runs ("base", "retrieval"); an unknown mode is an error."""
    return RAC_MODES[check_choice("mode", mode, RAC_MODES)]


def fuse_logits(f_ret: Tensor, f_base: Tensor, eps: float = FUSION_EPS) -> Tensor:
    """Eq. 5: L/2 * (f_ret / ||f_ret||_2 + f_base / ||f_base||_2), L = size of the last dimension.

    f_ret, f_base: [..., L] logits of the two branches -> fused logits [..., L]. Each norm is clamped below by
    ``eps``: an all-zero branch contributes zero, and every gradient is at most (L/2) / eps (module docstring).
    """
    check_float("eps", eps, 0.0, low_open=True)
    if f_ret.shape != f_base.shape:
        raise ValueError(f"branch logits must have the same shape, got {tuple(f_ret.shape)} and {tuple(f_base.shape)}")
    num_classes = f_ret.shape[-1]
    unit_ret = f_ret / f_ret.norm(p=2, dim=-1, keepdim=True).clamp_min(eps)  # (..., L) / (..., 1)
    unit_base = f_base / f_base.norm(p=2, dim=-1, keepdim=True).clamp_min(eps)
    return num_classes / 2.0 * (unit_ret + unit_base)


def label_texts(labels: Sequence[int] | Tensor | np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Per-image texts from labels: the class name of each image (the paper's default index text)."""
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must be in [0, {len(class_names) - 1}], got range [{labels.min()}, {labels.max()}]")
    return [class_names[label] for label in labels.tolist()]


class RetrievalModule(nn.Module):
    """Frozen E + index + per-image texts + T: images -> retrieval logits f_ret [B, L] (Sec. 3.4).

    image_encoder: frozen E; its embeddings of the index images are the index keys.
    index:         keys of the J index images, ids 0..J-1 in the order of ``texts``.
    texts:         the J per-image texts (labels -> class names by default, see :func:`label_texts`).
    text_encoder:  T, mapping k texts per query to L logits.
    k:             texts per query (paper: 30).
    drop_self:     "first" | "id" | "none", applied in training mode (module docstring).
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        index: VectorIndex,
        texts: Sequence[str],
        text_encoder: TextEncoder,
        *,
        k: int = PAPER_K,
        drop_self: str = "first",
    ) -> None:
        super().__init__()
        check_choice("drop_self", drop_self, DROP_RULES)
        if len(texts) != index.ntotal:
            raise ValueError(f"{len(texts)} texts for an index of {index.ntotal} keys: one text per key is needed")
        check_int("k", k, 1, index.ntotal - 1)  # k + 1 hits are searched when the self hit is dropped
        if image_encoder.embed_dim is not None and image_encoder.embed_dim != index.dim:
            raise ValueError(
                f"image encoder gives {image_encoder.embed_dim}-d embeddings, the index holds {index.dim}-d"
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.index = index
        self.texts = list(texts)
        self.k = int(k)
        self.drop_self = drop_self

    @property
    def num_classes(self) -> int:
        return self.text_encoder.num_classes

    # ------------------------------------------------------------------------------------------ retrieval
    def neighbours(
        self, query_embeddings: Tensor | np.ndarray, *, query_ids: Tensor | None = None, drop: bool | None = None
    ) -> Tensor:
        """Ids [B, k] of the retrieved index entries for query embeddings [B, D].

        ``drop`` (default: ``self.training``) applies the ``drop_self`` rule; rule "id" needs ``query_ids`` [B].
        """
        drop = self.training if drop is None else drop
        rule = self.drop_self if drop else "none"
        queries = query_embeddings.detach().cpu().numpy() if isinstance(query_embeddings, Tensor) else query_embeddings
        if rule == "none":
            return torch.from_numpy(self.index.search(queries, self.k)[1])
        ids = torch.from_numpy(self.index.search(queries, self.k + 1)[1])  # (B, k + 1)
        if rule == "first":
            return ids[:, 1:]  # (B, k + 1) -> (B, k)
        if query_ids is None:
            raise ValueError("drop_self='id' needs query_ids (each query's row in the index)")
        query_ids = torch.as_tensor(query_ids).reshape(-1).cpu()
        if query_ids.shape[0] != ids.shape[0]:
            raise ValueError(f"{query_ids.shape[0]} query_ids for {ids.shape[0]} queries")
        own = ids == query_ids[:, None]  # (B, k + 1), at most one True per row (ids are distinct)
        own[~own.any(dim=1), -1] = True  # query not retrieved: drop the last hit instead
        return ids[~own].view(ids.shape[0], self.k)  # (B, k + 1) -> (B * k,) -> (B, k)

    def precompute_neighbours(
        self,
        query_embeddings: Tensor | np.ndarray,
        *,
        query_ids: Tensor | None = None,
        drop: bool = True,
        batch_size: int = 4096,
        progress: bool = True,
    ) -> Tensor:
        """Neighbour ids [N, k] for N query embeddings, computed once (see the module docstring).

        Row n is passed as ``neighbour_ids`` for sample n; ``drop=True`` applies the training rule.
        """
        total = query_embeddings.shape[0]
        rows = []
        for start in tqdm(range(0, total, batch_size), desc="precompute neighbours",
                          disable=progress_disabled(progress)):
            batch_ids = None if query_ids is None else torch.as_tensor(query_ids)[start : start + batch_size]
            rows.append(self.neighbours(query_embeddings[start : start + batch_size], query_ids=batch_ids, drop=drop))
        return torch.cat(rows) if rows else torch.empty((0, self.k), dtype=torch.long)

    def retrieved_texts(self, neighbour_ids: Tensor) -> list[list[str]]:
        """Neighbour ids [B, k] -> B lists of k texts."""
        neighbour_ids = torch.as_tensor(neighbour_ids)
        if neighbour_ids.ndim != 2 or neighbour_ids.shape[1] != self.k:
            raise ValueError(f"neighbour_ids must be [B, {self.k}], got shape {tuple(neighbour_ids.shape)}")
        if neighbour_ids.numel() and (neighbour_ids.min() < 0 or neighbour_ids.max() >= len(self.texts)):
            raise ValueError(f"neighbour_ids must be in [0, {len(self.texts) - 1}]")
        return [[self.texts[j] for j in row] for row in neighbour_ids.tolist()]

    def forward(
        self,
        images: Tensor | None = None,
        *,
        query_embeddings: Tensor | None = None,
        neighbour_ids: Tensor | None = None,
        query_ids: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> Tensor:
        """Retrieval logits f_ret [B, L] from the first given of: text_embeddings [B, D_T] (a frozen T's
        pooled output, cached: only T's head runs), neighbour_ids [B, k] (precomputed), query_embeddings
        [B, D] (precomputed E output), images [B, C, H, W] in [0, 1] (E applied here)."""
        if text_embeddings is not None:
            head = self.text_encoder.head
            return head(text_embeddings.to(head.weight))  # (B, D_T) -> (B, L)
        if neighbour_ids is None:
            if query_embeddings is None:
                if images is None:
                    raise ValueError("give images, query_embeddings or neighbour_ids")
                query_embeddings = self.image_encoder.embed(images)  # (B, C, H, W) -> (B, D), no gradient
            neighbour_ids = self.neighbours(query_embeddings, query_ids=query_ids)
        return self.text_encoder(self.retrieved_texts(neighbour_ids))


class RACOutput(NamedTuple):
    """Logits [B, L]: ``fused`` (what the loss sees) and each branch's own (None when not computed)."""

    fused: Tensor
    base: Tensor | None
    retrieval: Tensor | None


class RACModel(nn.Module):
    """Base branch B + retrieval branch, fused by eq. 5; ``mode`` "rac" | "base" | "retrieval" (Table 3)."""

    def __init__(
        self, base: nn.Module | None, retrieval: RetrievalModule | None, num_classes: int, *, mode: str = "rac"
    ) -> None:
        super().__init__()
        if retrieval is not None and retrieval.num_classes != num_classes:
            raise ValueError(f"retrieval branch gives {retrieval.num_classes} logits, num_classes is {num_classes}")
        self.base = base
        self.retrieval = retrieval
        self.num_classes = int(num_classes)
        self.mode = "rac"
        self.set_mode(mode)

    def set_mode(self, mode: str) -> "RACModel":
        """Switch between "rac" (both branches, eq. 5), "base" only and "retrieval" only."""
        branches = mode_branches(mode)
        if "base" in branches and self.base is None:
            raise ValueError(f"mode {mode!r} needs a base branch")
        if "retrieval" in branches and self.retrieval is None:
            raise ValueError(f"mode {mode!r} needs a retrieval branch")
        self.mode = mode
        return self

    def _checked(self, logits: Tensor, branch: str) -> Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{branch} branch gave logits of shape {tuple(logits.shape)}, expected [B, {self.num_classes}]"
            )
        return logits

    def forward(
        self,
        images: Tensor | None,
        *,
        query_embeddings: Tensor | None = None,
        neighbour_ids: Tensor | None = None,
        query_ids: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> RACOutput:
        """images [B, C, H, W] (the base branch's input; E's too unless retrieval is precomputed) -> RACOutput.

        ``images`` may be None only in "retrieval" mode with precomputed ``query_embeddings``/``neighbour_ids``/
        ``text_embeddings`` (see :meth:`RetrievalModule.forward`).
        """
        base_logits = retrieval_logits = None
        branches = RAC_MODES[self.mode]
        if "base" in branches:
            if images is None:
                raise ValueError(f"mode {self.mode!r} needs images for the base branch")
            base_logits = self._checked(self.base(images), "base")
        if "retrieval" in branches:
            retrieval_logits = self._checked(
                self.retrieval(images, query_embeddings=query_embeddings, neighbour_ids=neighbour_ids,
                               query_ids=query_ids, text_embeddings=text_embeddings),
                "retrieval",
            )
        if self.mode == "base":
            return RACOutput(base_logits, base_logits, None)
        if self.mode == "retrieval":
            return RACOutput(retrieval_logits, None, retrieval_logits)
        return RACOutput(fuse_logits(retrieval_logits, base_logits), base_logits, retrieval_logits)  # eq. 5

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that train: the base branch and T's head (plus T's transformer if enabled)."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]
