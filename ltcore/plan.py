"""The planner: what a run of a :class:`~ltcore.runconfig.RunConfig` will need, before anything is allocated.

``plan_run(config, gpus, device_memory)`` returns a :class:`Plan`: parameters, activations per batch
(estimated), the IEM memories by bank kind at the end of training, the retrieval index, the checkpoint
on disk, and whether one device holds its share. ``python -m ltcore plan`` prints :meth:`Plan.format`.

Where each number comes from
----------------------------
* **Parameters**: the model is built by the package's own classes (``PlainClassifier``, ``IEMClassifier``,
  timm's ResNet-50/152 and ViT-B/16, open_clip's text tower) on PyTorch's ``meta`` device where they allow
  it, so nothing is downloaded and no weight is allocated; the count is ``sum(p.numel())``.
* **Activations per batch** (an estimate): the bytes of the tensors autograd saves for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``) in one forward pass of 2 images minus that of 1 image,
  which is one image's share (weights saved by a layer cancel out), times the images per device. Frozen
  parts save nothing (RAC's E; T unless it is fine-tuned). IEM adds its RSA (run on the CPU on a map of
  the backbone's output size, since RSA's checks read values) and the keys its two reads per memory
  gather (eq. 14-15: ``2 x keys per image x top_n x D`` floats). Saved views that share storage are
  counted twice and temporaries freed during the pass are not counted: a working estimate, not a bound.
* **IEM memories**: :meth:`ltcore.iem.model.IEMClassifier.projected_memory` over the training split's
  class counts and the config's epochs (every step writes its batch, banks stop at ``capacity``).
* **Class counts**: Fashion-MNIST-LT's from its own rule (:func:`ltcore.data.longtail.longtail_counts`
  with the config's options); the paper datasets, whose files are not on this machine, from their
  published sizes (:data:`PUBLISHED_PROFILES`); another dataset is built from its files.
* **Index** (RAC, host RAM, as the paper keeps it: "RAC keeps separate, complete copies of each index in
  memory for each node", Sec. 4.8): faiss ``IndexHNSWFlat`` holds per vector its ``4 D`` bytes, its
  level-0 links ``2 M`` and upper-level links ``M / (M - 1)`` on average (a node reaches level l with
  probability ``M^-l``) as int32, its level (int32) and its offset (int64):
  ``N (4 D + 4 (2 M + M / (M - 1)) + 12)`` bytes; ``Flat`` holds ``4 N D``.
* **Checkpoint on disk**: the model's state (float32 parameters and buffers), the optimizer's state
  (SGD momentum: one float per trainable parameter; AdamW: two) and the memories' pools (keys, values
  and their Adam moments: the device bytes of the projection). The index file is listed apart.

Layout across ``gpus`` devices (our assumption, the data-parallel layout of the next issue): parameters,
gradients and optimizer state are replicated on every device, the batch is split evenly (activations of
``ceil(batch_size / gpus)`` images), the IEM banks are sharded by class (each device holds ``total /
gpus`` of the memory bytes), and each node keeps a whole index in host RAM.

Our reading of the papers: IEM Section 4.2 caps each bank ("we set the maximum memory size to 50,000",
"To avoid out of GPU memory, we set the memory with a maximum capacity", Section 3.1) but gives no total;
the planner is where that total is worked out.
"""
from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from ltcore.runconfig import TIMM_BACKBONES, ConfigError, RunConfig, iem_model_kwargs

__all__ = ["PUBLISHED_PROFILES", "Plan", "class_counts", "index_bytes", "parse_size", "plan_run",
           "profile_counts"]

FLOAT_BYTES = 4


# ============================================================================================ class counts
@dataclass(frozen=True)
class CountProfile:
    """A long-tailed training split known by its published size: classes, largest and smallest class, total."""

    num_classes: int
    n_max: int
    n_min: int
    total: int
    source: str


PUBLISHED_PROFILES = {
    "imagenet_lt": CountProfile(1000, 1280, 5, 115_846,
                                "IEM 4.1: 1K classes, 115.8K images, 1,280 to 5 per class (115,846 in OLTR's "
                                "ImageNet_LT_train.txt)"),
    "places_lt": CountProfile(365, 4980, 5, 62_500,
                              "RAC Table S3: 62,500 train images, 365 classes; RAC 4.1: at least 5 per class; "
                              "OLTR (Liu et al. 2019): at most 4,980"),
    "sun_lt": CountProfile(397, 12, 2, 4_084,
                           "ASSUMED, not checked against a source here: 397 classes (SUN397), 4,084 train images, "
                           "12 to 2 per class; neither paper gives SUN-LT's sizes"),
    "inat2018": CountProfile(8142, 1000, 2, 437_513,
                             "RAC Table S3: 437,513 train images, 8,142 classes; 1,000 to 2 per class "
                             "(Van Horn et al. 2018)"),
}


