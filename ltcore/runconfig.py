"""Run configs: one TOML file says everything a training run of a baseline, IEM or RAC needs.

A config is data, shipped in ``ltcore/configs/NAME.toml`` (or any file), read by :func:`load_config` into
the frozen dataclasses below and checked on load: an unknown key (with the closest known one), a value of
the wrong type, an impossible value (lr <= 0, milestones beyond the epochs, an unknown dataset, backbone,
encoder or loss, ...), a missing required key and a TOML syntax error (with its line) are each a
:class:`ConfigError` naming the file and the key. ``overrides`` (``"optimizer.lr=0.01"``) change a loaded
config before it is checked, so an override is held to the same rules.

Layout of a file (``[iem]`` only for family "iem", ``[rac]`` only for family "rac")::

    family = "iem"              # "baseline" | "iem" | "rac"
    seed = 0
    device = "auto"
    norm = "batch"              # "batch" | "group"
    checkpoint_every = 500      # steps between checkpoints
    [data]      name = "imagenet_lt"; options = {...}         (ltcore.data.registry)
    [model]     backbone = "resnet10"; pretrained = false
    [loss]      name = "ce"; options = {...}                  (ltcore.losses.build_loss)
    [optimizer] name = "sgd"; lr; momentum; weight_decay
    [schedule]  epochs; batch_size; lr_schedule; milestones = [...]; lr_decay; warmup_epochs
    [loop]      workers; autocast = "off" | "bf16"; channels_last; compile; log_every      (ltcore.run)
    [iem]       capacity; top_n; gamma; delta; memory_lr; key_dim; h_max; w_max; regions_per_image;
                warmup_epochs; ablation
    [rac]       k; index; image_encoder; text_encoder; image_size; train_transformer; precompute;
                drop_self; mode; transformer_lr

The papers' numbers in the named configs cite their sentences in comments. Papers: Zhu & Yang, "Inflated
Episodic Memory with Region Self-Attention for Long-Tailed Visual Recognition", CVPR 2020 (Section 4.2);
Long et al., "Retrieval Augmented Classification for Long-Tail Visual Recognition", CVPR 2022 (Sections 3-4).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import inspect
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch

from ltcore.checks import check_choice, check_float, check_int
from ltcore.models import TIMM_BACKBONES  # the papers' larger backbones (re-exported)
from ltcore.train import LR_SCHEDULES

__all__ = ["ConfigError", "RunConfig", "config_names", "iem_model_kwargs", "load_config", "FAMILIES", "NORMS",
           "TIMM_BACKBONES"]

FAMILIES = ("baseline", "iem", "rac")
NORMS = ("batch", "group")
OPTIMIZERS = ("sgd", "adamw")  # ltcore.rac.classifier.OPTIMIZERS; the IEM and baseline trainer uses SGD
INDEX_FACTORY = re.compile(r"^(Flat|HNSW(\d+))$")  # faiss index_factory strings the retrieval index supports


class ConfigError(ValueError):
    """A config that cannot run: the message names the file and the key."""


# ============================================================================================== the schema
@dataclass(frozen=True)
class DataConfig:
    name: str                                      # a key of ltcore.data.registry.DATASETS
    options: dict = field(default_factory=dict)    # build_dataset(name, **options)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str                                  # ltcore.models.BACKBONES or TIMM_BACKBONES
    pretrained: bool = False


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"                               # ltcore.losses.LOSS_NAMES
    options: dict = field(default_factory=dict)    # numeric keyword arguments of build_loss


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float
    name: str = "sgd"                              # "sgd" | "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int
    batch_size: int
    lr_schedule: str = "step"                      # "step" (milestones) | "cosine" (RAC Table S7)
    milestones: tuple[int, ...] = ()               # step: epochs at which the lr is multiplied by lr_decay
    lr_decay: float = 0.1
    warmup_epochs: int = 0                         # linear lr warm-up (ltcore.train.TrainConfig)


@dataclass(frozen=True)
class IEMConfig:
    """The IEM classifier's settings (ltcore.iem.model.IEMClassifier; paper 4.2 for the memory)."""

    capacity: int = 50000
    top_n: int = 50
    gamma: float = 0.99
    delta: float = 1e-3
    memory_lr: float = 1e-5
    key_dim: int = 512
    h_max: int = 3
    w_max: int = 3
    regions_per_image: int = 8
    warmup_epochs: int = 1
    ablation: str = "none"                         # "none" | "no_rsa" | "no_local" | "no_global" (Table 5)


