"""A small, device-agnostic trainer shared by the baselines, IEM and RAC.

``fit`` runs SGD with momentum and a step schedule (the papers' recipe: IEM 4.2,
"SGD with momentum of 0.9 ... learning rate annealed at epoch 30 and 60"), with a
progress bar, seeding, per-epoch validation and atomic checkpoints.

A run stops rather than continue from a broken state: a non-finite loss or gradient stops it
before the weights are updated, and weights that became non-finite stop it before they are
written. A checkpoint holds only tensors and plain data (it loads with ``weights_only=True``)
and the run's settings; resuming from it with other settings is an error (:func:`fit`).

A model plugs in through optional hooks, so the same loop trains every method:

- ``model(images)`` returns logits ``[B, L]`` or a dict with a ``"logits"`` entry
  (and other branches, e.g. RAC's ``"base"`` / ``"retrieval"``, kept by :func:`predict`);
- ``model.training_step(images, labels, indices, loss_fn, epoch) -> loss`` replaces the default
  ``loss_fn(logits, labels, epoch=epoch)`` (IEM adds its memory losses and writes there);
- ``model.configure_optimizers(config) -> list[Optimizer]``: the first one follows the lr schedule
  (IEM adds an Adam optimizer for its memory, paper 4.2);
- ``model.after_optimizer_step()``, ``model.on_epoch_start(epoch)``;
- ``model.predict_step(images, indices)`` replaces ``model(images)`` at evaluation.

Taught in notebook 01, *Baselines*.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ltcore.checks import check_float, check_int
from ltcore.config import get_device, override, progress_disabled, seed_everything
from ltcore.io import atomic_save, check_write_target, safe_load

CHECKPOINT_FORMAT = "ltcore-checkpoint-v1"
# Settings that do not change what a run computes, so a resumed run may differ in them; ``epochs``
# may only grow (a run is extended, never cut below the epochs already done).
FREE_ON_RESUME = ("epochs", "device", "eval_batch_size", "progress")
LR_SCHEDULES = ("step", "cosine")


@dataclass
class TrainConfig:
    """The trainer's settings (IEM 4.2: SGD, momentum 0.9, step schedule); every number is checked on creation."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple = ()  # epochs (0-based) at which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    lr_schedule: str = "step"  # "step" (lr_milestones) or "cosine" (RAC Table S7), after the warm-up
    warmup_epochs: int = 0  # linear lr warm-up over the first epochs
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 512
    progress: bool = True

    def __post_init__(self):
        self.epochs = check_int("epochs", self.epochs, 1)
        self.batch_size = check_int("batch_size", self.batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", self.eval_batch_size, 1)
        self.lr = check_float("lr", self.lr, 0.0, low_open=True)
        self.momentum = check_float("momentum", self.momentum, 0.0, 1.0, high_open=True)
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        self.lr_gamma = check_float("lr_gamma", self.lr_gamma, 0.0, low_open=True)
        self.warmup_epochs = check_int("warmup_epochs", self.warmup_epochs, 0)
        self.seed = check_int("seed", self.seed, 0, 2**32 - 1)
        if not isinstance(self.lr_milestones, (tuple, list)):
            raise ValueError(f"lr_milestones must be a tuple of epochs, got {self.lr_milestones!r}")
        self.lr_milestones = tuple(check_int(f"lr_milestones[{i}]", epoch, 0)
                                   for i, epoch in enumerate(self.lr_milestones))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and self.lr_milestones:
            raise ValueError("a cosine schedule has no lr_milestones")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False, got {self.progress!r}")


@dataclass
class History:
    epochs: list = field(default_factory=list)  # one dict per epoch
    seconds: float = 0.0

    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def _output_logits(outputs) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def takes_epoch(loss_fn: Callable) -> bool:
    try:
        return "epoch" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return False


def call_loss(loss_fn: Callable, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
    """``loss_fn(logits, labels)``, with ``epoch=`` when the loss takes one (DRW and other schedules)."""
    return loss_fn(logits, labels, epoch=epoch) if takes_epoch(loss_fn) else loss_fn(logits, labels)


def default_optimizers(model: nn.Module, config: TrainConfig) -> list:
    params = [p for p in model.parameters() if p.requires_grad]
    return [torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)]


def lr_at(epoch: int, config: TrainConfig) -> float:
    """The scheduled lr of an epoch: linear warm-up, then steps at ``lr_milestones`` or a cosine from ``lr`` towards
    0 over the remaining epochs, ``lr * (1 + cos(pi * t / T)) / 2`` with ``t`` the epochs since the warm-up and ``T``
    their number (RAC, Table S7: "cosine"; the paper does not say per step or per epoch: per epoch here, as the
    rest of the schedule)."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    if config.lr_schedule == "cosine":
        t, total = epoch - config.warmup_epochs, config.epochs - config.warmup_epochs
        return config.lr * (1 + math.cos(math.pi * t / total)) / 2
    return config.lr * config.lr_gamma ** sum(epoch >= m for m in config.lr_milestones)


def fit(model: nn.Module, train_set: Dataset, loss_fn: Callable, config: TrainConfig = TrainConfig(),
        val_set: Optional[Dataset] = None, checkpoint_path: Optional[str | Path] = None,
        resume: bool = False) -> History:
    """Train ``model`` on ``train_set`` (items ``(image, label, index)``); returns the per-epoch history.

    With ``checkpoint_path`` the state is written (atomically) after every epoch; the path is checked
    before training starts. With ``resume`` training continues from that file when it exists; the
    file must come from the same run: settings other than :data:`FREE_ON_RESUME` must be equal, and
    ``config.epochs`` may extend the run but not fall below the epochs already done (errors name the
    differing settings). A non-finite loss, gradient or weight stops training with a
    ``FloatingPointError`` naming the epoch (and step); nothing non-finite is written.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    if val_set is not None and len(val_set) == 0:
        raise ValueError("val_set is empty (pass val_set=None to train without validation)")
    if checkpoint_path is not None:
        check_write_target(checkpoint_path)
    device = get_device(config.device)
    generator = seed_everything(config.seed)
    model.to(device)
    optimizers = model.configure_optimizers(config) if hasattr(model, "configure_optimizers") \
        else default_optimizers(model, config)
    history, start_epoch = History(), 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = read_checkpoint(checkpoint_path)
        check_same_run(checkpoint_path, state, config)
        restore_checkpoint(checkpoint_path, state, model, optimizers)
        history, start_epoch = History(list(state["history"]["epochs"]), state["history"]["seconds"]), \
            state["epoch"] + 1
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    started = time.perf_counter() - history.seconds
    for epoch in range(start_epoch, config.epochs):
        # Data order and augmentation are seeded per epoch, so a resumed run sees what an uninterrupted one would.
        generator.manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)
        for group in optimizers[0].param_groups:
            group["lr"] = lr_at(epoch, config)
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(epoch)
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, mininterval=1.0,
                   disable=progress_disabled(config.progress))
        for step, (images, labels, indices) in enumerate(bar, start=1):
            images, labels = images.to(device), labels.to(device)
            loss = optimization_step(model, optimizers, images, labels, indices, loss_fn, epoch, step=step)
            total += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{total / seen:.3f}", refresh=False)  # shown at the next (throttled) refresh
        check_finite_weights(model, f"after epoch {epoch + 1}")
        row = {"epoch": epoch + 1, "loss": total / seen, "lr": lr_at(epoch, config)}
        if val_set is not None:
            preds = predict(model, val_set, config.eval_batch_size, device, progress=False)
            row["val_top1"] = float((preds["logits"].argmax(1) == preds["labels"]).mean())
        history.epochs.append(row)
        history.seconds = time.perf_counter() - started
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, optimizers, epoch, history, config)
    return history