def profile_counts(profile: CountProfile) -> np.ndarray:
    """[C] counts, head first, from ``n_max`` to ``n_min`` and summing to ``total`` exactly.

    The published numbers fix the ends and the sum, not the shape between: we take
    ``n_i = n_max (n_min / n_max) ** (x_i ** p)`` with ``x_i = i / (C - 1)`` (p = 1 is the exponential
    profile of :func:`ltcore.data.longtail.longtail_counts`), find p by bisection so the counts sum to the
    total, and hand the rounding remainder to the largest fractional parts.
    """
    C, ratio = profile.num_classes, profile.n_min / profile.n_max
    x = np.arange(C) / (C - 1)

    def counts(p: float) -> np.ndarray:
        return profile.n_max * ratio ** (x ** p)                                # [C] floats

    low, high = 1e-3, 1e3  # the sum grows with p: from ~C n_min towards C n_max
    for _ in range(200):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if counts(middle).sum() < profile.total else (low, middle)
    exact = counts(math.sqrt(low * high))
    whole = np.floor(exact).astype(np.int64)
    remainder = profile.total - int(whole.sum())
    order = np.argsort(-(exact - whole), kind="stable")
    whole[order[:remainder]] += 1 if remainder > 0 else 0
    return whole


def class_counts(config: RunConfig) -> tuple[np.ndarray, str]:
    """The training split's images per class [C] and where they come from (module docstring)."""
    name, options = config.data.name, config.data.options
    if name == "fashion_mnist_lt":
        from ltcore.data.fashion_mnist import CLASS_NAMES, build_fashion_mnist_lt
        from ltcore.data.longtail import longtail_counts

        settings = {**_defaults(build_fashion_mnist_lt), **options}
        counts = longtail_counts(settings["n_max"], len(CLASS_NAMES), settings["imbalance_ratio"], settings["profile"])
        return counts, f"{name}'s own rule (longtail_counts: n_max {settings['n_max']}, ratio " \
                       f"{settings['imbalance_ratio']:g}, {settings['profile']})"
    if name in PUBLISHED_PROFILES:
        profile = PUBLISHED_PROFILES[name]
        return profile_counts(profile), f"published profile: {profile.source}"
    from ltcore.data.registry import build_dataset

    try:
        return np.asarray(build_dataset(name, **options).class_counts), f"counted in {name}'s files"
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{config.source}: data.name: no published class counts for {name!r} and its files "
                          f"could not be read ({exc})") from None


def _defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def input_shape(config: RunConfig) -> tuple[int, int, int]:
    """(channels, height, width) of one training image."""
    name = config.data.name
    if name == "fashion_mnist_lt":
        return 1, 28, 28
    if name.startswith("cifar"):
        return 3, 32, 32
    from ltcore.data.registry import DATASETS

    size = config.data.options.get("image_size", _defaults(DATASETS[name].resolve()).get("image_size", 224))
    return 3, size, size


# ================================================================================================ models
def build_backbone_for_plan(config: RunConfig) -> nn.Module:
    """The config's backbone on the meta device (ltcore's small ResNets are built on the CPU first; the papers'
    larger ones, :class:`ltcore.models.TimmBackbone`, on the meta device directly, without their weights)."""
    from ltcore.models import TimmBackbone, build_backbone

    channels, size, _ = input_shape(config)
    name = config.model.backbone
    if name not in TIMM_BACKBONES:
        return build_backbone(name, channels).to("meta")
    with torch.device("meta"):
        return TimmBackbone(name, channels, pretrained=False, image_size=size)


def build_model_for_plan(config: RunConfig, num_classes: int) -> nn.Module:
    """The trained model on the meta device: plain classifier, IEM classifier, or RAC's parts
    (``base``, ``image_encoder``, ``text_encoder``, each frozen part with ``requires_grad=False``)."""
    from ltcore.models import PlainClassifier

    backbone = build_backbone_for_plan(config)
    if config.family == "iem":
        from ltcore.iem.model import IEMClassifier

        with torch.device("meta"):
            return IEMClassifier(backbone, num_classes, **iem_model_kwargs(config.iem)).to("meta")
    with torch.device("meta"):
        base = PlainClassifier(backbone, num_classes).to("meta")
    if config.family == "baseline":
        return base
    return nn.ModuleDict({"base": base, "image_encoder": _image_encoder(config),
                          "text_encoder": _text_encoder(config, num_classes)})


