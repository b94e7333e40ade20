"""Command line: ``python -m ltcore {reproduce,bench,data}``.

- ``reproduce --profile quick|full [--inplace] [--only 01 03] [-p NAME VALUE]``: run the notebooks headless.
- ``bench memory|index|rac [args]``: the speed benchmarks (ratios measured in one run).
- ``data fetch NAME`` / ``data list``: install or locate a dataset.
- ``readme``: rewrite the README's results tables from ``results/*.json``.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import sys


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m ltcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run every notebook headless with papermill")
    rep.add_argument("--profile", default="quick")
    rep.add_argument("--output-dir", default=None)
    rep.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 04")
    rep.add_argument("--inplace", action="store_true", help="write the executed notebooks back to notebooks/")
    rep.add_argument("--jobs", type=int, default=2, help="notebooks run at the same time (one thread each)")
    rep.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameter in every notebook run")
    bench = sub.add_parser("bench", help="speed benchmarks")
    bench.add_argument("name", help="memory, index or rac")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("readme", help="rewrite the README's results tables from results/*.json")
    data = sub.add_parser("data", help="datasets")
    data.add_argument("action", choices=["fetch", "list"])
    data.add_argument("name", nargs="?", default="fashion_mnist")
    args = parser.parse_args(argv)

    if args.command == "reproduce":
        from ltcore.reproduce import reproduce

        extra = {name: _literal(value) for name, value in args.parameter}
        reproduce(args.profile, args.output_dir, args.only, args.inplace, extra, args.jobs)
    elif args.command == "bench":
        try:
            module = importlib.import_module(f"ltcore.benchmarks.{args.name}")
        except ModuleNotFoundError:
            parser.error(f"unknown benchmark {args.name!r}; see ltcore/benchmarks/")
        module.main(args.args)
    elif args.command == "readme":
        from ltcore.readme import update_readme

        print("README.md updated" if update_readme() else "README.md already up to date")
    elif args.command == "data":
        from ltcore.data.registry import DATASETS

        if args.action == "list":
            for entry in DATASETS.values():
                print(f"{entry.name:18s} {entry.description}\n{'':18s} get: {entry.how_to_get}")
        elif args.name in ("fashion_mnist", "fashion_mnist_lt"):
            from ltcore.data.fashion_mnist import fetch_fashion_mnist

            print(f"Fashion-MNIST files: {fetch_fashion_mnist()}")
        else:
            parser.error(f"`data fetch` installs the offline default (fashion_mnist); for {args.name!r}: "
                         f"{DATASETS[args.name].how_to_get if args.name in DATASETS else 'unknown dataset'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
