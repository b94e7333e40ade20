"""A small, device-agnostic trainer shared by the baselines, IEM and RAC.

``fit`` runs SGD with momentum and a step schedule (the papers' recipe: IEM 4.2,
"SGD with momentum of 0.9 ... learning rate annealed at epoch 30 and 60"), with a
progress bar, seeding, per-epoch validation and atomic checkpoints.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ltcore.config import get_device, progress_disabled, seed_everything
from ltcore.io import atomic_save, safe_load


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple = ()  # epochs (0-based) at which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: int = 0  # linear lr warm-up over the first epochs
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 512
    progress: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"epochs, batch_size and eval_batch_size must be positive: {self}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


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
    """The scheduled lr of an epoch: linear warm-up, then steps at ``lr_milestones``."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    return config.lr * config.lr_gamma ** sum(epoch >= m for m in config.lr_milestones)


def fit(model: nn.Module, train_set: Dataset, loss_fn: Callable, config: TrainConfig = TrainConfig(),
        val_set: Optional[Dataset] = None, checkpoint_path: Optional[str | Path] = None,
        resume: bool = False) -> History:
    """Train ``model`` on ``train_set`` (items ``(image, label, index)``); returns the per-epoch history.

    With ``checkpoint_path`` the state is written (atomically) after every epoch; with ``resume``
    training continues from that file when it exists.
    """
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    if val_set is not None and len(val_set) == 0:
        raise ValueError("val_set is empty (pass val_set=None to train without validation)")
    device = get_device(config.device)
    generator = seed_everything(config.seed)
    model.to(device)
    optimizers = model.configure_optimizers(config) if hasattr(model, "configure_optimizers") \
        else default_optimizers(model, config)
    history, start_epoch = History(), 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, model, optimizers)
        history, start_epoch = History(**state["history"]), state["epoch"] + 1
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
        for images, labels, indices in bar:
            images, labels = images.to(device), labels.to(device)
            loss = optimization_step(model, optimizers, images, labels, indices, loss_fn, epoch)
            total += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{total / seen:.3f}", refresh=False)  # shown at the next (throttled) refresh
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
                      indices: torch.Tensor, loss_fn: Callable, epoch: int) -> torch.Tensor:
    """One step of :func:`fit` on a batch already on the model's device: the loss (the model's
    ``training_step`` if it has one), zero_grad, backward, every optimizer's step, then the model's
    ``after_optimizer_step``. Returns the loss."""
    if hasattr(model, "training_step"):
        loss = model.training_step(images, labels, indices, loss_fn, epoch)
    else:
        loss = call_loss(loss_fn, _output_logits(model(images)), labels, epoch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower the lr")
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    if hasattr(model, "after_optimizer_step"):
        model.after_optimizer_step()
    return loss


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
    """Write model, optimizers, epoch and history to ``path`` (temp file, then rename)."""
    return atomic_save({
        "format": "ltcore-checkpoint-v1",
        "model": model.state_dict(),
        "optimizers": [opt.state_dict() for opt in optimizers],
        "epoch": epoch,
        "history": asdict(history),
        "config": asdict(config),
    }, path)


def load_checkpoint(path: str | Path, model: nn.Module, optimizers: Optional[list] = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; errors name the file and the mismatching keys."""
    state = safe_load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != "ltcore-checkpoint-v1":
        raise ValueError(f"{path} is not an ltcore checkpoint (no 'format: ltcore-checkpoint-v1' entry)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit this model: {exc}") from exc
    if optimizers is not None:
        if len(optimizers) != len(state["optimizers"]):
            raise ValueError(f"{path} holds {len(state['optimizers'])} optimizer states, the model uses "
                             f"{len(optimizers)}")
        for optimizer, opt_state in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(opt_state)
    return state
