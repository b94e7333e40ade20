"""The IEM classifier: a backbone, region self-attention, a classifier head and two episodic memories.

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed Visual
Recognition", CVPR 2020. Section 3.3 (a global and a local memory, memory warm-up, the loss of
eq. 14-16, inference), Section 3.2 (RSA "inserted at the last convolutional block before the
final classification"), Section 4.2 (memory: top-n 50, capacity 50,000, gamma 0.99, Adam with lr
1e-5; backbone: SGD, momentum 0.9), Section 4.4 / Table 5 (the ablations "w/o RSA",
"w/o local memory", "w/o global memory"). The memories are :class:`ltcore.iem.memory.EpisodicMemory`
(Section 3.1, eq. 1-5), RSA is :class:`ltcore.iem.rsa.RegionSelfAttention` (eq. 6-13).

Data flow (``B`` images, ``L`` classes, feature map ``[B, C, H, W]``, ``R`` regions, ``k`` regions kept)::

    images -> backbone -> f [B, C, H, W] -+-> GAP(f) [B, C] ----------------------------> global memory key
                                          +-> RSA(f) [B, C] -> Linear -> logits y' [B, L]
                                          +-> RSA region features g [B, R, C] -> top-k -> [B, k, C] -> local memory keys

Interpretations (the paper is under-specified in these places)
-------------------------------------------------------------
* Memories. "For a dataset with n classes, we leverage 2 x n IEM banks. There are two IEM blocks
  for each category, i.e., a global IEM and a local IEM." One :class:`EpisodicMemory` holds the
  global banks of all classes, one the local banks. "The global block stores the global
  representation calculated by global average pooling": the global key is ``GAP(f)`` [B, C], with
  or without RSA.
* The value written. "the classifier generates a logits y' ... The key-value pair of
  (GAP(f), y'[y]) is appended to the global memory block." Section 3.1 says the value memory
  "stores the probability of the features belonging to category l", and eq. 16 regresses reads to
  1 and 0. **Our reading:** ``y'[y]`` is the *softmax probability* of the true class,
  ``softmax(y')[y]`` in [0, 1] (a raw logit would not be a probability and could not be regressed
  to 1/0 consistently). Detached: writing is not differentiable.
* Local keys. "The region encodings are r_1, ..., r_c, where c is the number of generated regions
  ... pairs of {(r_1, y'[y]), ..., (r_c, y'[y])}, which are appended to local memory block
  sequentially." The region encodings are RSA's Region-Key-Encoding outputs ``g`` (eq. 9, see
  :mod:`ltcore.iem.rsa`). **Our reading:** writing all ``R`` regions (324 on a 7x7 map with a 3x3
  maximum) would make every step O(B R); we write the ``k = regions_per_image`` regions with the
  largest attention weight (eq. 13), all with the image's value, in attention order. ``None``
  writes all regions, as the paper does.
* Local read (eq. 14-15). The paper does not say which query reads the local memory. **Our
  reading:** the same ``k`` regions that are written each read the bank, and the image's local
  score is the mean of its ``k`` reads: queries and keys then live in the same space (region
  encodings), and the read asks "do this image's most attended regions look like stored regions of
  class l?". At inference every bank is read this way (:meth:`EpisodicMemory.read_all`).
* Without RSA ("w/o RSA"). "we replace the region self-attention mechanism with a simple average
  pooling function" (4.4). **Our reading:** the classifier then sits on ``GAP(f)`` (the plain
  model's head), and the region encodings become the average-pooled regions of ``f`` (eq. 6 applied
  to ``f`` itself, same partition); with no attention to rank them, the ``k`` regions with the
  largest mean activation (L2 norm of the pooled region) are written and read.
* Warm-up. "Initially, the memory is randomly initialized. At this stage, both global and local
  visual features are incorporated into the global memory bank and local memory bank." The length
  of the stage is not given. **Our reading:** our banks start empty (EpisodicMemory grows from
  zero slots, nothing to initialise); during the first ``warmup_epochs`` epochs the memories are
  only written (loss = CE, nothing is read); afterwards the loss is eq. 16 and writing continues
  every step ("written with deduplication, momentum updates and eviction", eq. 3-4), so the banks
  follow the backbone as it changes.
* Loss (eq. 16). ``L = CE(y, y') + MSE(p_pos, 1) + MSE(p_neg, 0)`` for each memory present, summed:
  ``CE + [global_pos + global_neg] + [local_pos + local_neg]``. MSE is the squared error of eq. 5
  averaged over the batch. The hard negative is "ranked highest in logit y' except the
  ground-truth label": ``argmax`` of the logits with the true class masked out (no gradient).
  Gradients of the memory terms reach the memory slots read (trained by the memory's lazy Adam)
  and the queries, hence the backbone (and RSA for the local memory): "The network is optimized
  end-to-end via back-propagation."
* Inference. "we iterate over all memory blocks and retrieve the prediction scores from all
  blocks. The n prediction scores are averaged with the standard classifier prediction."
  **Our reading:** memory score ``m = mean over the memories present of read_all`` ([B, L], the
  global and local scores of a class averaged), and the final score
  ``logits = (softmax(y') + m) / 2``: two predictions averaged, so the classifier keeps weight 1/2
  in every ablation. The final score is not normalised over classes (each memory score is a
  per-class probability); :func:`ltcore.iem.train.open_set_metrics` thresholds it as it is
  (``ltcore.metrics.open_set_predictions(..., normalized=False)``).
* Optimizers (4.2): SGD(backbone + RSA + head) and the memories' own lazy Adam
  (:class:`ltcore.iem.memory.MemoryOptimizer`). The memory lr is ``memory_kwargs["lr"]`` (paper 1e-5).
* Uniform attention (``rsa_kwargs=dict(uniform_weights=True)``, our control for the claim that RSA's gain is
  its attention; not in the paper). Every region weighs 1/R, so no attention ranks the regions for the local
  memory: **our reading** takes the ``k`` regions whose encodings ``g`` have the largest L2 norm, as "w/o RSA"
  ranks its pooled regions by norm.

Our variants (diagnostics, not the paper; the defaults above are the paper as we read it)
----------------------------------------------------------------------------------------
* ``written_value="one"``: every pair is written with value 1 instead of the classifier's confidence
  ``softmax(y')[y]``. A tail class's confidence stays low while the classifier learns it, so with the paper's
  value its bank reads low for every query; with 1, only eq. 16's training moves the values.
* ``read_normalization="bank_mean"``: at inference each class's read (eq. 1) is divided by the mean value
  stored in that class's bank, so a bank whose values are low overall is not read as "unlikely" everywhere.
* A final re-write (:func:`ltcore.iem.train.rewrite_memories`): after training, the memories are emptied and
  written once with every training image's final keys and values, so no bank holds keys an earlier network
  computed.

Taught in notebook 06, *The IEM classifier, sentence by sentence*.
"""
from __future__ import annotations

