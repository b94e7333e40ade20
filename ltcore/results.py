"""Results rows, tables and files: what every notebook writes to ``results/`` and prints.

A row is a flat dict with at least ``dataset, method, many, medium, few, overall, seconds``
(accuracies in percent, ``None`` for an empty group). ``save_results`` writes the rows
as JSON and CSV (atomically) so the README, the reproduce summary and the tests read them back.
The JSON is standard (NaN and inf are written as ``null``; numpy scalars as numbers), and
``load_results`` refuses a file that is not.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from ltcore.io import atomic_write, read_json
from ltcore.paths import REPO_ROOT, figures_dir, output_dir, results_dir

COLUMNS = ["dataset", "method", "many", "medium", "few", "overall", "seconds"]

# How far a re-run may land from the recorded one (absolute; accuracies in points). Float rounding
# differs between CPUs (instruction sets, BLAS code paths) and training amplifies it: the same code
# and seeds gave up to 4.5 points overall, 11.2 on a head group (notebook 07's LACE row), 5.75 on a
# few-shot group and 0.034 in F-measure on another CPU. About twice that is allowed: narrow enough
# to catch a broken method (chance level is 10% here), not a regression of a point or two.
RECORDED_TOLERANCE = {"many": 20.0, "medium": 20.0, "few": 20.0, "overall": 8.0, "f_measure": 0.08,
                      "open_many": 20.0, "open_medium": 20.0, "open_few": 20.0, "open_overall": 8.0}
_ROW_KEYS = ("dataset", "method", "seed", "image_size", "k", "text_encoder_mode")


class RecordedResultsMismatch(AssertionError):
    """A run's results are further from the recorded ones than :data:`RECORDED_TOLERANCE` allows."""


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


def plain_value(value, where: str = "value"):
    """``value`` as standard JSON data: numpy and 0-d torch scalars become Python numbers, NaN and inf
    become ``None`` (JSON has neither), tuples become lists; anything else JSON cannot hold is an error
    naming ``where``."""
    if hasattr(value, "ndim") and getattr(value, "ndim") == 0 and hasattr(value, "item"):
        value = value.item()  # numpy scalars, 0-d arrays and tensors
    elif hasattr(value, "ndim") and hasattr(value, "tolist"):
        value = value.tolist()  # numpy arrays and tensors
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): plain_value(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, which a results file cannot hold: {value!r}")


def save_results(rows: Iterable[dict], name: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.csv``; returns the JSON path.

    The JSON is standard: numpy scalars are written as numbers, NaN and inf as ``null``.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"results row {i} of {name!r} must be a dict, got {type(row).__name__}")
    rows = [plain_value(row, f"results row {i} of {name!r}") for i, row in enumerate(rows)]
    text = json.dumps(rows, indent=1, allow_nan=False) + "\n"
    folder = results_dir()
    json_path = folder / f"{name}.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    columns = list(dict.fromkeys(COLUMNS + [key for row in rows for key in row]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(folder / f"{name}.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    return json_path


def load_results(name: str, folder: Optional[Path] = None) -> list[dict]:
    """The rows of ``results/<name>.json`` (or ``folder/<name>.json``); a file that is not standard JSON
    holding a list of rows is an error naming it (JSON parsing never runs code)."""
    path = (folder or results_dir()) / f"{name}.json"
    rows = read_json(path, "results file", "; run the notebook that writes it (make reproduce)")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"results file {path} does not hold a list of rows (JSON objects)")
    return rows


def compare_with_recorded(rows: Iterable[dict], name: str, tolerance: Optional[dict] = None) -> str:
    """Compare this run's ``rows`` with the committed ``results/<name>.json``; returns a one-line summary.

    Rows are matched by the keys of :data:`_ROW_KEYS` they have; every metric of ``tolerance``
    (default :data:`RECORDED_TOLERANCE`) must lie within it. Raises :class:`RecordedResultsMismatch`
    naming each value outside, or a recorded row missing from the run. Nothing is compared when
    this run writes the record itself (no ``LTCORE_OUTPUT_DIR``), or when it is on other datasets
    than the record (the full profile). The notebook tests call it after every ``save_results``.
    """
    rows, tolerance = list(rows), RECORDED_TOLERANCE if tolerance is None else tolerance
    if output_dir().resolve() == REPO_ROOT.resolve():
        return f"{name}: this run writes the record (results/{name}.json); nothing to compare"
    recorded = load_results(name, REPO_ROOT / "results")
    if not {row.get("dataset") for row in rows} & {row.get("dataset") for row in recorded}:
        return f"{name}: the record is for other datasets; nothing to compare"

    def key(row: dict) -> tuple:
        return tuple(row.get(column) for column in _ROW_KEYS)

    ours = {key(row): row for row in rows}
    problems, largest = [], (0.0, "")
    for old in recorded:
        new = ours.get(key(old))
        if new is None:
            problems.append(f"recorded row {old['method']!r} is missing")
            continue
        for metric, allowed in tolerance.items():
            if old.get(metric) is None or new.get(metric) is None:
                continue
            difference = abs(float(new[metric]) - float(old[metric]))
            largest = max(largest, (difference, f"{metric} of {old['method']!r}"))
            if difference > allowed:
                problems.append(f"{old['method']!r} {metric}: {new[metric]} against the recorded {old[metric]} "
                                f"(tolerance {allowed})")
    if problems:
        raise RecordedResultsMismatch(f"results/{name}.json: " + "; ".join(problems))
    unrecorded = len(set(ours) - {key(row) for row in recorded})
    return (f"{name}: {len(recorded)} rows within tolerance of the recorded run "
            f"(largest difference {largest[0]:.2f}, {largest[1] or 'none'})"
            + (f"; {unrecorded} rows of this run are not in the record" if unrecorded else ""))


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