def iem_model_kwargs(iem: IEMConfig) -> dict:
    """The keyword arguments of :class:`ltcore.iem.model.IEMClassifier` (after backbone and classes) for ``iem``:
    Table 5's ablation switches, the memories' and RSA's settings."""
    from ltcore.iem.model import ABLATIONS

    return dict(**ABLATIONS[None if iem.ablation == "none" else iem.ablation][1],
                memory_kwargs=dict(capacity=iem.capacity, top_n=iem.top_n, gamma=iem.gamma, delta=iem.delta,
                                   lr=iem.memory_lr),
                rsa_kwargs=dict(key_dim=iem.key_dim, h_max=iem.h_max, w_max=iem.w_max),
                regions_per_image=iem.regions_per_image, warmup_epochs=iem.warmup_epochs)


@dataclass(frozen=True)
class RACConfig:
    """RAC's retrieval branch (ltcore.rac.train.RACSettings; paper Sec. 3.3-3.4)."""

    k: int = 30
    index: str = "HNSW32"                          # faiss factory string: "Flat" or "HNSW<M>"
    image_encoder: str = "vit_b16_in21k"           # E, ltcore.rac.image_encoders.IMAGE_ENCODERS
    text_encoder: str = "clip"                     # T, ltcore.rac.text_encoders.TEXT_ENCODERS
    image_size: int = 224                          # side of E's input
    train_transformer: bool = True
    precompute: bool = False
    drop_self: str = "first"
    mode: str = "rac"                              # "rac" | "base" | "retrieval" (Table 3's rows)
    transformer_lr: float = 5e-5
    pretrained_encoders: bool = True               # False: E and CLIP's T with random weights (the smoke run)


AUTOCAST = ("off", "bf16")


@dataclass(frozen=True)
class LoopConfig:
    """How the train command's loop runs (ltcore.run); none of it changes what a CPU run computes."""

    workers: int = 0              # DataLoader worker processes; every item's augmentation is seeded by its index,
                                  # so the batches are the same with any number of workers
    autocast: str = "off"         # "bf16": bfloat16 autocast on CUDA (ignored on a CPU)
    channels_last: bool = False   # the model and its images in channels-last memory order
    compile: bool = False         # torch.compile the model's forward (nn.Module.compile: state-dict keys unchanged)
    log_every: int = 10           # steps between metrics.jsonl lines (the only loss synchronisations)


@dataclass(frozen=True)
class RunConfig:
    family: str
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    loss: LossConfig = field(default_factory=LossConfig)
    description: str = ""
    seed: int = 0
    device: str = "auto"
    norm: str = "batch"
    checkpoint_every: int = 1000
    loop: LoopConfig = field(default_factory=LoopConfig)
    iem: Optional[IEMConfig] = None
    rac: Optional[RACConfig] = None
    source: str = field(default="", compare=False)  # the file it came from (not a key of the file)

    @property
    def name(self) -> str:
        return Path(self.source).stem