def _image_encoder(config: RunConfig) -> nn.Module:
    """RAC's frozen E (ltcore.rac.image_encoders.IMAGE_ENCODERS) on the meta device, with ``out_dim``."""
    import timm

    from ltcore.rac.image_encoders import IMAGE_ENCODERS

    spec, size = IMAGE_ENCODERS[config.rac.image_encoder], config.rac.image_size
    if spec.architecture is None:  # raw pixels
        encoder = nn.Flatten(1)
        encoder.out_dim = input_shape(config)[0] * size * size
        return encoder
    cfg = timm.models.get_pretrained_cfg(spec.architecture)
    options = {"img_size": size} if cfg is not None and cfg.fixed_input_size else {}
    with torch.device("meta"):
        encoder = timm.create_model(spec.architecture, pretrained=False, num_classes=0, **options)
    encoder.out_dim = int(encoder.num_features)
    return encoder.requires_grad_(False)


def _text_encoder(config: RunConfig, num_classes: int) -> nn.Module:
    """RAC's T: CLIP's text tower on the meta device (open_clip builds it there), the others as built."""
    from ltcore.rac.text_encoders import TEXT_ENCODERS, OpenCLIPTextEncoder, build_text_encoder

    name, train = config.rac.text_encoder, config.rac.train_transformer
    cls, defaults = TEXT_ENCODERS[name]
    if cls is not OpenCLIPTextEncoder or defaults.get("model_overrides"):
        return build_text_encoder(name, num_classes, train_transformer=train).to("meta")
    import open_clip

    model_name = defaults.get("model_name", _defaults(OpenCLIPTextEncoder.__init__)["model_name"])
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: none are wanted
    try:
        clip = open_clip.create_model(model_name, pretrained=None, device="meta")
    finally:
        logging.disable(logging.NOTSET)
    clip.visual = None
    clip.requires_grad_(train)
    projection = clip.text_projection
    embed_dim = projection.out_features if isinstance(projection, nn.Linear) else projection.shape[-1]
    text = nn.Module()
    text.clip = clip
    with torch.device("meta"):
        text.head = nn.Linear(embed_dim, num_classes)  # T's linear head (ltcore.rac.text_encoders.TextEncoder)
    return text


