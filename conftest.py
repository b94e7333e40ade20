"""Repository-wide pytest set-up.

- Notebook items collected by nbval get the ``notebooks`` marker.
- Notebook 08 runs a smaller claims protocol (``LTCORE_NOTEBOOK_SMOKE``).
- Notebooks and tests write their figures and results to a temporary folder
  (``LTCORE_OUTPUT_DIR``), so running the tests never rewrites the committed
  ``figures/`` and ``results/``; ``make reproduce`` is what regenerates those.
"""
import os
import tempfile

import pytest


def pytest_configure(config):
    if "LTCORE_OUTPUT_DIR" not in os.environ:
        os.environ["LTCORE_OUTPUT_DIR"] = tempfile.mkdtemp(prefix="ltcore-test-output-")
    # Notebook kernels run single-threaded, as `ltcore reproduce` runs them: the recorded outputs then do not
    # depend on the machine's core count, and `pytest -n 2` runs two notebooks at once.
    from ltcore.reproduce import KERNEL_ENV

    os.environ.update(KERNEL_ENV)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TQDM_DISABLE", "1")
    # Notebook 08 (the claims) then runs 2 seeds x 2 permutations and 2 end-to-end runs instead of the protocol's
    # 15 and 5, through the same code (its derived-settings cell reads this); `make reproduce` runs them all.
    os.environ.setdefault("LTCORE_NOTEBOOK_SMOKE", "1")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.notebooks)
            # nbval reads a cell's output messages once the cell has finished, and waits only 5 s for each;
            # a loaded 2-core machine can be slower. (Messages beyond ZMQ's buffer are lost meanwhile, and the
            # wait then ends in a timeout: hence TQDM_DISABLE below, which ltcore's progress bars honour.)
            if hasattr(item, "output_timeout"):
                item.output_timeout = 120
    if not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False
