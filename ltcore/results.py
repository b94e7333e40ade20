"""Results rows, tables and files: what every notebook writes to ``results/`` and prints.

A row is a flat dict with at least ``dataset, method, many, medium, few, overall, seconds``
(accuracies in percent, ``None`` for an empty group). ``save_results`` writes the rows
as JSON and CSV (atomically) so the README, the reproduce summary and the tests read them back.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from ltcore.io import atomic_write
from ltcore.paths import figures_dir, results_dir

COLUMNS = ["dataset", "method", "many", "medium", "few", "overall", "seconds"]


def _percent(value) -> Optional[float]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(100.0 * float(value), 2)


def shot_row(dataset: str, method: str, shots, seconds: float, **extra) -> dict:
    """A results row from a :func:`ltcore.metrics.shot_accuracy` result (fractions -> percent)."""
    get = shots.get if isinstance(shots, dict) else lambda key: getattr(shots, key)
    row = {"dataset": dataset, "method": method,
           **{key: _percent(get(key)) for key in ("many", "medium", "few", "overall")},
           "seconds": round(float(seconds), 1)}
    row.update(extra)
    return row


def save_results(rows: Iterable[dict], name: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.csv``; returns the JSON path."""
    rows = list(rows)
    folder = results_dir()
    json_path = folder / f"{name}.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1) + "\n"))
    columns = list(dict.fromkeys(COLUMNS + [key for row in rows for key in row]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(folder / f"{name}.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    return json_path


def load_results(name: str, folder: Optional[Path] = None) -> list[dict]:
    path = (folder or results_dir()) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}; run the notebook that writes it (make reproduce)")
    return json.loads(path.read_text())


def results_frame(rows: Iterable[dict], columns: Optional[list] = None) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    return frame[[c for c in (columns or COLUMNS) if c in frame.columns]]


def markdown_table(rows: Iterable[dict], columns: Optional[list] = None) -> str:
    """A GitHub-markdown table of ``rows`` (used for the README and the reproduce summary)."""
    frame = results_frame(rows, columns)
    frame = frame.astype(object).where(frame.notna(), "–")
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in record) + " |" for record in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure as ``figures/<name>.png`` (atomically, fixed dpi)."""
    path = figures_dir() / f"{name}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    return path