import inspect
import os
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcore.checks import check_choice, check_float, check_int, check_labels
from ltcore.iem.memory import EpisodicMemory, MemoryOptimizer, projected_bank_sizes
from ltcore.iem.rsa import RegionSelfAttention, region_partition, region_sums
from ltcore.models import build_backbone
from ltcore.train import TrainConfig, call_loss, default_optimizers

__all__ = ["ABLATIONS", "IEM_VARIANTS", "READ_NORMALIZATIONS", "WRITTEN_VALUES", "IEMClassifier", "IEMFeatures",
           "bank_mean_values", "build_iem", "check_memory_fits", "hard_negatives"]

# Table 5's rows: ablation key -> (method name, switches turned off).
ABLATIONS: dict[Optional[str], tuple[str, dict]] = {
    None: ("IEM", {}),
    "no_rsa": ("w/o RSA", {"use_rsa": False}),
    "no_local": ("w/o local memory", {"use_local_memory": False}),
    "no_global": ("w/o global memory", {"use_global_memory": False}),
}

# What a memory write stores as the value (Section 3.3: the confidence; "one" is our variant, see the docstring).
WRITTEN_VALUES = ("confidence", "one")
# How inference reads are scaled (None: as eq. 1 reads them; "bank_mean" is our variant, see the docstring).
READ_NORMALIZATIONS = (None, "bank_mean")

