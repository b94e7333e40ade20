"""Backbones and the plain classifier that every method builds on.

Backbones come from timm's ResNet (He et al., CVPR 2016). The IEM paper
(section 4.2) trains a ResNet-10 from scratch on ImageNet-LT, "following [21]"
(OLTR): BasicBlocks, one per stage, widths 64-128-256-512. For 28x28 inputs we
swap the ImageNet stem (7x7/2 conv + max-pool) for a CIFAR-style 3x3/1 conv and
run the last stage at stride 1 (timm's ``output_stride=16``, dilated), so the
final feature map stays 7x7: region self-attention needs a spatial map.

All variants are built by one factory, :func:`build_backbone`; the tiny
``test_*`` variants exist for unit tests only. ``build_backbone("precomputed",
C)`` is the identity over feature maps with C channels computed beforehand by a
frozen pretrained network (:class:`PrecomputedFeatureMaps`): the same plain
model and IEM classifier then train on top of those maps.

Taught in notebook 01, *Baselines*.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from timm.models.resnet import BasicBlock, ResNet

from ltcore.checks import check_int


@dataclass(frozen=True)
class BackboneSpec:
    channels: tuple[int, ...]
    layers: tuple[int, ...]
    small_input: bool  # CIFAR-style 3x3 stem for 28x28 / 32x32 inputs, final map = input / 4
    description: str
    stem_stride: int = 1  # 2 halves the resolution of the first stage (4x cheaper), still ending at input / 4


BACKBONES = {
    "resnet10": BackboneSpec((64, 128, 256, 512), (1, 1, 1, 1), False,
                             "ResNet-10 of OLTR / the IEM paper, ImageNet stem, 224x224 inputs"),
    "resnet10_small": BackboneSpec((32, 64, 128, 256), (1, 1, 1, 1), True,
                                   "half-width ResNet-10, CIFAR stem: 28x28 -> 7x7 feature map (quick default)"),
    "resnet10_tiny": BackboneSpec((16, 32, 64, 64), (1, 1, 1, 1), True,
                                  "narrow ResNet-10, stride-2 3x3 stem: 28x28 -> 7x7 in minutes on 2 CPU cores", 2),
    "resnet10_micro": BackboneSpec((8, 16, 32, 32), (1, 1, 1, 1), True,
                                   "half of resnet10_tiny's width: 28x28 -> 7x7, the claims' end-to-end runs", 2),
    "test_resnet": BackboneSpec((4, 8, 8, 16), (1, 1, 1, 1), True, "tiny variant for unit tests", 2),
}


class Backbone(nn.Module):
    """A timm ResNet trunk returning the last feature map ``[B, C, H, W]``."""

    def __init__(self, name: str, in_chans: int = 1, mean: float | tuple = 0.5, std: float | tuple = 0.5):
        super().__init__()
        if name not in BACKBONES:
            raise KeyError(f"unknown backbone {name!r}; known: {', '.join([*BACKBONES, PRECOMPUTED])}")
        spec = BACKBONES[name]
        in_chans = check_int("in_chans", in_chans, 1)
        # timm's plain stem is always 64 wide; its "deep" stem is 2 * stem_width wide, so asking for a deep
        # stem of half the first stage's width and replacing it by one 3x3/1 conv gives a CIFAR stem of the
        # first stage's width (no 1x1 projection into layer1).
        stem_args = dict(stem_type="deep", stem_width=spec.channels[0] // 2) if spec.small_input else {}
        # timm counts output_stride from its stride-4 stem; ours has stride 1 or 2 and the map must end at input / 4.
        output_stride = 16 // spec.stem_stride if spec.small_input else 32
        net = ResNet(BasicBlock, spec.layers, num_classes=0, in_chans=in_chans, channels=spec.channels,
                     output_stride=output_stride, global_pool="", **stem_args)
        if spec.small_input:
            net.conv1 = nn.Conv2d(in_chans, spec.channels[0], kernel_size=3, stride=spec.stem_stride, padding=1,
                                  bias=False)
            net.bn1 = nn.BatchNorm2d(spec.channels[0])
            net.maxpool = nn.Identity()
        self.name = name
        self.net = net
        self.out_dim = spec.channels[-1]
        def per_channel(value) -> torch.Tensor:  # a scalar or one value per channel -> (1, C, 1, 1)
            return torch.as_tensor(value, dtype=torch.float32).reshape(-1).expand(in_chans).reshape(1, -1, 1, 1).clone()

        self.register_buffer("mean", per_channel(mean))
        self.register_buffer("std", per_channel(std))
        if not bool(torch.isfinite(self.mean).all() & torch.isfinite(self.std).all() & (self.std > 0).all()):
            raise ValueError(f"mean must be finite and std finite and positive, got mean={mean!r}, std={std!r}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, C_in, H, W) in [0, 1] -> (B, C, H/4, W/4) for small inputs, (B, C, H/32, W/32) otherwise
        return self.net.forward_features((images - self.mean) / self.std)


# The papers' larger backbones, built by timm (name -> timm architecture).
TIMM_BACKBONES = {
    "resnet50": "resnet50",                  # IEM 4.2: "For iNaturalist, we train ResNet-50"
    "resnet152": "resnet152",                # IEM 4.2: "For Places-LT and SUN-LT, we leverage ResNet-152"
    "vit_b16": "vit_base_patch16_224",       # RAC 3.3: "we primarily use the ViT-B-16 variant"
    "vit_ti16": "vit_tiny_patch16_224",      # not a paper setting: ViT-B-16's code path at 1/15 of its size (smoke run)
}


class TimmBackbone(nn.Module):
    """One of :data:`TIMM_BACKBONES`, returning a feature map ``[B, C, H, W]`` like :class:`Backbone`: a ResNet's
    last map (224 px -> 7 x 7), or a ViT's class token as a 1 x 1 map (so the plain classifier's average over
    the map is the class token, as a ViT classifies).

    ``pretrained``: timm's ImageNet weights, fetched from the Hugging Face Hub on first use (set ``HF_HOME`` to a
    folder holding them on a machine without internet); a failed fetch is an error naming the backbone.
    """

    def __init__(self, name: str, in_chans: int = 3, pretrained: bool = False, mean=None, std=None,
                 image_size: int = 224):
        super().__init__()
        import timm

        if name not in TIMM_BACKBONES:
            raise KeyError(f"unknown timm backbone {name!r}; known: {', '.join(TIMM_BACKBONES)}")
        options = dict(num_classes=0, in_chans=check_int("in_chans", in_chans, 1))
        self.is_vit = name.startswith("vit")
        # A ViT takes other input sizes by interpolating its position embeddings (timm's dynamic_img_size; at
        # ``image_size`` nothing changes): the smoke run feeds it the fixtures' 64 px crops.
        options.update(img_size=image_size, dynamic_img_size=True) if self.is_vit else options.update(global_pool="")
        try:
            self.net = timm.create_model(TIMM_BACKBONES[name], pretrained=pretrained, **options)
        except Exception as exc:  # the Hub unreachable, or no weights for these options
            if not pretrained:
                raise
            raise RuntimeError(f"the pretrained weights of {name} ({TIMM_BACKBONES[name]}) could not be loaded: "
                               f"{exc}; on a machine without internet put them in the Hugging Face cache (HF_HOME) "
                               f"first, or set model.pretrained = false") from exc
        self.name, self.out_dim = name, self.net.num_features
        default_mean, default_std = IMAGENET_MEAN_STD
        self.register_buffer("mean", torch.tensor(default_mean if mean is None else mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(default_std if std is None else std).reshape(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features((images - self.mean) / self.std)
        if self.is_vit:  # (B, 1 + tokens, C): the class token, as a (B, C, 1, 1) map
            return features[:, 0, :, None, None]
        return features  # (B, C, H / 32, W / 32)


class PrecomputedFeatureMaps(nn.Module):
    """The identity backbone: its inputs are feature maps ``[B, C, H, W]`` that a frozen network computed
    beforehand (e.g. :func:`ltcore.features.extract_features`), passed on as float32 (cached maps may be float16).

    Nothing here is trained, so every head built on it trains on frozen features.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.name = PRECOMPUTED
        self.out_dim = check_int("channels", channels, 1)

    def forward(self, feature_maps: torch.Tensor) -> torch.Tensor:
        if feature_maps.dim() != 4 or feature_maps.shape[1] != self.out_dim:
            raise ValueError(f"precomputed feature maps must be [B, {self.out_dim}, H, W], got "
                             f"{tuple(feature_maps.shape)}")
        return feature_maps.float()  # (B, C, H, W), float32 whatever the cache's dtype


