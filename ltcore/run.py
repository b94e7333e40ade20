"""The train command: one training run of a baseline, IEM or RAC from a run config, resumable bit for bit
(issue 13).

``python -m ltcore train --config NAME_OR_FILE --output DIR [--max-steps N] [--resume] [--set key=value ...]``
calls :func:`train_run`. The config (:mod:`ltcore.runconfig`) says the data, the model, the loss, the optimizer
and its schedule; this module builds them, trains step by step, and writes into ``DIR``:

* ``last.pt``, the newest checkpoint: a dict loadable with ``torch.load(..., weights_only=True)`` holding
  ``model`` (the model's state dict: for IEM, the memories' slots, keys, values and Adam moments included),
  ``optimizers`` (every optimizer's state), ``step`` (optimizer steps done), ``epoch`` and ``position`` (the
  epoch in progress and how many of its batches are done: the sampler's position), ``rng`` (the torch, NumPy
  and Python generators' states), ``config`` (the run config), ``index`` (RAC: the retrieval index's identity;
  None otherwise) and ``format``. It is written every
  ``checkpoint_every`` steps, at the end of every epoch, at ``--max-steps``, and when the process receives
  SIGTERM (then the run stops, exit status 143). A checkpoint is written to a temporary file and renamed, so
  the previous one stays whole until the new one is.
* ``metrics.jsonl``: one JSON object per line; ``{"step", "epoch", "loss", "lr"}`` every ``log_every`` steps
  (the loss is the mean over the steps since the last line, accumulated on the device: the only
  synchronisation is at these lines), and ``{"step", "epoch", "val_top1"}`` after each epoch's validation.
  A resumed run first drops the lines of steps after its checkpoint (they are trained again).
* ``results.json`` at the end: the shot-group accuracies on the test split (``ltcore.results.shot_row``), the
  steps done and whether the schedule was complete.

Resume. The data order of epoch ``e`` is a permutation drawn from a generator seeded with ``seed * 100_003 +
e`` (as :func:`ltcore.train.fit`), so the checkpoint's ``position`` says which batches of it are left; every
random generator is restored, so a run stopped at any step (``kill -9`` included) and resumed from its last
checkpoint computes what the uninterrupted run computes: tested bitwise (``torch.equal``) on the final model,
optimizer and memory states for a baseline, IEM and RAC. A resumed run must have the same config as the checkpoint
(an error names the keys that differ), except :data:`FREE_ON_RESUME`; ``--max-steps`` may change.

The loop (``[loop]`` of the config): ``workers`` DataLoader processes, each single-threaded, with pinned memory
and non-blocking copies on CUDA; every item's augmentation is seeded by (seed, epoch, index) (:class:`ItemSeeded`),
so the batches are the same with any number of workers (tested) and a resumed run needs no worker state. The
loss is accumulated on the device and read every ``log_every`` steps. ``autocast = "bf16"`` runs the steps under
bfloat16 autocast on CUDA (ignored on a CPU, with a note); ``channels_last`` and ``compile``
(:meth:`torch.nn.Module.compile`, which keeps the state-dict keys) are switches. A non-finite loss or gradient
stops the run naming the epoch and step (:func:`ltcore.train.optimization_step`); the last good checkpoint stays.

RAC (:func:`build_rac`): E embeds the training images, the index is built over them, T and the neighbour tables
are set up, and B is initialised from the seed; the checkpoint also holds the index's identity (factory string,
faiss version, sha256 of the key vectors), and a resumed run rebuilds the index and refuses to go on if the
identity differs. AdamW (RAC App. B) or SGD; the step or the cosine schedule (:func:`ltcore.train.lr_at`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ltcore.checks import check_int
from ltcore.config import get_device, progress_disabled, seed_everything
from ltcore.data.registry import build_dataset
from ltcore.io import atomic_save, atomic_write, safe_load
from ltcore.losses import build_loss
from ltcore.metrics import shot_accuracy
from ltcore.results import shot_row
from ltcore.runconfig import ConfigError, RunConfig, iem_model_kwargs
from ltcore.train import (History, TrainConfig, check_finite_weights, default_optimizers, fit, lr_at,
                          optimization_step, predict)

__all__ = ["CHECKPOINT", "METRICS", "RESULTS", "RUN_FORMAT", "ItemSeeded", "Resumable", "Terminated", "build_model",
           "epoch_loader", "fit_or_resume", "fit_resumable", "notebook_run", "rac_settings", "retrieval_setup",
           "single_threaded_worker", "train_config", "train_run"]

RUN_FORMAT = "ltcore-run-v1"
CHECKPOINT, METRICS, RESULTS = "last.pt", "metrics.jsonl", "results.json"
# Config keys a resumed run may change: they do not change what is computed (``loop``: workers, switches, logging).
FREE_ON_RESUME = ("description", "device", "checkpoint_every", "loop")
# Fault injection for the resume tests: "STEP:KILL" or "STEP:TERM" makes the process send itself that signal in
# the middle of step STEP (1-based), after its batch is loaded and before any weight changes (KILL is `kill -9`).
SIGNAL_AT_STEP_VARIABLE = "LTCORE_SIGNAL_AT_STEP"


class Terminated(RuntimeError):
    """The run received SIGTERM; its checkpoint was written (the message says where and at which step)."""


def build_model(config: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The config's baseline or IEM model, freshly initialised from the current torch seed: ``PlainClassifier``
    (baseline; with LDAM's cosine classifier under ``loss.name = "ldam_drw"``, as
    :data:`ltcore.experiments.BASELINES`) or ``IEMClassifier`` (iem) over an ``ltcore.models`` backbone. (RAC:
    :func:`build_rac`.)"""
    from ltcore.models import PlainClassifier, build_backbone

    backbone = build_backbone(config.model.backbone, in_chans, pretrained=config.model.pretrained)
    if config.family == "iem":
        from ltcore.iem.model import IEMClassifier

        return IEMClassifier(backbone, num_classes, **iem_model_kwargs(config.iem))
    return PlainClassifier(backbone, num_classes, config.loss.name == "ldam_drw")


