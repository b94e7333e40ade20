"""Benchmark: training step time of RAC over its base branch alone (RAC Sec. 4.8, Table 5).

Paper: Long et al., CVPR 2022, Sec. 4.8: "a lookup over a sample index of size >10M can be performed for each
training sample with negligible overhead, although the additional label encoding (and subsequent backprop),
does increase the training time by a factor of 1.5-2x", and Table 5 (Places365-LT, k = 50, s/epoch): base only
23.6, RAC with the random bag of words ("Rand.") 28.3 (1.20x), RAC with CLIP's text encoder 44.3 (1.88x).

Targets (quick setting): RAC with the bag-of-words T <= 1.2x the base-only step; RAC with a transformer T
(MiniLM) <= 1.5x. Each row says how T runs (:attr:`ltcore.rac.classifier.RACClassifier.text_encoder_mode`:
"frozen, cached" = T's transformer frozen and its per-query embeddings cached; "frozen" = run on every batch
without gradient; "fine-tuned" = run and back-propagated on every batch, the paper's) and where the neighbours
come from ("precomputed" = looked up by dataset index; "on-line" = E embeds each augmented batch and the HNSW
index is searched, the paper's).

Method: one process, one thread (``--threads``), base branch resnet10_tiny, batch 128, k = 30, Fashion-MNIST-LT
(``--quick``: its head class cut to 250 images, ~600 training images, so that the one-off caches take seconds;
the step itself does not depend on the training-set size). Every configuration is built first (its one-off
costs reported), then one training step (:func:`ltcore.train.optimization_step`: the loss, backward,
optimizer steps, what :func:`ltcore.train.fit` does per batch, on batches already in memory, so data loading,
identical for all, is left out) is timed round-robin over the configurations, the same batch for all in a
round; a configuration's time is the median over its rounds, in wall-clock and in this process's CPU time (the
CPU time is what an idle machine would show; the wall time includes waiting for a shared CPU). Every configuration uses the same AdamW
optimizer (``RACSettings()``'s default), so the ratios isolate the retrieval branch.

Run: ``python -m ltcore bench rac [--quick] [--rounds N] [--threads N] [--no-finetune]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ltcore.config import seed_everything
from ltcore.data import build_dataset
from ltcore.paper_tables import RAC_TABLE5
from ltcore.rac.classifier import RACClassifier
from ltcore.rac.train import RACSettings, build_rac_classifier, build_retrieval_setup
from ltcore.train import TrainConfig, optimization_step

TARGETS = {"bow_random": 1.2, "minilm": 1.5}
PAPER_RATIOS = {"Rand.": 28.3 / 23.6, "CLIP": 44.3 / 23.6}


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: a label, the RAC mode and settings, and how many rounds it is timed."""

    label: str
    mode: str
    settings: RACSettings
    slow: bool = False  # timed in fewer rounds (a fine-tuned transformer step takes seconds)


def cases(k: int, finetune: bool) -> list[Case]:
    """The configurations, base first. Uncached MiniLM rows skip centring T's head (``centre_text=False``), which
    would encode every training query once more; the step is the same either way."""
    bow = RACSettings(text_encoder="bow_random", k=k)
    minilm = RACSettings(text_encoder="minilm", k=k)
    listed = [
        Case("base only", "base", bow),
        Case("RAC, Rand. BoW", "rac", bow),
        Case("RAC, Rand. BoW", "rac", RACSettings(text_encoder="bow_random", k=k, cache_text=False)),
        Case("RAC, Rand. BoW", "rac", RACSettings(text_encoder="bow_random", k=k, precompute=False)),
        Case("RAC, MiniLM", "rac", minilm),
        Case("RAC, MiniLM", "rac", RACSettings(text_encoder="minilm", k=k, cache_text=False, centre_text=False),
             slow=True),
    ]
    if finetune:
        listed.append(Case("RAC, MiniLM", "rac", RACSettings(text_encoder="minilm", k=k, train_transformer=True,
                                                              centre_text=False), slow=True))
    return listed