# =============================================================================================== loading
def config_names() -> list[str]:
    """The named configs shipped in ``ltcore/configs``."""
    return sorted(path.name[:-5] for path in _configs_dir().iterdir() if path.name.endswith(".toml"))


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """The checked :class:`RunConfig` of a named config (``"iem-imagenet-lt"``) or a TOML file, with
    ``overrides`` (``"key=value"``, dotted keys, values TOML literals; a bare word is a string) applied."""
    path = _resolve(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from None
    overridden = set()
    for item in overrides:
        key, value = _parse_override(path, item)
        _set(path, raw, key, value)
        overridden.add(key)
    return _build(path, raw, overridden)


def _configs_dir():
    return importlib.resources.files("ltcore") / "configs"


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        return path
    names = config_names()
    if text not in names:
        close = difflib.get_close_matches(text, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{text}: no named config {text!r}{hint} (known: {', '.join(names)})")
    return Path(str(_configs_dir() / f"{text}.toml"))


def _parse_override(path: Path, item: str) -> tuple[str, Any]:
    key, sep, text = str(item).partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
        raise ConfigError(f"{path}: override {item!r} must be key=value with a dotted key, e.g. optimizer.lr=0.01")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word such as norm=group
    return key, value


def _set(path: Path, raw: dict, key: str, value: Any) -> None:
    table = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: key {'.'.join(parts[:depth + 1])!r} is not a table, so override "
                              f"{key!r} cannot set a key inside it")
    table[parts[-1]] = value


# ============================================================================================ type checks
def _build(path: Path, raw: dict, overridden: set) -> RunConfig:
    def fail(key: str, message: str):
        origin = " (from an override)" if any(key == o or key.startswith(o + ".") for o in overridden) else ""
        raise ConfigError(f"{path}: {key}{origin}: {message}")

    config = _typed(RunConfig, raw, "", fail)
    if config.family not in FAMILIES:
        fail("family", f"family must be one of {list(FAMILIES)}, got {config.family!r}")
    sections = {"iem": (config.iem, IEMConfig), "rac": (config.rac, RACConfig)}
    for owner, (section, cls) in sections.items():
        if section is not None and config.family != owner:
            fail(owner, f"the [{owner}] table is only for family {owner!r}, this config's family is "
                        f"{config.family!r}")
        if section is None and config.family == owner:
            config = dataclasses.replace(config, **{owner: cls()})  # the family's defaults
    config = dataclasses.replace(config, source=str(path))
    _check_values(config, fail)
    return config


def _typed(cls, raw: Any, prefix: str, fail):
    """An instance of the dataclass ``cls`` from the table ``raw``, every key known and of the right type."""
    if not isinstance(raw, dict):
        fail(prefix.rstrip("."), f"expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            fail(prefix + key, "unknown key" + (f"; did you mean {prefix + close[0]!r}?" if close else
                                                f"; known keys: {', '.join(known)}"))
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                fail(prefix + f.name, "required key missing")
            continue
        values[f.name] = _typed_value(hints[f.name], raw[f.name], prefix + f.name, fail)
    return cls(**values)


def _typed_value(hint, value: Any, key: str, fail):
    if typing.get_origin(hint) is typing.Union:  # Optional[section]
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if dataclasses.is_dataclass(hint):
        return _typed(hint, value, key + ".", fail)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is dict:
        ok = isinstance(value, dict)
    elif typing.get_origin(hint) is tuple:  # tuple[int, ...]
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - a schema field of a type this reader does not know
        raise TypeError(f"unsupported schema type {hint!r} for {key}")
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                    dict: "a table"}.get(hint, "a list of integers")
        fail(key, f"expected {expected}, got {value!r} ({type(value).__name__})")
    return value


