"""Benchmarks run with `python -m ltcore bench NAME`; each module exposes `main(argv) -> dict`."""
