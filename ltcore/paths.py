"""Where ltcore reads and writes: the repository root, figures/, results/ and caches.

``LTCORE_OUTPUT_DIR`` redirects figures and results (the test-suite sets it to a
temporary folder so tests never rewrite the committed ones); ``LTCORE_CACHE``
redirects caches (embeddings, indexes); ``LTCORE_DATA`` is where datasets are looked for.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def output_dir() -> Path:
    return Path(os.environ.get("LTCORE_OUTPUT_DIR", REPO_ROOT))


def figures_dir() -> Path:
    path = output_dir() / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    path = output_dir() / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(kind: str) -> Path:
    path = Path(os.environ.get("LTCORE_CACHE", REPO_ROOT / ".cache" / "ltcore")) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    return Path(os.environ.get("LTCORE_DATA", REPO_ROOT / "data"))