# =========================================================================================== value checks
def _check_values(config: RunConfig, fail) -> None:
    """Impossible values, each reported with its key (the ltcore.checks message after it)."""
    def checked(key: str, check, *args, **kwargs):
        try:
            return check(key, *args, **kwargs)
        except ValueError as exc:
            fail(key, str(exc))

    from ltcore.data.registry import DATASETS
    from ltcore.losses import LOSS_NAMES, loss_options
    from ltcore.models import BACKBONES

    checked("norm", check_choice, config.norm, NORMS)
    checked("seed", check_int, config.seed, 0, 2**32 - 1)
    checked("checkpoint_every", check_int, config.checkpoint_every, 1)
    checked("loop.workers", check_int, config.loop.workers, 0)
    checked("loop.autocast", check_choice, config.loop.autocast, AUTOCAST)
    checked("loop.log_every", check_int, config.loop.log_every, 1)
    try:
        torch.device(config.device) if config.device != "auto" else None
    except (RuntimeError, TypeError):
        fail("device", f"{config.device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")

    checked("data.name", check_choice, config.data.name, DATASETS)
    accepted = inspect.signature(DATASETS[config.data.name].resolve()).parameters
    for option in config.data.options:
        if option not in accepted:
            close = difflib.get_close_matches(option, list(accepted), n=1)
            fail(f"data.options.{option}", f"dataset {config.data.name!r} has no such option"
                 + (f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(accepted)}"))

    backbones = [*BACKBONES, *TIMM_BACKBONES]
    checked("model.backbone", check_choice, config.model.backbone, backbones)
    if config.family == "iem" and config.model.backbone.startswith("vit"):
        fail("model.backbone", "IEM's region self-attention needs a convolutional feature map, not a ViT")

    checked("loss.name", check_choice, config.loss.name, LOSS_NAMES)
    for option, value in config.loss.options.items():
        if option not in loss_options(config.loss.name):
            fail(f"loss.options.{option}", f"loss {config.loss.name!r} has no such option; valid: "
                 f"{', '.join(loss_options(config.loss.name)) or '(none)'}")
        checked(f"loss.options.{option}", check_float, value)

    opt = config.optimizer
    checked("optimizer.name", check_choice, opt.name, OPTIMIZERS)
    checked("optimizer.lr", check_float, opt.lr, 0.0, low_open=True)
    checked("optimizer.momentum", check_float, opt.momentum, 0.0, 1.0, high_open=True)
    checked("optimizer.weight_decay", check_float, opt.weight_decay, 0.0)

    schedule = config.schedule
    checked("schedule.epochs", check_int, schedule.epochs, 1)
    checked("schedule.batch_size", check_int, schedule.batch_size, 1)
    checked("schedule.lr_decay", check_float, schedule.lr_decay, 0.0, low_open=True)
    checked("schedule.warmup_epochs", check_int, schedule.warmup_epochs, 0, schedule.epochs - 1)
    for i, epoch in enumerate(schedule.milestones):
        checked(f"schedule.milestones[{i}]", check_int, epoch, 1, schedule.epochs - 1)
    if any(b <= a for a, b in zip(schedule.milestones, schedule.milestones[1:])):
        fail("schedule.milestones", f"must be strictly increasing, got {list(schedule.milestones)}")
    checked("schedule.lr_schedule", check_choice, schedule.lr_schedule, LR_SCHEDULES)
    if schedule.lr_schedule == "cosine" and schedule.milestones:
        fail("schedule.milestones", "a cosine schedule has no milestones")

    if config.iem is not None:
        _check_iem(config.iem, schedule.epochs, checked)
    if config.rac is not None:
        _check_rac(config.rac, checked, fail)


def _check_iem(iem: IEMConfig, epochs: int, checked) -> None:
    from ltcore.iem.model import ABLATIONS

    for key in ("capacity", "top_n", "key_dim", "h_max", "w_max", "regions_per_image"):
        checked(f"iem.{key}", check_int, getattr(iem, key), 1)
    checked("iem.gamma", check_float, iem.gamma, 0.0, 1.0)
    checked("iem.delta", check_float, iem.delta, 1e-30)
    checked("iem.memory_lr", check_float, iem.memory_lr, 0.0, low_open=True)
    checked("iem.warmup_epochs", check_int, iem.warmup_epochs, 0, epochs - 1)
    checked("iem.ablation", check_choice, iem.ablation, ["none", *(a for a in ABLATIONS if a)])


def _check_rac(rac: RACConfig, checked, fail) -> None:
    from ltcore.rac.image_encoders import IMAGE_ENCODERS
    from ltcore.rac.model import DROP_RULES, RAC_MODES
    from ltcore.rac.text_encoders import TEXT_ENCODERS

    checked("rac.k", check_int, rac.k, 1)
    match = INDEX_FACTORY.match(rac.index)
    if match is None or (match.group(2) is not None and int(match.group(2)) < 2):
        fail("rac.index", f"must be a faiss factory string 'Flat' or 'HNSW<M>' with M >= 2 (paper: 'HNSW32'), "
                          f"got {rac.index!r}")
    checked("rac.image_encoder", check_choice, rac.image_encoder, IMAGE_ENCODERS)
    checked("rac.text_encoder", check_choice, rac.text_encoder, TEXT_ENCODERS)
    checked("rac.image_size", check_int, rac.image_size, 8)
    checked("rac.drop_self", check_choice, rac.drop_self, DROP_RULES)
    checked("rac.mode", check_choice, rac.mode, RAC_MODES)
    checked("rac.transformer_lr", check_float, rac.transformer_lr, 0.0, low_open=True)


def as_dict(config: RunConfig) -> Mapping[str, Any]:
    """The config as plain data (for a run's record), without its source path."""
    data = dataclasses.asdict(config)
    data.pop("source")
    return data