def describe(case: Case, classifier: RACClassifier) -> tuple[str, str]:
    """(how T runs, where the neighbours come from) of a built configuration."""
    if case.mode == "base":
        return "-", "-"
    return classifier.text_encoder_mode, "precomputed" if classifier.neighbour_tables else "on-line"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ltcore bench rac", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="head class cut to 250 images (one-off caches in s)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per configuration (default 12; "
                        "quick 6); slow configurations get a third, at least 2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the notebooks)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=64, help="E's input size (efficientnet_lite0)")
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned MiniLM row (slowest)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rounds = args.rounds or (6 if args.quick else 12)
    slow_rounds = max(2, rounds // 3)
    torch.set_num_threads(args.threads)

    splits = build_dataset("fashion_mnist_lt", n_max=250 if args.quick else 1000, test_per_class=10, seed=args.seed)
    setup = build_retrieval_setup(splits, image_size=args.image_size, embed_splits=("train",), progress=False)
    settings = RACSettings()
    config = settings.train_config(TrainConfig(batch_size=args.batch, seed=args.seed, progress=False))
    loss_fn = settings.loss(splits.class_counts)
    seed_everything(args.seed)
    batches = [batch for batch, _ in zip(DataLoader(splits.train, batch_size=args.batch, shuffle=True, drop_last=True),
                                         range(rounds + 1))]
    if len(batches) < 2:
        raise ValueError(f"{len(splits.train)} training images give fewer than 2 batches of {args.batch}")

    built = []
    for case in cases(args.k, not args.no_finetune):
        started = time.perf_counter()
        classifier = build_rac_classifier(splits, case.settings, setup=setup, mode=case.mode, seed=args.seed).train()
        optimizers = classifier.configure_optimizers(config)
        one_off = time.perf_counter() - started
        optimization_step(classifier, optimizers, *batches[0], loss_fn, 0)  # warm-up (allocations, tokenizer memo)
        built.append((case, classifier, optimizers, one_off, [], []))

    for round_ in range(rounds):
        batch = batches[1 + round_ % (len(batches) - 1)]
        for case, classifier, optimizers, _, walls, cpus in built:
            if case.slow and round_ >= slow_rounds:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            optimization_step(classifier, optimizers, *batch, loss_fn, 0)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)

    base_wall = statistics.median(built[0][4])
    base_cpu = statistics.median(built[0][5])
    rows = []
    for case, classifier, _, one_off, walls, cpus in built:
        text_encoder_mode, neighbours = describe(case, classifier)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        target = TARGETS.get(case.settings.text_encoder) if case.mode != "base" else None
        ratio = cpu / base_cpu
        rows.append({"configuration": case.label, "T": text_encoder_mode, "neighbours": neighbours,
                     "rounds": len(walls), "step_wall_s": wall, "step_cpu_s": cpu, "ratio_wall": wall / base_wall,
                     "ratio_cpu": ratio, "one_off_s": one_off if case.mode != "base" else 0.0, "target": target,
                     "met": None if target is None else ratio <= target})

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"RAC step-time benchmark: {len(splits.train)} training images, base resnet10_tiny, batch {args.batch}, "
          f"k={args.k}, E efficientnet_lite0 at {args.image_size} px (embedding + HNSW index {setup.seconds:.1f} s "
          f"wall, once), {args.threads} thread(s), AdamW, 1-min load average {load:.1f}")
    header = (f"{'configuration':<16}{'T':<16}{'neighbours':<13}{'n':>3}{'wall s/step':>12}{'cpu s/step':>11}"
              f"{'x (wall)':>9}{'x (cpu)':>9}{'one-off s':>10}  target")
    print(header)
    for row in rows:
        verdict = "" if row["target"] is None else f"<= {row['target']}x: {'met' if row['met'] else 'MISSED'}"
        print(f"{row['configuration']:<16}{row['T']:<16}{row['neighbours']:<13}{row['rounds']:>3}"
              f"{row['step_wall_s']:>12.3f}{row['step_cpu_s']:>11.3f}{row['ratio_wall']:>9.2f}{row['ratio_cpu']:>9.2f}"
              f"{row['one_off_s']:>10.1f}  {verdict}")
    print("paper, Table 5 (Places365-LT, 8x A100, s/epoch): " + ", ".join(
        f"{row['text_encoder']} {row['seconds_per_epoch']}" for row in RAC_TABLE5[:3])
        + f" -> Rand. {PAPER_RATIOS['Rand.']:.2f}x, CLIP {PAPER_RATIOS['CLIP']:.2f}x the base-only epoch")
    print("ratios are of medians in this process's CPU time (x (cpu)); targets are judged on them. "
          "One-off = building the configuration: T, precomputed neighbours and the text cache (E's embedding of "
          "the training set is shared and listed above).")
    return {"rows": rows, "paper_ratios": PAPER_RATIOS, "train_images": len(splits.train), "batch": args.batch,
            "k": args.k, "image_size": args.image_size, "threads": args.threads, "rounds": rounds,
            "setup_seconds": setup.seconds, "load_average": load}


if __name__ == "__main__":
    main()
