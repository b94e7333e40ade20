"""Headless reproduction: run every notebook with papermill under a named profile.

A profile is a set of papermill parameter overrides per notebook (``"*"`` applies to
all). ``quick`` runs each notebook's own CPU-sized defaults; ``full`` passes the
paper-sized settings and the real datasets to the same notebooks, for GPU
clusters. Overrides are checked against each notebook's ``parameters`` cell: an
unknown name is an error, not a silently ignored setting.

``python -m ltcore reproduce --profile quick`` (what ``make reproduce`` runs)
executes the notebooks in order into ``runs/<profile>/``, stops at the first
failing notebook naming it and the cell, and prints a summary table.
``--inplace`` writes the executed notebooks back into ``notebooks/`` (the
committed course material, outputs included).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ltcore.paths import REPO_ROOT, results_dir

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: dict = field(default_factory=dict)  # notebook stem or "*" -> {PARAMETER: value}

    def parameters_for(self, notebook: str) -> dict:
        return {**self.overrides.get("*", {}), **self.overrides.get(notebook, {})}


PROFILES = {
    "quick": Profile("quick", "each notebook's CPU-sized defaults: Fashion-MNIST-LT, minutes on 2 cores"),
    "full": Profile(
        "full",
        "paper-sized settings for GPU clusters: ImageNet-LT / Places-LT with the papers' epochs "
        "(set LTCORE_DATA or the per-dataset *_ROOT variables to the real datasets first)",
        {"*": {"PROFILE": "full"}},
    ),
}


def notebooks(only: Optional[list[str]] = None) -> list[Path]:
    """The numbered notebooks in teaching order, optionally those whose name starts with one of ``only``."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [nb for nb in found if any(nb.stem.startswith(prefix) for prefix in only)]
        if not found:
            raise FileNotFoundError(f"no notebook in {NOTEBOOK_DIR} matches {only}")
    return found


def check_parameters(notebook: Path, parameters: dict) -> None:
    """Raise if ``parameters`` names something the notebook's parameters cell does not define."""
    import papermill

    known = papermill.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise KeyError(f"{notebook.name} has no parameter(s) {unknown}; its parameters cell defines "
                       f"{', '.join(known) or 'nothing'}")


def run_notebook(notebook: Path, output: Path, parameters: dict) -> float:
    """Execute one notebook with papermill; returns the seconds it took."""
    import papermill

    check_parameters(notebook, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters or None,
                               kernel_name="python3", cwd=str(notebook.parent), progress_bar=False,
                               log_output=False)
    return time.perf_counter() - started


def reproduce(profile: str = "quick", output_dir: Optional[Path] = None, only: Optional[list[str]] = None,
              inplace: bool = False, extra: Optional[dict] = None) -> list[dict]:
    """Run the notebooks under ``profile``; returns one summary row per notebook. Exits non-zero on failure."""
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    from papermill.exceptions import PapermillExecutionError

    output_dir = Path(output_dir or REPO_ROOT / "runs" / profile)
    summary = []
    for notebook in notebooks(only):
        parameters = {**PROFILES[profile].parameters_for(notebook.stem), **(extra or {})}
        output = notebook if inplace else output_dir / notebook.name
        print(f"[{profile}] {notebook.name} ...", flush=True)
        try:
            seconds = run_notebook(notebook, output, parameters)
        except PapermillExecutionError as exc:
            print(f"\nFAILED: {notebook.name}, cell {exc.cell_index} (execution count {exc.exec_count}): "
                  f"{exc.ename}: {exc.evalue}\nThe executed notebook, with the traceback, is {output}",
                  file=sys.stderr)
            summary.append({"notebook": notebook.name, "status": "FAILED", "seconds": None})
            print_summary(summary)
            raise SystemExit(1)
        summary.append({"notebook": notebook.name, "status": "ok", "seconds": round(seconds, 1)})
        print(f"[{profile}] {notebook.name} done in {seconds:.0f} s", flush=True)
    print_summary(summary)
    return summary


def print_summary(summary: list[dict]) -> None:
    from ltcore.results import markdown_table

    print("\nNotebooks:")
    print(markdown_table(summary, ["notebook", "status", "seconds"]))
    total = sum(row["seconds"] or 0 for row in summary)
    print(f"total: {total:.0f} s")
    folder = results_dir()
    for path in sorted(folder.glob("*.json")):
        rows = json.loads(path.read_text())
        if rows and isinstance(rows, list) and {"method", "overall"} <= set(rows[0]):
            print(f"\n{path.relative_to(folder.parent) if folder.parent in path.parents else path}:")
            print(markdown_table(rows))