FASHION_MNIST_MEAN_STD = (0.2860, 0.3530)
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PRECOMPUTED = "precomputed"  # build_backbone's name of the identity over cached feature maps


def build_backbone(name: str = "resnet10_small", in_chans: int = 1, mean=None,
                   std=None, pretrained: bool = False) -> Backbone | TimmBackbone | PrecomputedFeatureMaps:
    """Build a named backbone (:data:`BACKBONES`, or the papers' larger :data:`TIMM_BACKBONES`, which alone take
    ``pretrained``). Inputs are images in [0, 1]; the backbone normalises them with ``mean``/``std`` (default:
    Fashion-MNIST's pixel statistics for 1 channel, ImageNet's for 3).

    ``name="precomputed"``: :class:`PrecomputedFeatureMaps`, whose inputs are feature maps with ``in_chans``
    channels (``mean`` and ``std`` do not apply).
    """
    if name == PRECOMPUTED:
        if mean is not None or std is not None:
            raise ValueError("precomputed feature maps are not normalised: pass no mean or std")
        return PrecomputedFeatureMaps(in_chans)
    if name in TIMM_BACKBONES:
        return TimmBackbone(name, in_chans, pretrained, mean, std)
    if pretrained:
        raise ValueError(f"{name} is trained from scratch here (IEM 4.2's ResNet-10 is); pretrained weights exist "
                         f"for {', '.join(TIMM_BACKBONES)}")
    default_mean, default_std = FASHION_MNIST_MEAN_STD if in_chans == 1 else IMAGENET_MEAN_STD
    return Backbone(name, in_chans, default_mean if mean is None else mean, default_std if std is None else std)


class NormedLinear(nn.Module):
    """Cosine classifier ``normalize(x) @ normalize(W)``: logits in [-1, 1], as LDAM (Cao et al. 2019) uses."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        in_dim, num_classes = check_int("in_dim", in_dim, 1), check_int("num_classes", num_classes, 1)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=1).T  # (B, L)


class PlainClassifier(nn.Module):
    """Backbone, global average pooling and a linear classifier: the "plain model" of both papers.

    ``normed=True`` swaps the linear layer for a cosine classifier (LDAM-DRW's setting).
    """

    def __init__(self, backbone: Backbone | PrecomputedFeatureMaps, num_classes: int, normed: bool = False):
        super().__init__()
        num_classes = check_int("num_classes", num_classes, 1)
        self.backbone = backbone
        self.fc = NormedLinear(backbone.out_dim, num_classes) if normed else nn.Linear(backbone.out_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)  # (B, C, H, W)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        return self.fc(pooled)  # (B, num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