def build_rac(config: RunConfig, splits, progress: bool = True) -> tuple[nn.Module, dict]:
    """RAC's classifier for ``config`` (:func:`ltcore.rac.train.build_rac_classifier`: E and the index over the
    training keys, T, the precomputed neighbour tables, B from the config's seed) and the index's identity: its
    factory string, the faiss version and the sha256 of the key vectors. A resumed run rebuilds the index and
    checks that identity against its checkpoint."""
    import faiss

    from ltcore.rac.train import build_rac_classifier

    setup = retrieval_setup(config, splits, progress)
    keys = np.ascontiguousarray(setup.embeddings["train"], dtype=np.float32)   # [N_train, D]
    identity = {"factory": config.rac.index, "faiss": faiss.__version__,
                "keys_sha256": hashlib.sha256(keys.tobytes()).hexdigest(), "keys": list(keys.shape)}
    model = build_rac_classifier(splits, rac_settings(config), setup=setup, mode=config.rac.mode,
                                 backbone=config.model.backbone, seed=config.seed, pretrained=config.model.pretrained)
    return model, identity


def rac_settings(config: RunConfig):
    """The :class:`ltcore.rac.train.RACSettings` of a RAC config (the notebooks' full profile uses it too). With
    ``rac.pretrained_encoders = false`` CLIP's T has random weights."""
    from ltcore.rac.train import RACSettings

    rac, options = config.rac, config.loss.options
    text_options = {"pretrained": None} if rac.text_encoder == "clip" and not rac.pretrained_encoders else {}
    return RACSettings(text_encoder=rac.text_encoder, k=rac.k, drop_self=rac.drop_self, precompute=rac.precompute,
                       train_transformer=rac.train_transformer, tau=options.get("tau", 1.0),
                       label_smoothing=options.get("label_smoothing", 0.0), optimizer=config.optimizer.name,
                       lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay,
                       transformer_lr=rac.transformer_lr, text_options=text_options)