def optimization_step(model: nn.Module, optimizers: list, images: torch.Tensor, labels: torch.Tensor,
                      indices: torch.Tensor, loss_fn: Callable, epoch: int, step: Optional[int] = None
                      ) -> torch.Tensor:
    """One step of :func:`fit` on a batch already on the model's device: the loss (the model's
    ``training_step`` if it has one), zero_grad, backward, every optimizer's step, then the model's
    ``after_optimizer_step``. Returns the loss.

    A non-finite loss or gradient raises ``FloatingPointError`` before any optimizer steps, so the
    weights stay as they were; ``step`` (1-based, in the epoch) only names the step in the message.
    """
    where = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
    if hasattr(model, "training_step"):
        loss = model.training_step(images, labels, indices, loss_fn, epoch)
    else:
        loss = call_loss(loss_fn, _output_logits(model(images)), labels, epoch)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # One device synchronisation per step: the loss's and every gradient's finiteness read together.
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    if not bool(torch.stack([torch.isfinite(loss.detach())] + [torch.isfinite(g).all() for g in gradients]).all()):
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at {where}; lower the lr")
        name = next(name for name, p in model.named_parameters()
                    if p.grad is not None and not bool(torch.isfinite(p.grad).all()))
        raise FloatingPointError(f"the gradient of {name} became non-finite at {where} (the loss was "
                                 f"{loss.item():.4g}); the weights were not updated; lower the lr")
    for optimizer in optimizers:
        optimizer.step()
    if hasattr(model, "after_optimizer_step"):
        model.after_optimizer_step()
    return loss


