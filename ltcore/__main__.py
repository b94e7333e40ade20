"""Command line: ``python -m ltcore {reproduce,bench,data,readme}``.

- ``reproduce --profile quick|full [--inplace] [--only 01 03] [-p NAME VALUE]``: run the notebooks headless.
- ``bench memory|index|rac|data [args]``: the speed benchmarks (ratios measured in one run).
- ``data fetch NAME`` / ``data list``: install or locate a dataset.
- ``data make-fixture FORMAT DIR [--classes C] [--max-per-class N] [--seed S]``: write a small long-tailed dataset in
  a real dataset's on-disk format (``ltcore.data.fixtures``; ``youtube8m``: ``ltcore.data.youtube8m``).
- ``readme``: rewrite the README's results tables from ``results/*.json``.
- ``plan --config NAME`` / ``train --config NAME --output DIR [--max-steps N] [--resume] [--set K=V ...]``:
  what a run needs; a resumable training run (``ltcore.plan``, ``ltcore.run``).
- ``plan --config NAME_OR_FILE [--gpus G] [--device-memory 80GB] [--set key=value ...]``: what a run of a
  config needs (``ltcore.plan``); exit status 0 if it fits, 1 if not.

A mistake on the command line (an unknown profile, notebook or parameter, ``--jobs 0``) prints one
line naming it and exits with status 2, before anything runs.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...``) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def benchmark_names() -> list[str]:
    import ltcore.benchmarks

    return sorted(module.name for module in pkgutil.iter_modules(ltcore.benchmarks.__path__))


def build_parser() -> OneLineParser:
    from ltcore.reproduce import PROFILES

    parser = OneLineParser(prog="python -m ltcore", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run every notebook headless with papermill")
    rep.add_argument("--profile", default="quick", choices=list(PROFILES))
    rep.add_argument("--output-dir", default=None)
    rep.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                     help="notebook name prefixes, e.g. 01 04")
    rep.add_argument("--inplace", action="store_true", help="write the executed notebooks back to notebooks/")
    rep.add_argument("--jobs", type=_positive_int, default=2, help="notebooks run at the same time (one thread each)")
    rep.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameter in every notebook run")
    bench = sub.add_parser("bench", help="speed benchmarks")
    bench.add_argument("name", choices=benchmark_names(), help="memory, index, rac or data")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("readme", help="rewrite the README's results tables from results/*.json")
    data = sub.add_parser("data", help="datasets")
    data_actions = data.add_subparsers(dest="action", required=True)
    data_actions.add_parser("fetch").add_argument("name", nargs="?", default="fashion_mnist")
    data_actions.add_parser("list")
    fixture = data_actions.add_parser("make-fixture", help="write a small long-tailed dataset in a real format")
    fixture.add_argument("format", metavar="FORMAT",
                         help="imagenet_lt, places_lt, sun_lt, inat2018, cifar10, cifar100 or youtube8m")
    fixture.add_argument("dir", metavar="DIR", help="a new or empty folder")
    fixture.add_argument("--classes", type=int, default=None, help="default 12; CIFAR: 10 or 100")
    fixture.add_argument("--max-per-class", type=int, default=20,
                         help="training images of the head class (youtube8m: videos of the head label, of twice "
                              "as many training videos)")
    fixture.add_argument("--seed", type=int, default=0)
    plan = sub.add_parser("plan", help="what a run of a config needs, and whether it fits (exit 0: fits, 1: does not)",
                          description="Print what a run of a config needs (parameters, activations, IEM memories, "
                                      "index, checkpoint) and whether each device holds its share. Exit status: "
                                      "0 if it fits, 1 if it does not, 2 for a bad config or option.")
    _config_arguments(plan)
    plan.add_argument("--gpus", type=_positive_int, default=1, help="data-parallel devices (default 1)")
    plan.add_argument("--device-memory", type=_size, default=None, metavar="SIZE",
                      help="memory of one device, e.g. 80GB, 24GiB, 512MB (default: this machine's)")
    train = sub.add_parser("train", help="train a baseline, IEM or RAC from a config into a folder (resumable)",
                           description="Train a run config into DIR: DIR/last.pt (checkpoints), DIR/metrics.jsonl, "
                                       "DIR/results.json (ltcore.run). Exit status: 0 done, 1 does not fit or "
                                       "failed, 2 bad config or option, 143 stopped by SIGTERM (checkpoint written).")
    _config_arguments(train)
    train.add_argument("--output", required=True, metavar="DIR", help="the run's folder")
    train.add_argument("--max-steps", type=_positive_int, default=None, metavar="N",
                       help="stop after N optimizer steps in all (checkpoint written)")
    train.add_argument("--resume", action="store_true", help="continue from DIR/last.pt if it exists")
    return parser


def _config_arguments(command: argparse.ArgumentParser) -> None:
    """``--config NAME_OR_FILE`` and ``--set KEY=VALUE ...``, shared by ``plan`` and ``train``."""
    command.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                         help="a named config (ltcore/configs) or a TOML file")
    command.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="overrides",
                         help="override config keys, e.g. optimizer.lr=0.01 iem.capacity=64")


def _size(text: str) -> int:
    from ltcore.plan import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _train(parser: OneLineParser, args) -> int:
    """The train command: the planner's check first (nothing allocated for a run that cannot fit), then
    :func:`ltcore.run.train_run`."""
    from ltcore.plan import plan_run
    from ltcore.run import Terminated, check_trainable, train_run
    from ltcore.runconfig import load_config

    try:
        config = load_config(args.config, args.overrides)
        check_trainable(config)
        plan = plan_run(config)
    except ValueError as exc:
        parser.error(" ".join(str(exc).split()))
    if not plan.fits:
        print(plan.format(), file=sys.stderr)
        print(f"{parser.prog} train: refused before allocating: the run does not fit (see the plan above)",
              file=sys.stderr)
        return 1
    try:
        record = train_run(config, args.output, max_steps=args.max_steps, resume=args.resume)
    except Terminated as exc:
        print(exc, file=sys.stderr)
        return 143
    except (FileExistsError, NotADirectoryError) as exc:
        parser.error(str(exc))
    except (ValueError, FloatingPointError) as exc:  # a foreign checkpoint, another config, a diverged loss
        print(f"{parser.prog} train: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"{record['steps']} steps{'' if record['complete'] else ' (stopped early)'}: overall "
          f"{record['overall']:.2f}%, many {record['many']}, medium {record['medium']}, few {record['few']}; "
          f"{args.output}/results.json")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "reproduce":
        from ltcore.reproduce import plan_runs, run_plans

        extra = {name: _literal(value) for name, value in args.parameter}
        try:
            plan = plan_runs(args.profile, args.output_dir, args.only, args.inplace, extra)
        except (KeyError, ValueError, FileNotFoundError) as exc:
            parser.error(exc.args[0] if exc.args else str(exc))
        run_plans(plan, args.jobs)
    elif args.command == "bench":
        importlib.import_module(f"ltcore.benchmarks.{args.name}").main(args.args)
    elif args.command == "plan":
        from ltcore.plan import plan_run
        from ltcore.runconfig import load_config

        try:
            plan = plan_run(load_config(args.config, args.overrides), args.gpus, args.device_memory)
        except ValueError as exc:  # a ConfigError, or a setting the model itself refuses
            parser.error(" ".join(str(exc).split()))
        print(plan.format())
        return 0 if plan.fits else 1
    elif args.command == "train":
        return _train(parser, args)
    elif args.command == "readme":
        from ltcore.readme import update_readme

        print("README.md updated" if update_readme() else "README.md already up to date")
    elif args.command == "data":
        from ltcore.data.registry import DATASETS

        if args.action == "list":
            for entry in DATASETS.values():
                print(f"{entry.name:18s} {entry.description}\n{'':18s} get: {entry.how_to_get}")
        elif args.action == "make-fixture" and args.format == "youtube8m":
            from ltcore.data.youtube8m import describe_youtube8m_fixture, make_youtube8m_fixture

            size = dict(videos=2 * args.max_per_class, classes=12 if args.classes is None else args.classes)
            try:  # the head label is on max_per_class of the 2 * max_per_class training videos
                root = make_youtube8m_fixture(args.dir, **size, seed=args.seed)
            except (ValueError, OSError) as exc:
                parser.error(str(exc))
            print(f"wrote the youtube8m fixture (seed {args.seed}) to {root}")
            print(describe_youtube8m_fixture(root, **size))
        elif args.action == "make-fixture":
            from ltcore.data.fixtures import describe_fixture, make_fixture

            try:
                root = make_fixture(args.format, args.dir, args.classes, args.max_per_class, args.seed)
            except (ValueError, OSError) as exc:
                parser.error(str(exc))
            print(f"wrote the {args.format} fixture (seed {args.seed}) to {root}")
            print(describe_fixture(args.format, root, args.classes, args.max_per_class))
        elif args.name in ("fashion_mnist", "fashion_mnist_lt"):
            from ltcore.data.fashion_mnist import fetch_fashion_mnist

            print(f"Fashion-MNIST files: {fetch_fashion_mnist()}")
        else:
            parser.error(f"`data fetch` installs the offline default (fashion_mnist); for {args.name!r}: "
                         f"{DATASETS[args.name].how_to_get if args.name in DATASETS else 'unknown dataset'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