# Named sizes, all built by build_iem. The paper gives neither the RSA key width nor the largest
# region nor how many regions reach the local memory: those are our choices (see the docstring).
IEM_VARIANTS: dict[str, dict] = {
    # Unit tests: [B, 16, 7, 7] maps, 2x2 regions (R = 169), tiny banks.
    "test": dict(backbone="test_resnet", rsa_kwargs=dict(key_dim=8, h_max=2, w_max=2),
                 memory_kwargs=dict(capacity=32, top_n=4), regions_per_image=2),
    # Notebook 06 on one CPU thread: resnet10_tiny ([B, 64, 7, 7]), 2x2 regions (R = 169), small banks.
    # Memory lr 1e-3: the paper's 1e-5 over ~13,600 steps (30 ImageNet-LT epochs at batch 256) moves a
    # slot by at most lr x steps ~ 0.14; our ~120 memory steps need ~1e-3 for the same reach.
    "tiny": dict(backbone="resnet10_tiny", rsa_kwargs=dict(key_dim=16, h_max=2, w_max=2),
                 memory_kwargs=dict(capacity=256, top_n=8, lr=1e-3), regions_per_image=2),
    # Unit tests on cached maps: the identity backbone over [B, C, h, w] maps (C = in_chans), tiny banks.
    "test_frozen": dict(backbone="precomputed", rsa_kwargs=dict(key_dim=8, h_max=2, w_max=2),
                        memory_kwargs=dict(capacity=32, top_n=4), regions_per_image=2),
    # The claims on frozen pretrained maps (ltcore.iem.claims; chosen on validation, evidence there).
    "frozen": dict(backbone="precomputed", rsa_kwargs=dict(key_dim=32, hidden_dim=32, h_max=2, w_max=2),
                   memory_kwargs=dict(capacity=128, top_n=8, lr=1e-3), regions_per_image=2),
    # Paper, 4.2: ResNet-10 on ImageNet-LT, top-n 50, capacity 50,000, gamma 0.99, Adam lr 1e-5.
    "resnet10": dict(backbone="resnet10", rsa_kwargs=dict(key_dim=512, h_max=3, w_max=3),
                     memory_kwargs=dict(capacity=50000, top_n=50, gamma=0.99, lr=1e-5), regions_per_image=8),
}


class IEMFeatures(NamedTuple):
    """What one forward pass of the network (without the memories) produces."""

    feature_map: Tensor             # [B, C, H, W] backbone output f
    global_keys: Tensor             # [B, C] GAP(f): global memory keys / queries
    logits: Tensor                  # [B, L] classifier logits y'
    region_keys: Optional[Tensor]   # [B, k, D] selected region encodings (None without local memory)