def check_finite_weights(model: nn.Module, when: str) -> None:
    """Raise ``FloatingPointError`` naming the first parameter or buffer of ``model`` holding NaN or inf."""
    for name, tensor in model.state_dict().items():
        if torch.is_tensor(tensor) and (tensor.is_floating_point() or tensor.is_complex()) \
                and not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(f"{name} holds non-finite values {when}; training stopped and nothing "
                                     f"was written; lower the lr")


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 512, device: Optional[torch.device] = None,
            progress: bool = True) -> dict:
    """Every output branch of ``model`` on ``dataset`` as numpy arrays, plus ``labels`` and ``indices``."""
    if len(dataset) == 0:
        raise ValueError("predict: the dataset is empty")
    device = device or next(model.parameters()).device
    model.eval()
    outputs: dict[str, list] = {}
    for images, labels, indices in tqdm(DataLoader(dataset, batch_size=batch_size), desc="predict",
                                        leave=False, disable=progress_disabled(progress)):
        images = images.to(device)
        out = model.predict_step(images, indices) if hasattr(model, "predict_step") else model(images)
        out = out if isinstance(out, dict) else {"logits": out}
        out = {**out, "labels": labels, "indices": indices}
        for key, value in out.items():
            outputs.setdefault(key, []).append(value.detach().cpu().numpy())
    return {key: np.concatenate(value) for key, value in outputs.items()}


def save_checkpoint(path: str | Path, model: nn.Module, optimizers: list, epoch: int, history: History,
                    config: TrainConfig) -> Path:
    """Write model, optimizers, epoch, history and settings to ``path`` (temp file, then rename).

    Everything is tensors and plain data, so :func:`load_checkpoint` reads it with ``weights_only=True``.
    """
    return atomic_save({
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizers": [opt.state_dict() for opt in optimizers],
        "epoch": epoch,
        "history": asdict(history),
        "config": asdict(config),
    }, path)


def read_checkpoint(path: str | Path) -> dict:
    """The content of a checkpoint written by :func:`save_checkpoint`, checked entry by entry (nothing is loaded
    into a model). Errors name the file and the entry."""
    state = safe_load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an ltcore checkpoint (no 'format: {CHECKPOINT_FORMAT}' entry)")
    missing = [key for key in ("model", "optimizers", "epoch", "history", "config") if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} is damaged: it has no {', '.join(map(repr, missing))} entry")
    history = state["history"]
    if not isinstance(state["model"], dict) or not isinstance(state["optimizers"], list) \
            or not isinstance(state["config"], dict) or not isinstance(history, dict) \
            or not isinstance(history.get("epochs"), list) or not isinstance(history.get("seconds"), (int, float)):
        raise ValueError(f"checkpoint {path} is damaged: its entries do not have the types save_checkpoint writes")
    try:
        check_int("epoch", state["epoch"], 0)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path} is damaged: {exc}") from None
    return state


def check_same_run(path: str | Path, state: dict, config: TrainConfig) -> None:
    """Raise ``ValueError`` unless ``config`` may resume the run saved in ``state`` (:func:`fit`'s rule)."""
    try:
        saved = override(TrainConfig(), state["config"])
    except (KeyError, TypeError, ValueError) as exc:
        reason = exc.args[0] if exc.args else exc
        raise ValueError(f"checkpoint {path} holds settings this trainer cannot read: {reason}") from None
    differing = [f.name for f in fields(TrainConfig)
                 if f.name not in FREE_ON_RESUME and getattr(saved, f.name) != getattr(config, f.name)]
    if differing:
        changes = "; ".join(f"{key} {getattr(saved, key)!r} in the file, {getattr(config, key)!r} now"
                            for key in differing)
        raise ValueError(f"checkpoint {path} was written by a run with other settings ({changes}); resume with "
                         f"the file's settings or train into another checkpoint_path (only "
                         f"{', '.join(FREE_ON_RESUME)} may change on resume)")
    done = state["epoch"] + 1
    if config.epochs < done:
        raise ValueError(f"checkpoint {path} has {done} epochs done but config.epochs is {config.epochs}; a "
                         f"resumed run can extend the epochs, not cut them (use epochs >= {done})")


def restore_checkpoint(path: str | Path, state: dict, model: nn.Module, optimizers: Optional[list] = None) -> None:
    """Load a :func:`read_checkpoint` result into ``model`` and ``optimizers``; errors name the file."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit this model: {exc}") from exc
    if optimizers is not None:
        if len(optimizers) != len(state["optimizers"]):
            raise ValueError(f"{path} holds {len(state['optimizers'])} optimizer states, the model uses "
                             f"{len(optimizers)}")
        try:
            for optimizer, opt_state in zip(optimizers, state["optimizers"]):
                optimizer.load_state_dict(opt_state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{path} holds optimizer states that do not fit this model's optimizers: {exc}") \
                from exc


def load_checkpoint(path: str | Path, model: nn.Module, optimizers: Optional[list] = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizers``); returns its
    content. Errors name the file and the mismatching keys; a file holding anything but tensors and plain
    data is refused unread (:func:`ltcore.io.safe_load`)."""
    state = read_checkpoint(path)
    restore_checkpoint(path, state, model, optimizers)
    return state