def retrieval_setup(config: RunConfig, splits, progress: bool = True):
    """E (pretrained unless ``rac.pretrained_encoders = false``), the index over the training keys and the splits'
    embeddings for a RAC config (:func:`ltcore.rac.train.build_retrieval_setup`)."""
    from ltcore.rac.image_encoders import build_image_encoder
    from ltcore.rac.train import build_retrieval_setup

    rac = config.rac
    encoder = build_image_encoder(rac.image_encoder, pretrained=rac.pretrained_encoders, image_size=rac.image_size,
                                  seed=config.seed)
    return build_retrieval_setup(splits, encoder, index_kind="flat" if rac.index == "Flat" else "hnsw",
                                 progress=progress)


def train_config(config: RunConfig, progress: bool = False) -> TrainConfig:
    """The shared trainer's settings for ``config`` (the parts :func:`ltcore.train.lr_at` and the optimizers
    read)."""
    schedule, optimizer = config.schedule, config.optimizer
    return TrainConfig(epochs=schedule.epochs, batch_size=schedule.batch_size, lr=optimizer.lr,
                       momentum=optimizer.momentum, weight_decay=optimizer.weight_decay,
                       lr_milestones=tuple(schedule.milestones), lr_gamma=schedule.lr_decay,
                       warmup_epochs=schedule.warmup_epochs, lr_schedule=schedule.lr_schedule, seed=config.seed,
                       device=config.device, progress=progress)


def check_trainable(config: RunConfig) -> None:
    """Refuse, naming the key, a config this command cannot train yet (module docstring, *Not yet here*)."""
    where = config.source or "the config"
    if config.family != "rac" and config.optimizer.name != "sgd":
        raise ConfigError(f"{where}: optimizer.name {config.optimizer.name!r}: the train command trains "
                          f"{config.family} with SGD (IEM 4.2)")
    if config.norm != "batch":
        raise ConfigError(f"{where}: norm {config.norm!r}: GroupNorm comes with the multi-GPU issue; use "
                          f"norm = 'batch'")
    if config.family == "rac":
        if config.loss.name not in ("lace", "logit_adjusted"):
            raise ConfigError(f"{where}: loss.name {config.loss.name!r}: RAC trains both branches under one LACE "
                              f"loss (RAC 3.3); use 'lace'")
        if config.rac.index not in ("Flat", "HNSW32"):
            raise ConfigError(f"{where}: rac.index {config.rac.index!r}: the retrieval set-up builds 'HNSW32' "
                              f"(the paper's M = 32) or 'Flat'")