def hard_negatives(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 15's y-bar: the highest-scoring class other than the label. logits [B, L], labels [B] -> [B]."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, L] with L >= 2 classes, got {tuple(logits.shape)}")
    masked = logits.detach().scatter(1, labels.view(-1, 1), float("-inf"))  # [B, L], true class removed
    return masked.argmax(1)


class IEMClassifier(nn.Module):
    """Backbone + RSA (or GAP) + linear head, with a global and a local episodic memory (Section 3.3).

    Args:
        backbone: a module mapping images to a feature map [B, C, H, W] with an ``out_dim`` (= C).
        num_classes: L.
        use_rsa: RSA feeds the head and encodes the local regions; False: GAP and pooled regions.
        use_global_memory, use_local_memory: build that memory (False: no memory object at all).
        memory_kwargs: EpisodicMemory arguments of both memories (capacity, top_n, delta, gamma, lr, ...).
        rsa_kwargs: RegionSelfAttention arguments besides ``in_dim`` (key_dim, h_max, w_max, mode, ...);
            without RSA, h_max / w_max / mode / border still define the pooled regions.
        regions_per_image: k regions written to and read from the local memory per image (None: all R).
        warmup_epochs: epochs (from 0) during which the memories are only written and the loss is CE.
        written_value, read_normalization: the paper's ("confidence", None) or our variants
            (:data:`WRITTEN_VALUES`, :data:`READ_NORMALIZATIONS`; module docstring).

    Taught in notebook 06, *The IEM classifier, sentence by sentence*.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, use_rsa: bool = True, use_global_memory: bool = True,
                 use_local_memory: bool = True, memory_kwargs: Optional[dict] = None, rsa_kwargs: Optional[dict] = None,
                 regions_per_image: Optional[int] = 4, warmup_epochs: int = 1, written_value: str = "confidence",
                 read_normalization: Optional[str] = None):
        super().__init__()
        num_classes = check_int("num_classes (eq. 15 needs a negative class)", num_classes, 2)
        if not (use_global_memory or use_local_memory):
            raise ValueError("IEM needs at least one memory; without both it is the plain model "
                             "(ltcore.models.PlainClassifier)")
        if regions_per_image is not None:
            regions_per_image = check_int("regions_per_image (or None)", regions_per_image, 1)
        warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.written_value = check_choice("written_value", written_value, WRITTEN_VALUES)
        self.read_normalization = check_choice("read_normalization", read_normalization, READ_NORMALIZATIONS)
        channels = getattr(backbone, "out_dim", None)
        if not isinstance(channels, int):
            raise ValueError("backbone must expose its output channels as an int attribute out_dim")
        rsa_kwargs = {"key_dim": channels, "h_max": 3, "w_max": 3, **(rsa_kwargs or {})}
        memory_kwargs = dict(memory_kwargs or {})
        self.num_classes, self.regions_per_image, self.warmup_epochs = num_classes, regions_per_image, warmup_epochs
        self.backbone = backbone
        if use_rsa:
            self.rsa = RegionSelfAttention(channels, **rsa_kwargs)
            head_dim, local_dim = self.rsa.out_dim, self.rsa.attention_dim
        else:
            self.rsa = None
            _check_unused_rsa_settings(rsa_kwargs)
            self._regions_by_map_size: dict[tuple[int, int], Tensor] = {}
            # eq. 6 on f itself needs only the partition: keep its settings for the pooled regions
            self._partition = {key: rsa_kwargs[key] for key in ("h_max", "w_max", "mode", "border") if key in rsa_kwargs}
            region_partition(rsa_kwargs["h_max"], rsa_kwargs["w_max"], **self._partition)  # fail early on bad settings
            head_dim, local_dim = channels, channels
        self.fc = nn.Linear(head_dim, num_classes)
        self.global_memory = EpisodicMemory(num_classes, channels, **memory_kwargs) if use_global_memory else None
        self.local_memory = EpisodicMemory(num_classes, local_dim, **memory_kwargs) if use_local_memory else None
        self._pending_writes: list[tuple[EpisodicMemory, Tensor, Tensor, Tensor]] = []

    # ------------------------------------------------------------------ inspection
    @property
    def memories(self) -> dict[str, EpisodicMemory]:
        """The memories present, by name ("global", "local")."""
        named = {"global": self.global_memory, "local": self.local_memory}
        return {name: memory for name, memory in named.items() if memory is not None}

    def projected_memory(self, class_counts, epochs: int) -> dict[str, dict]:
        """Size of each memory after ``epochs`` epochs on a train split with these ``class_counts``:
        name -> ``slots``, ``device_bytes``, ``host_bytes``.

        Every step writes its batch (warm-up included): one key per image to the global memory,
        ``regions_per_image`` to the local one; see :func:`ltcore.iem.memory.projected_bank_sizes`.
        Taught in notebook 06, *The IEM classifier, sentence by sentence*.
        """
        projection = {}
        for name, memory in self.memories.items():
            keys_per_image = 1 if name == "global" else self.regions_per_image
            if keys_per_image is None:
                raise ValueError("regions_per_image=None writes every region: the local memory's size depends on "
                                 "the feature map; give regions_per_image to project it")
            slots = int(projected_bank_sizes(class_counts, epochs, keys_per_image, memory.capacity).sum())
            device_bytes, host_bytes = memory.slot_bytes()
            projection[name] = {"slots": slots, "device_bytes": slots * device_bytes, "host_bytes": slots * host_bytes}
        return projection

    def in_warmup(self, epoch: int) -> bool:
        """True while the memories are only written (epoch counted from 0)."""
        return epoch < self.warmup_epochs

    # ------------------------------------------------------------------ the network
    def encode(self, images: Tensor) -> IEMFeatures:
        """Backbone, RSA (or GAP), head and the local region keys of a batch of images [B, C_in, H_in, W_in]."""
        feature_map = self.backbone(images)                                    # [B, C, H, W]
        if feature_map.dim() != 4:
            raise ValueError(f"the backbone must return a [B, C, H, W] map, got {tuple(feature_map.shape)}")
        global_keys = feature_map.mean(dim=(2, 3))                             # [B, C, H, W] -> [B, C]
        region_keys = None
        if self.rsa is not None:
            if self.local_memory is None:
                pooled = self.rsa(feature_map)                                 # [B, C]
            else:
                attention = self.rsa(feature_map, return_weights=True, return_regions=True)
                pooled = attention.feature                                     # [B, C]
                # uniform weights (the control) rank no region: the largest encodings, as w/o RSA
                ranking = attention.region_features.norm(dim=-1) if self.rsa.uniform_weights else attention.weights
                region_keys = self._top_regions(attention.region_features, ranking)  # [B, R, D] -> [B, k, D]
        else:
            pooled = global_keys  # "replace the region self-attention mechanism with a simple average pooling"
            if self.local_memory is not None:
                region_means = self._pooled_regions(feature_map)               # [B, R, C]
                region_keys = self._top_regions(region_means, region_means.norm(dim=-1))  # [B, k, C]
        return IEMFeatures(feature_map, global_keys, self.fc(pooled), region_keys)

    def _pooled_regions(self, feature_map: Tensor) -> Tensor:
        """Average pooling over every region (eq. 6 on f): [B, C, H, W] -> [B, R, C]."""
        size = tuple(feature_map.shape[-2:])
        if size not in self._regions_by_map_size:
            self._regions_by_map_size[size] = region_partition(*size, **self._partition)  # [R, 4]
        regions = self._regions_by_map_size[size].to(feature_map.device)
        area = (regions[:, 2] * regions[:, 3]).to(feature_map.dtype)           # [R]
        return region_sums(feature_map, regions) / area[None, :, None]         # [B, R, C] / [1, R, 1]

    def _top_regions(self, region_features: Tensor, scores: Tensor) -> Tensor:
        """The k regions of highest ``scores`` [B, R] per image, best first: [B, R, D] -> [B, k, D]."""
        num_regions = region_features.shape[1]
        k = num_regions if self.regions_per_image is None else self.regions_per_image
        if k > num_regions:
            raise ValueError(f"regions_per_image={k} exceeds the {num_regions} regions of this feature map")
        order = scores.detach().topk(k, dim=1).indices                         # [B, k]
        return region_features.gather(1, order.unsqueeze(-1).expand(-1, -1, region_features.shape[-1]))

    # ------------------------------------------------------------------ memory reads
    def _memory_keys(self, name: str, features: IEMFeatures) -> tuple[Tensor, int]:
        """Keys of memory ``name`` for a batch: [B k, D] (image after image) and k (1 for the global memory)."""
        if name == "global":
            return features.global_keys, 1                                     # [B, C]
        batch, k, dim = features.region_keys.shape
        return features.region_keys.reshape(batch * k, dim), k                 # [B, k, D] -> [B k, D]

    def _read(self, name: str, features: IEMFeatures, classes: Tensor) -> Tensor:
        """READ of eq. 14-15: bank ``classes[i]`` of memory ``name`` for image i -> scores [B].

        A local read averages the k regions of an image. The positive and the negative banks are
        read in two calls: one call would save ~2% of a step but sums the float gradients in
        another order, which moves a single-seed result of notebook 06 by about a point (the size
        of its run-to-run noise) and so away from the recorded results.
        """
        keys, k = self._memory_keys(name, features)                            # [B k, D]
        scores = self.memories[name].read(keys, classes.repeat_interleave(k))  # [B k]
        return scores.view(-1, k).mean(1)                                      # [B, k] -> [B]

    def memory_scores(self, features: IEMFeatures) -> dict[str, Tensor]:
        """Every bank of every memory present read for every image (inference): name -> [B, L].

        With ``read_normalization="bank_mean"`` (our variant) each class's read is divided by its bank's mean value.
        """
        scores = {}
        for name, memory in self.memories.items():
            keys, k = self._memory_keys(name, features)                        # [B k, D]
            scores[name] = memory.read_all(keys).view(-1, k, self.num_classes).mean(1)  # [B, k, L] -> [B, L]
            if self.read_normalization == "bank_mean":
                scores[name] = scores[name] / bank_mean_values(memory).to(scores[name])  # [B, L] / [L]
        return scores

    # ------------------------------------------------------------------ training (eq. 14-16)
    def loss_terms(self, images: Tensor, labels: Tensor, loss_fn, epoch: int) -> dict[str, Tensor]:
        """The terms of eq. 16 for one batch: "ce" and, after warm-up, "<memory>_pos" / "<memory>_neg".

        Also queues this batch's memory writes (flushed by :meth:`after_optimizer_step`).
        """
        labels = check_labels(labels, self.num_classes, len(images), device=images.device)
        features = self.encode(images)
        terms = {"ce": call_loss(loss_fn, features.logits, labels, epoch)}
        if not self.in_warmup(epoch):
            negatives = hard_negatives(features.logits, labels)                # [B]
            for name in self.memories:
                p_pos = self._read(name, features, labels)                     # [B], eq. 14
                p_neg = self._read(name, features, negatives)                  # [B], eq. 15
                terms[f"{name}_pos"] = F.mse_loss(p_pos, torch.ones_like(p_pos))   # eq. 5, mean over the batch
                terms[f"{name}_neg"] = F.mse_loss(p_neg, torch.zeros_like(p_neg))
        self._queue_writes(features, labels)
        return terms

    def training_step(self, images: Tensor, labels: Tensor, indices: Tensor, loss_fn, epoch: int) -> Tensor:
        """Hook of :func:`ltcore.train.fit`: eq. 16 summed over the memories (CE only during warm-up)."""
        return sum(self.loss_terms(images, labels, loss_fn, epoch).values())

    def _queue_writes(self, features: IEMFeatures, labels: Tensor) -> None:
        """Queue this batch's pairs for each memory (:meth:`memory_pairs`); written after the optimizers' step."""
        self._pending_writes.extend(self.memory_pairs(features, labels))

    def memory_pairs(self, features: IEMFeatures, labels: Tensor) -> list[tuple[EpisodicMemory, Tensor, Tensor,
                                                                                 Tensor]]:
        """(memory, keys [B k, D], values [B k], labels [B k]) of a batch for each memory present (Section 3.3),
        detached: the value is softmax(y')[y] (``written_value="one"``: 1), shared by an image's k local keys."""
        confidence = features.logits.detach().softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)  # [B]
        if self.written_value == "one":
            confidence = torch.ones_like(confidence)
        pairs = []
        for name, memory in self.memories.items():
            keys, k = self._memory_keys(name, features)                        # [B k, D]
            pairs.append((memory, keys.detach(), confidence.repeat_interleave(k), labels.repeat_interleave(k)))
        return pairs

    def reset_memories(self) -> None:
        """Empty every memory (same settings, same device): for a re-write with the final network's features."""
        self._pending_writes = []
        for name, memory in self.memories.items():
            setattr(self, f"{name}_memory", EpisodicMemory(**memory.config, device=memory.device))

    def after_optimizer_step(self) -> None:
        """Hook of :func:`ltcore.train.fit`: write the queued pairs (eq. 3-4), after the memories' Adam step."""
        pending, self._pending_writes = self._pending_writes, []
        for memory, keys, values, labels in pending:
            memory.write(keys, values, labels)

    def configure_optimizers(self, config: TrainConfig) -> list:
        """[SGD(backbone + RSA + head), MemoryOptimizer(memories)] (paper 4.2); the first follows the lr schedule."""
        return [*default_optimizers(self, config), MemoryOptimizer(*self.memories.values())]

    # ------------------------------------------------------------------ inference
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Final and branch scores (Section 3.3, inference), each [B, L]:

        ``classifier`` = softmax(y'), ``global_memory`` / ``local_memory`` (those present),
        ``memory`` = their mean, ``logits`` = (classifier + memory) / 2.
        """
        features = self.encode(images)
        branches = {f"{name}_memory": score for name, score in self.memory_scores(features).items()}
        classifier = features.logits.softmax(1)                                # [B, L]
        memory = torch.stack(list(branches.values())).mean(0)                  # [M, B, L] -> [B, L]
        return {"logits": (classifier + memory) / 2, "classifier": classifier, "memory": memory, **branches}



def bank_mean_values(memory: EpisodicMemory) -> Tensor:
    """The mean value stored in each bank of ``memory`` [L]; 1 for an empty bank or a mean that is not positive
    (so that dividing a read by it leaves the read as it is)."""
    means = torch.stack([memory.bank(c)[2].mean() if memory.bank_size(c) else memory.values.new_ones(())
                         for c in range(memory.num_classes)])                     # [L]
    return torch.where(means > 0, means, torch.ones_like(means))


def _check_unused_rsa_settings(rsa_kwargs: dict) -> None:
    """Without RSA only the partition settings are used; the others are still checked, so a typo or a
    non-finite ``eps`` is an error in every ablation."""
    known = set(inspect.signature(RegionSelfAttention.__init__).parameters) - {"self", "in_dim"}
    unknown = sorted(set(rsa_kwargs) - known)
    if unknown:
        raise ValueError(f"unknown RegionSelfAttention argument(s) {unknown} in rsa_kwargs")
    if "eps" in rsa_kwargs:
        check_float("eps", rsa_kwargs["eps"], 0.0)


def check_memory_fits(projection: dict[str, dict], device: torch.device | str) -> None:
    """Raise ``MemoryError`` before training when the memories of :meth:`IEMClassifier.projected_memory`
    would outgrow ``device`` (a GPU's total memory; on the CPU the machine's RAM, host bytes included).

    Taught in notebook 06, *The IEM classifier, sentence by sentence*.
    """
    device = torch.device(device)
    need = sum(part["device_bytes"] for part in projection.values())
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        need += sum(part["host_bytes"] for part in projection.values())
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the RAM is unknown, nothing to check
            return
    if need > have:
        sizes = ", ".join(f"{name} {part['slots']:,} slots" for name, part in projection.items())
        raise MemoryError(f"the IEM memories would reach {need / 1e9:.1f} GB by the end of training ({sizes}), "
                          f"more than the {have / 1e9:.1f} GB of {device}: lower memory_kwargs['capacity'], "
                          "regions_per_image or the number of epochs")


def build_iem(variant: str = "tiny", num_classes: int = 10, ablation: Optional[str] = None, in_chans: int = 1,
               **overrides) -> IEMClassifier:
    """Build IEM or one of Table 5's ablations from a named size (:data:`IEM_VARIANTS`).

    ``ablation``: None ("IEM"), "no_rsa", "no_local", "no_global" (:data:`ABLATIONS`). ``overrides``
    replace variant settings (``backbone`` name, ``regions_per_image``, ``warmup_epochs``, ...);
    ``memory_kwargs`` and ``rsa_kwargs`` are merged into the variant's.

    Taught in notebook 06, *The IEM classifier, sentence by sentence*.
    """
    check_choice("variant", variant, IEM_VARIANTS)
    check_choice("ablation", ablation, ABLATIONS)
    settings = dict(IEM_VARIANTS[variant])
    for key in ("memory_kwargs", "rsa_kwargs"):
        settings[key] = {**settings.get(key, {}), **(overrides.pop(key, None) or {})}
    settings.update(overrides)
    switches = ABLATIONS[ablation][1]
    clash = sorted(set(switches) & set(settings))
    if clash:
        raise ValueError(f"ablation {ablation!r} sets {clash} itself; do not override them")
    backbone = build_backbone(settings.pop("backbone"), in_chans)
    try:
        return IEMClassifier(backbone, num_classes, **switches, **settings)
    except TypeError as exc:  # an unknown override
        raise ValueError(f"build_iem: {exc}") from exc