# =========================================================================================== activations
def saved_bytes(forward, inputs: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward(inputs)`` runs."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(inputs)
    return total


def per_image(forward, make_inputs) -> int:
    """One image's share of the saved tensors: saved(2 images) - saved(1 image)."""
    return saved_bytes(forward, make_inputs(2)) - saved_bytes(forward, make_inputs(1))


def activation_bytes_per_image(config: RunConfig, model: nn.Module) -> int:
    """The estimate of the module docstring for one training image."""
    channels, height, width = input_shape(config)

    def images(b: int) -> torch.Tensor:
        return torch.empty(b, channels, height, width, device="meta")  # (b, C_in, H, W)

    if config.family == "baseline":
        return per_image(model, images)
    if config.family == "rac":
        total = per_image(model["base"].backbone, images)
        text = model["text_encoder"]
        if config.rac.train_transformer and hasattr(text, "clip"):
            def tokens(b: int) -> torch.Tensor:
                return torch.zeros(b, text.clip.context_length, dtype=torch.long, device="meta")  # (b, 77)
            total += per_image(text.clip.encode_text, tokens)
        return total
    total = per_image(model.backbone, images)
    feature_shape = model.backbone(images(1)).shape[1:]                         # (C, h, w)
    if model.rsa is not None:  # RSA checks its regions' values: run a CPU copy with zero weights
        rsa = copy.deepcopy(model.rsa).to_empty(device="cpu")
        for tensor in rsa.parameters():
            nn.init.zeros_(tensor)
        rsa.requires_grad_(True)
        total += per_image(lambda maps: rsa(maps, return_weights=True, return_regions=True),
                           lambda b: torch.rand(b, *feature_shape))
    for name, memory in model.memories.items():  # eq. 14-15: two reads, top_n keys of D floats per key
        keys_per_image = 1 if name == "global" else config.iem.regions_per_image
        total += 2 * keys_per_image * memory.top_n * memory.key_dim * FLOAT_BYTES
    return total


# ================================================================================================ index
def index_bytes(num_vectors: int, dim: int, factory: str) -> int:
    """Bytes of a faiss index over ``num_vectors`` keys of ``dim`` floats ("Flat" or "HNSW<M>")."""
    vectors = num_vectors * dim * FLOAT_BYTES
    if factory == "Flat":
        return vectors
    m = int(factory[len("HNSW"):])
    links = 2 * m + m / (m - 1)               # level 0 holds 2M links; levels >= 1 hold M, reached w.p. M^-l
    return int(vectors + num_vectors * (4 * links + 4 + 8))


# ================================================================================================= plan
@dataclass
class Plan:
    """What a run needs; byte counts are totals unless named ``per_device``."""

    config: RunConfig
    gpus: int
    num_classes: int
    train_images: int
    counts_source: str
    parameters: int
    trainable_parameters: int
    state_bytes: int                    # parameters and buffers, float32
    optimizer_bytes: int
    activation_bytes_per_image: int
    memory: dict = field(default_factory=dict)   # IEM bank kind -> {"slots", "device_bytes", "host_bytes"}
    index_bytes: int = 0                # RAC's index, host RAM of every node (and its file on disk)
    device_memory: Optional[int] = None
    device_label: str = ""
    fits: bool = True
    reason: str = ""
    lower: list = field(default_factory=list)     # what to lower, largest need first

    @property
    def images_per_device(self) -> int:
        return math.ceil(self.config.schedule.batch_size / self.gpus)

    @property
    def per_device(self) -> dict:
        """Bytes on each device by part (module docstring: the data-parallel layout)."""
        return {"parameters": self.state_bytes, "gradients": self.trainable_parameters * FLOAT_BYTES,
                "optimizer state": self.optimizer_bytes,
                "activations": self.activation_bytes_per_image * self.images_per_device,
                **{f"IEM {name} memory": math.ceil(part["device_bytes"] / self.gpus)
                   for name, part in self.memory.items()}}

    @property
    def device_bytes(self) -> int:
        return sum(self.per_device.values())

    @property
    def host_bytes(self) -> int:
        """Host RAM on each node: the memories' Python index (its share) and the whole retrieval index."""
        return sum(math.ceil(part["host_bytes"] / self.gpus) for part in self.memory.values()) + self.index_bytes

    @property
    def checkpoint_bytes(self) -> int:
        return self.state_bytes + self.optimizer_bytes + sum(part["device_bytes"] for part in self.memory.values())

    def format(self) -> str:
        """The plan as a text table (``python -m ltcore plan``)."""
        c = self.config
        width = 46
        lines = [f"plan for {c.name} ({c.family}, {c.data.name}: {self.num_classes:,} classes, "
                 f"{self.train_images:,} training images, {c.schedule.epochs} epochs, batch {c.schedule.batch_size})",
                 f"class counts: {self.counts_source}",
                 f"{'':{width}s} {'total':>12s} {'per device':>12s}   ({self.gpus} device{'s' * (self.gpus > 1)})"]

        def row(label: str, total: Optional[int], each: Optional[int]) -> None:
            lines.append(f"{label:{width}s} {_size(total):>12s} {_size(each):>12s}")

        each = self.per_device
        row(f"parameters ({self.parameters:,}, {self.trainable_parameters:,} trained)", self.state_bytes,
            each["parameters"])
        row("gradients", each["gradients"], each["gradients"])
        row(f"optimizer state ({c.optimizer.name})", self.optimizer_bytes, each["optimizer state"])
        row(f"activations, estimated ({self.images_per_device} img/device)",
            self.activation_bytes_per_image * c.schedule.batch_size, each["activations"])
        for name, part in self.memory.items():
            row(f"IEM {name} memory ({part['slots']:,} slots)", part["device_bytes"], each[f"IEM {name} memory"])
        row("device total", None, self.device_bytes)
        if self.memory:
            row("host: memories' Python index", sum(p["host_bytes"] for p in self.memory.values()), None)
        if c.family == "rac":
            row(f"host: retrieval index ({c.rac.index})", self.index_bytes, None)
        row("checkpoint on disk", self.checkpoint_bytes, None)
        if c.family == "rac":
            row("index file on disk", self.index_bytes, None)
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"{verdict} {self.device_label}: {self.reason}")
        if self.lower:
            lines.append("to fit, lower: " + "; ".join(self.lower))
        return "\n".join(lines)