def train_run(config: RunConfig, output: str | os.PathLike, *, max_steps: Optional[int] = None,
              resume: bool = False, progress: bool = True) -> dict:
    """Train ``config`` into the folder ``output`` (module docstring); returns the results record.

    ``max_steps``: stop after this many optimizer steps in all (the schedule is still the config's, so a run
    stopped there and resumed with a larger ``max_steps`` goes on as one run). ``resume``: continue from
    ``output/last.pt`` if it exists (else start afresh); without it an ``output`` that already holds a run is an
    error, never overwritten. Raises :class:`Terminated` after writing a checkpoint on SIGTERM, and
    ``FloatingPointError`` naming the step on a non-finite loss (the last good checkpoint stays).
    """
    check_trainable(config)
    max_steps = None if max_steps is None else check_int("max_steps", max_steps, 1)
    output = _check_output(output, resume)
    trainer = train_config(config, progress)
    generator = seed_everything(config.seed)
    splits = build_dataset(config.data.name, **config.data.options)
    if config.family == "rac":
        model, identity = build_rac(config, splits, progress)
    else:
        model, identity = build_model(config, splits.num_classes, splits.train[0][0].shape[0]), None
    loss_fn = build_loss(config.loss.name, splits.class_counts, **loss_options(config, trainer))
    started = time.perf_counter()
    _, complete, steps = _fit(model, splits, loss_fn, trainer, config, output, identity, generator, max_steps, resume)
    device = get_device(config.device)
    with _evaluating_on(model, "test"):
        predictions = predict(model, splits.test, trainer.eval_batch_size, device, progress=progress)
    shots = shot_accuracy(predictions["logits"].argmax(1), predictions["labels"], splits.class_counts)
    record = {**shot_row(splits.name, config.name or config.family, shots, time.perf_counter() - started),
              "steps": steps, "complete": complete}
    atomic_write(output / RESULTS, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return record


@dataclasses.dataclass(frozen=True)
class Resumable:
    """Train through the train command's loop into ``output`` as the run ``config`` (:func:`fit_resumable`).

    The library's training functions (:func:`ltcore.experiments.train_baseline`, :func:`ltcore.iem.train.train_iem`,
    :func:`ltcore.rac.train.train_rac`) take one as ``resumable=``: the notebooks' full profile trains the paper's
    models that way, checkpointed and resumable like ``python -m ltcore train``, from the named config that sets
    their sizes. ``config`` is checked against the checkpoint on resume and gives the seed, the checkpoint interval
    and the loop switches; the model, the loss and the schedule are the caller's (``trainer``)."""

    config: RunConfig
    output: Path
    max_steps: Optional[int] = None


def notebook_run(name: str, config: RunConfig) -> Resumable:
    """The :class:`Resumable` a notebook's full profile trains its run ``name`` as: into ``train/<name>`` under
    the output folder (:func:`ltcore.paths.output_dir`: ``runs/<profile>/`` under ``reproduce``). Running the
    notebook again continues every unfinished run from its last checkpoint and reloads the finished ones' weights
    by training no further step."""
    from ltcore.paths import output_dir

    return Resumable(config, output_dir() / "train" / name)


def fit_resumable(model: nn.Module, splits, loss_fn, trainer: TrainConfig, run: Resumable) -> History:
    """Train ``model`` on ``splits.train`` with the train command's loop (checkpoints every
    ``run.config.checkpoint_every`` steps and at every epoch's end into ``run.output/last.pt``, the metrics log,
    SIGTERM handling, per-epoch validation on ``splits.val``), continuing from ``run.output/last.pt`` when it exists:
    the same function :func:`train_run` trains with. Returns a :class:`~ltcore.train.History` read from the metrics
    log (per epoch: the mean of the losses logged in it, NaN if ``loop.log_every`` logged none, the lr,
    ``val_top1``) and the training seconds of every process that trained the run. ``trainer`` must have
    ``run.config``'s seed (the data order's)."""
    if trainer.seed != run.config.seed:
        raise ValueError(f"trainer seed {trainer.seed} differs from the run config's seed {run.config.seed} "
                         f"({run.config.source or 'the config'}): set the config's seed to the run's")
    output = _check_output(run.output, resume=True)
    history, _, _ = _fit(model, splits, loss_fn, trainer, run.config, output, None, torch.Generator(),
                         run.max_steps, resume=True)
    return history


def fit_or_resume(model: nn.Module, splits, loss_fn, trainer: TrainConfig, val_set=None,
                  resumable: Optional[Resumable] = None) -> History:
    """Train ``model`` on ``splits.train``, validating on ``val_set`` (or not, if None): with the teaching loop
    (:func:`ltcore.train.fit`), or, given ``resumable``, with the train command's (:func:`fit_resumable`). The
    library's training functions call it, so that both loops see the same validation split; RAC reads ``val``'s
    neighbours while it validates."""
    if resumable is None:
        with _evaluating_on(model, "val"):
            return fit(model, splits.train, loss_fn, trainer, val_set=val_set)
    return fit_resumable(model, dataclasses.replace(splits, val=val_set), loss_fn, trainer, resumable)


def loss_options(config: RunConfig, trainer: TrainConfig) -> dict:
    """The loss's options from the config; LDAM-DRW re-weights from 80% of the epochs on unless the config says
    (as :func:`ltcore.experiments.loss_for`)."""
    options = dict(config.loss.options)
    if config.loss.name == "ldam_drw":
        options.setdefault("drw_epoch", int(0.8 * trainer.epochs))
    return options


def _check_output(output, resume: bool) -> Path:
    output = Path(output)
    if (output / CHECKPOINT).exists() and not resume:
        raise FileExistsError(f"{output} already holds a run ({CHECKPOINT}); pass --resume to continue it or "
                              f"choose another --output folder")
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    return output


def _fit(model, splits, loss_fn, trainer: TrainConfig, config: RunConfig, output: Path, identity: Optional[dict],
         generator: torch.Generator, max_steps: Optional[int], resume: bool) -> tuple[History, bool, int]:
    """Move ``model`` to the config's device, build its optimizers, restore ``output/last.pt`` if resuming, train
    (:func:`_train`); returns the history, whether the schedule is complete, and the steps done."""
    device = get_device(config.device)
    model = model.to(device)
    if config.loop.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = model.configure_optimizers(trainer) if hasattr(model, "configure_optimizers") \
        else default_optimizers(model, trainer)
    checkpoint = output / CHECKPOINT
    state = {"step": 0, "epoch": 0, "position": 0, "index": identity, "seconds": 0.0}
    if resume and checkpoint.exists():
        state = _restore(checkpoint, config, model, optimizers, identity)
        _truncate_metrics(output / METRICS, state["step"])
        print(f"resumed from {checkpoint}: step {state['step']}, epoch {state['epoch'] + 1}, "
              f"{state['position']} batches of it done", flush=True)
    if config.loop.compile:
        model.compile()  # in place: the state dict keeps its keys, so checkpoints do not depend on the switch
    if config.loop.autocast != "off" and device.type != "cuda":
        print(f"loop.autocast {config.loop.autocast!r} is for CUDA; training in float32 on {device}", flush=True)
    state["started"] = time.perf_counter() - state["seconds"]
    with _sigterm_sets_flag() as terminated:
        complete = _train(model, optimizers, loss_fn, splits, trainer, config, output, state, generator, device,
                          max_steps, terminated)
    return _history(output / METRICS, time.perf_counter() - state["started"]), complete, state["step"]


def _history(metrics: Path, seconds: float) -> History:
    """Per epoch: the mean of the losses logged in it, its lr and validation accuracy (metrics log)."""
    epochs: dict[int, dict] = {}
    for line in metrics.read_text(encoding="utf-8").splitlines() if metrics.exists() else []:
        row = json.loads(line)
        epoch = epochs.setdefault(row["epoch"], {"epoch": row["epoch"], "losses": []})
        if "loss" in row:
            epoch["losses"].append(row["loss"])
            epoch["lr"] = row["lr"]
        if "val_top1" in row:
            epoch["val_top1"] = row["val_top1"]
    rows = []
    for number in sorted(epochs):
        row = epochs[number]
        losses = row.pop("losses")
        rows.append({**row, "loss": float(np.mean(losses)) if losses else float("nan")})
    return History(rows, seconds)


def _train(model, optimizers, loss_fn, splits, trainer: TrainConfig, config: RunConfig, output: Path, state: dict,
           generator: torch.Generator, device, max_steps, terminated) -> bool:
    """The loop; ``state`` (step, epoch, position) is updated in place. True when the schedule is complete."""
    signal_step, signal_name = _injected_signal()
    checkpoint_every, log_every = config.checkpoint_every, config.loop.log_every
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.loop.autocast == "bf16" and device.type == "cuda")
    memory_format = torch.channels_last if config.loop.channels_last else torch.contiguous_format
    total = _total_steps(splits, trainer)
    if max_steps is not None and state["step"] >= max_steps:  # resumed past --max-steps: nothing to train
        return state["step"] == total
    for epoch in range(state["epoch"], trainer.epochs):
        generator.manual_seed(config.seed * 100_003 + epoch)            # the epoch's data order
        order = torch.randperm(len(splits.train), generator=generator)   # [N]
        batches = [batch.tolist() for batch in order.split(trainer.batch_size)][state["position"]:]
        if state["position"] == 0:  # a fresh epoch; a resumed one continues its restored generators
            torch.manual_seed(config.seed * 100_003 + epoch)
        for group in optimizers[0].param_groups:
            group["lr"] = lr_at(epoch, trainer)
        model.train()
        loss_sum, logged = torch.zeros((), device=device), 0                # accumulated on the device
        loader = epoch_loader(splits.train, batches, config.seed, epoch, config.loop.workers,
                              pin_memory=device.type == "cuda")
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{trainer.epochs}", leave=False, mininterval=1.0,
                   disable=progress_disabled(trainer.progress))
        for images, labels, indices in bar:
            images = images.to(device, non_blocking=True)
            if images.dim() == 4:
                images = images.contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            if state["step"] + 1 == signal_step:
                os.kill(os.getpid(), getattr(signal, f"SIG{signal_name}"))
            with autocast:
                loss = optimization_step(model, optimizers, images, labels, indices, loss_fn, epoch,
                                         step=state["position"] + 1)
            loss_sum += loss.detach()
            logged += 1
            state["step"] += 1
            state["position"] += 1
            if state["step"] % log_every == 0:
                mean_loss = loss_sum.item() / logged
                _log(output, {"step": state["step"], "epoch": epoch + 1, "loss": mean_loss,
                              "lr": lr_at(epoch, trainer)})
                bar.set_postfix(step=state["step"], loss=f"{mean_loss:.3f}", refresh=False)
                loss_sum.zero_()
                logged = 0
            stop = max_steps is not None and state["step"] >= max_steps
            if state["step"] % checkpoint_every == 0 or stop or terminated():
                _save(output / CHECKPOINT, model, optimizers, state, epoch, config)
            if terminated():
                raise Terminated(f"SIGTERM: checkpoint {output / CHECKPOINT} written at step {state['step']}; "
                                 f"continue with --resume")
            if stop and state["step"] < total:  # at the schedule's end the epoch's validation still runs
                return False
        check_finite_weights(model, f"after epoch {epoch + 1}")
        if splits.val is not None:
            with _evaluating_on(model, "val"):
                val = predict(model, splits.val, trainer.eval_batch_size, device, progress=False)
            _log(output, {"step": state["step"], "epoch": epoch + 1,
                          "val_top1": float((val["logits"].argmax(1) == val["labels"]).mean())})
        state["epoch"], state["position"] = epoch + 1, 0
        _save(output / CHECKPOINT, model, optimizers, state, epoch + 1, config)
    return True


