"""RAC as the shared trainer sees it: :class:`RACClassifier`, and T's centred head :class:`CentredLinear`.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022,
Sec. 3.3 (two branches "trained under a common LACE loss"; T's output "transformed by another linear layer into
logits"), Sec. 3.4 (frozen E, precomputable retrieval), App. B and Tables S6-S7 (AdamW; T fine-tuned).

:class:`RACClassifier` wraps a :class:`ltcore.rac.model.RACModel` with the hooks of :func:`ltcore.train.fit`
(``training_step``, ``predict_step``, ``configure_optimizers``) and looks retrieval results up by the dataset
index of each item (the trainer's batches are ``(image, label, index)``): precomputed neighbour ids, or a frozen
T's cached embeddings, per split (built by :func:`ltcore.rac.train.build_rac_classifier`).

**Centred head of T** (:class:`CentredLinear`): ``W (x - mu) + b`` with mu the mean pooled embedding of the
training queries under the initial T: the same family of affine maps as the paper's linear layer
(``b' = b - W mu``), reparametrised.

> **Our reading of why it is needed:** the "Rand." embeddings are uniform in [0, 1) ("sampled from a uniform
> distribution over the interval [0, 1)", Sec. 4.5), so every bag of words is ~0.5 in each of its 300
> dimensions and a plain head turns that shared mean into a large constant logit vector; after eq. 5's
> normalisation the retrieval branch is then nearly the same for every image. Centring removes the shared part
> from W's updates (pretrained sentence embeddings also share a common direction). With a fine-tuned T, mu is
> fixed at the start of training.

Taught in notebook 07, *One recipe for every row*.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from ltcore.checks import check_choice, check_float
from ltcore.rac.model import RACModel, RACOutput
from ltcore.rac.text_encoders import TextEncoder
from ltcore.train import TrainConfig

OPTIMIZERS = ("adamw", "sgd")


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


class RACClassifier(nn.Module):
    """A :class:`RACModel` with the hooks of :func:`ltcore.train.fit`, retrieval looked up by dataset index.

    neighbour_tables: split -> ids [N_split, k] (precomputed retrieval); empty = on-line retrieval from the images.
    text_tables:      split -> cached embeddings [N_split, D] of a frozen T; the retrieval logits are then
                      ``T.head(table[indices])`` (identical to running the frozen T on the retrieved texts).
    optimizer:        "adamw" or "sgd" for the base branch and T's head; a fine-tuned transformer gets its own
                      AdamW at ``transformer_lr`` and ``transformer_weight_decay``.
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
        self.model = model
        self.optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
        self.neighbour_tables = dict(neighbour_tables or {})
        self.text_tables = dict(text_tables or {})
        self.transformer_lr = check_float("transformer_lr", transformer_lr, 0.0, low_open=True)
        self.transformer_weight_decay = check_float("transformer_weight_decay", transformer_weight_decay, 0.0)
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
    def text_encoder_mode(self) -> Optional[str]:
        """How T runs: "fine-tuned" (its transformer trains, on every batch), "frozen, cached" (its embeddings
        looked up in :attr:`text_tables`) or "frozen" (run on every batch without gradient); None without T."""
        if self.model.retrieval is None:
            return None
        if self.model.retrieval.text_encoder.train_transformer:
            return "fine-tuned"
        return "frozen, cached" if self.text_tables else "frozen"

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