def plan_run(config: RunConfig, gpus: int = 1, device_memory: Optional[int] = None) -> Plan:
    """The :class:`Plan` of ``config`` on ``gpus`` devices of ``device_memory`` bytes each (None: this
    machine's device for ``config.device``: a GPU's memory, or the RAM, host bytes included, on the CPU)."""
    from ltcore.checks import check_int

    gpus = check_int("gpus", gpus, 1)
    counts, source = class_counts(config)
    model = build_model_for_plan(config, len(counts))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    moments = 2 if config.optimizer.name == "adamw" else 1  # AdamW: exp_avg, exp_avg_sq; SGD: momentum
    plan = Plan(
        config=config, gpus=gpus, num_classes=len(counts), train_images=int(counts.sum()), counts_source=source,
        parameters=sum(p.numel() for p in model.parameters()), trainable_parameters=trainable,
        state_bytes=sum(t.numel() * t.element_size() for t in model.state_dict().values()
                        if isinstance(t, torch.Tensor)),
        optimizer_bytes=moments * trainable * FLOAT_BYTES,
        activation_bytes_per_image=activation_bytes_per_image(config, model),
        memory=model.projected_memory(counts, config.schedule.epochs) if config.family == "iem" else {},
        index_bytes=index_bytes(int(counts.sum()), model["image_encoder"].out_dim, config.rac.index)
        if config.family == "rac" else 0)
    _judge(plan, model, counts, device_memory)
    return plan


def _judge(plan: Plan, model: nn.Module, counts: np.ndarray, device_memory: Optional[int]) -> None:
    """Set ``fits``, ``reason`` and ``lower`` against ``device_memory`` (or this machine's device)."""
    need = plan.device_bytes
    if device_memory is None:
        device_memory, on_cpu, plan.device_label = _this_machine(plan.config.device)
        need += plan.host_bytes if on_cpu else 0
    else:
        plan.device_label = f"a {_size(device_memory)} device"
    plan.device_memory = device_memory
    plan.fits = need <= device_memory
    plan.reason = f"needs {_size(need)} of {_size(device_memory)} per device"
    if plan.fits:
        return
    parts = sorted(plan.per_device.items(), key=lambda item: -item[1])
    c = plan.config
    for part, size in parts[:3]:
        if part.startswith("IEM"):
            capacity = _largest_capacity(plan, model, counts, device_memory - (need - sum(
                v for k, v in plan.per_device.items() if k.startswith("IEM"))))
            hint = f"at most {capacity:,} fits" if capacity else "no capacity fits alone"
            advice = (f"iem.capacity (now {c.iem.capacity:,}; {hint}), iem.regions_per_image (now "
                      f"{c.iem.regions_per_image}), schedule.epochs (now {c.schedule.epochs}) or more --gpus "
                      "(the banks are sharded by class)")
        elif part == "activations":
            advice = f"schedule.batch_size (now {c.schedule.batch_size}) or more --gpus"
        else:
            advice = f"a smaller model.backbone (now {c.model.backbone!r})"
        if size > 0.1 * need and advice not in plan.lower:
            plan.lower.append(advice)
    plan.reason += "; largest: " + ", ".join(f"{part} {_size(size)}" for part, size in parts[:3])


def _largest_capacity(plan: Plan, model: nn.Module, counts: np.ndarray, budget: float) -> int:
    """The largest ``iem.capacity`` whose memories' share per device fits in ``budget`` bytes (0 if none)."""
    from ltcore.iem.memory import projected_bank_sizes

    def share(capacity: int) -> float:
        total = 0
        for name, memory in model.memories.items():
            keys = 1 if name == "global" else plan.config.iem.regions_per_image
            slots = int(projected_bank_sizes(counts, plan.config.schedule.epochs, keys, capacity).sum())
            total += slots * memory.slot_bytes()[0]
        return total / plan.gpus

    low, high = 0, plan.config.iem.capacity
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if share(middle) <= budget else (low, middle - 1)
    return low


def _this_machine(device: str) -> tuple[int, bool, str]:
    """(bytes, is the CPU, label) of the device a run of ``device`` would use here."""
    from ltcore.config import get_device

    try:
        resolved = get_device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device: {exc}; pass --device-memory to plan for another machine") from None
    if resolved.type == "cuda":
        return torch.cuda.get_device_properties(resolved).total_memory, False, f"this machine's {resolved}"
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        raise ConfigError("this machine's RAM is unknown; pass --device-memory") from None
    return ram, True, "this machine's RAM"


# ================================================================================================ sizes
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes of a size such as ``80GB``, ``24GiB``, ``512MB`` or ``1000`` (decimal and binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if match is None or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"expected a size such as 80GB, 24GiB or 512MB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _size(nbytes: Optional[float]) -> str:
    if nbytes is None:
        return ""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{int(nbytes)} B"