class ItemSeeded(Dataset):
    """``dataset`` whose item ``i`` in epoch ``epoch`` draws its augmentation from torch's generator seeded with
    ``(seed, epoch, i)``, inside :func:`torch.random.fork_rng` (the process's own stream is left as it was).
    An item is then the same whichever process loads it, so batches do not depend on the number of workers."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 100_003 + self.epoch) * 1_000_003 + int(i))
            return self.dataset[i]


def epoch_loader(dataset: Dataset, batches: list, seed: int, epoch: int, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """The DataLoader of one epoch: ``batches`` (lists of indices, in order) of :class:`ItemSeeded` items, loaded
    by ``workers`` processes (0: this one), each single-threaded. The loader lives for one epoch, so its workers
    are not kept across epochs (the items' seeds name the epoch). It has its own generator: a DataLoader
    otherwise draws a seed from the global one, which a resumed run would then draw twice in its first epoch."""
    workers = check_int("workers", workers, 0)
    return DataLoader(ItemSeeded(dataset, seed, epoch), batch_sampler=batches, num_workers=workers,
                      pin_memory=pin_memory, worker_init_fn=single_threaded_worker if workers else None,
                      generator=torch.Generator())


def single_threaded_worker(worker_id: int) -> None:
    """``worker_init_fn``: one torch thread per worker process (the workers, not threads, share the cores)."""
    torch.set_num_threads(1)


def _evaluating_on(model: nn.Module, split: str):
    """RAC reads a split's precomputed neighbours while it predicts that split; other models need nothing."""
    return model.evaluating_on(split) if hasattr(model, "evaluating_on") else contextlib.nullcontext()


def _injected_signal() -> tuple[int, str]:
    """(step, "KILL" or "TERM") from :data:`SIGNAL_AT_STEP_VARIABLE`, or (0, "") when it is not set."""
    text = os.environ.get(SIGNAL_AT_STEP_VARIABLE, "")
    if not text:
        return 0, ""
    step, _, name = text.partition(":")
    if not step.isdigit() or name not in ("KILL", "TERM"):
        raise ValueError(f"{SIGNAL_AT_STEP_VARIABLE} must be STEP:KILL or STEP:TERM, got {text!r}")
    return int(step), name


def _total_steps(splits, trainer: TrainConfig) -> int:
    return trainer.epochs * math.ceil(len(splits.train) / trainer.batch_size)


# ------------------------------------------------------------------------------------------ checkpoints
def _rng_state() -> dict:
    """Every generator a step may draw from, as tensors and plain data (``weights_only`` loads them)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_record(config: RunConfig) -> dict:
    return json.loads(json.dumps({key: value for key, value in dataclasses.asdict(config).items()
                                  if key != "source"}))


def _save(path: Path, model, optimizers, state: dict, epoch: int, config: RunConfig) -> None:
    check_finite_weights(model, f"at step {state['step']}")
    atomic_save({"format": RUN_FORMAT, "model": model.state_dict(),
                 "optimizers": [optimizer.state_dict() for optimizer in optimizers],
                 "step": state["step"], "epoch": epoch, "position": state["position"], "rng": _rng_state(),
                 "config": _config_record(config), "index": state["index"],
                 "seconds": time.perf_counter() - state["started"]}, path)


def _restore(path: Path, config: RunConfig, model, optimizers, identity: Optional[dict]) -> dict:
    """Load ``path`` into the model, optimizers and generators; returns its step, epoch and position (and the
    index identity, checked equal to ``identity``, the rebuilt index's)."""
    saved = safe_load(path, "checkpoint")
    missing = [key for key in ("format", "model", "optimizers", "step", "epoch", "position", "rng", "config")
               if not isinstance(saved, dict) or key not in saved]
    if missing or saved["format"] != RUN_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of the train command (format {RUN_FORMAT}); missing "
                         f"{missing or 'nothing, but the format differs'}")
    ours = _config_record(config)
    differing = sorted(key for key in (set(ours) | set(saved["config"])) - set(FREE_ON_RESUME)
                       if ours.get(key) != saved["config"].get(key))
    if differing:
        raise ValueError(f"{path} was written by a run with another config (differs in: {', '.join(differing)}); "
                         f"resume with the same config, or train into another --output folder")
    if saved.get("index") != identity:
        raise ValueError(f"{path} was trained with another retrieval index ({saved.get('index')}) than the one "
                         f"rebuilt now ({identity}): the encoder, its weights or the data changed")
    try:
        model.load_state_dict(saved["model"])
        for optimizer, optimizer_state in zip(optimizers, saved["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)
        _set_rng_state(saved["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} does not fit this run's model and optimizers: {exc}") from None
    seconds = saved.get("seconds", 0.0)  # training seconds so far (absent from the first checkpoints' format)
    return {"step": check_int("step", saved["step"], 0), "epoch": check_int("epoch", saved["epoch"], 0),
            "position": check_int("position", saved["position"], 0), "index": identity,
            "seconds": float(seconds) if isinstance(seconds, (int, float)) else 0.0}


# ------------------------------------------------------------------------------------------ the log
def _log(output: Path, row: dict) -> None:
    with open(output / METRICS, "a", encoding="utf-8") as log:
        log.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines of steps after ``step`` (a resumed run trains them again); a line that is not JSON (the
    last one, cut by a kill) is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept), encoding="utf-8"))


class _sigterm_sets_flag:
    """Within the block, SIGTERM sets a flag (read by calling the object the block yields) instead of killing
    the process, so that the loop can write its checkpoint first. Outside the main thread, nothing changes."""

    def __enter__(self):
        self.received = False
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            pass
        return lambda: self.received

    def _handle(self, signum, frame) -> None:
        self.received = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
