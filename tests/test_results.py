"""Results files (standard JSON, read back checked) and compare_with_recorded: how the notebook tests check a
re-run against the committed results/."""
import copy
import json
import math

import numpy as np
import pytest

from ltcore.paths import REPO_ROOT
from ltcore.results import RecordedResultsMismatch, compare_with_recorded, load_results, save_results


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    monkeypatch.setenv("LTCORE_OUTPUT_DIR", str(tmp_path))   # a test run: the record is elsewhere
    return load_results("06_iem_seeds", REPO_ROOT / "results")


def test_a_rerun_within_tolerance_passes_and_says_how_far_it_is(recorded):
    rows = copy.deepcopy(recorded)
    rows[3]["overall"] += 2.5                                  # a CPU with other float rounding
    rows.reverse()                                             # rows are matched by method and seed, not order
    summary = compare_with_recorded(rows, "06_iem_seeds")
    assert summary.startswith(f"06_iem_seeds: {len(recorded)} rows within tolerance")
    assert "largest difference 2.50, overall of" in summary and "not in the record" not in summary
    extra = compare_with_recorded(rows + [{**rows[0], "method": "new method"}], "06_iem_seeds")
    assert extra.endswith("; 1 rows of this run are not in the record")


def test_a_broken_method_or_a_lost_row_fails_naming_it(recorded):
    rows = copy.deepcopy(recorded)
    rows[1]["overall"], rows[1]["f_measure"] = 10.0, 0.1      # chance level: the method broke
    del rows[-1]
    with pytest.raises(RecordedResultsMismatch) as error:
        compare_with_recorded(rows, "06_iem_seeds")
    message = str(error.value)
    assert f"{recorded[1]['method']!r} overall: 10.0 against the recorded {recorded[1]['overall']}" in message
    assert "f_measure" in message and f"recorded row {recorded[-1]['method']!r} is missing" in message


def test_nothing_is_compared_for_the_record_itself_or_other_datasets(recorded, monkeypatch):
    rows = [{**row, "dataset": "imagenet_lt", "overall": 0.0} for row in recorded]
    assert "other datasets" in compare_with_recorded(rows, "06_iem_seeds")
    monkeypatch.delenv("LTCORE_OUTPUT_DIR")
    assert "writes the record" in compare_with_recorded([], "06_iem_seeds")


# --------------------------------------------------------------------------- standard files
def strict_json(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.hostile
def test_results_files_are_standard_json_with_nan_as_null_and_numpy_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("LTCORE_OUTPUT_DIR", str(tmp_path))
    rows = [{"dataset": "d", "method": "m", "many": float("nan"), "medium": np.float32(50.5), "few": float("inf"),
             "overall": np.float64(-math.inf), "seconds": np.int64(3), "seed": np.int32(1), "ok": np.bool_(True),
             "per_class": np.array([1, 2])}]
    path = save_results(rows, "standard")
    written = strict_json(path.read_text())
    assert written == [{"dataset": "d", "method": "m", "many": None, "medium": 50.5, "few": None, "overall": None,
                        "seconds": 3, "seed": 1, "ok": True, "per_class": [1, 2]}]
    assert type(written[0]["seconds"]) is int and load_results("standard") == written
    csv_lines = (tmp_path / "results" / "standard.csv").read_text().splitlines()
    assert csv_lines[1].startswith("d,m,,50.5,,,3,")               # NaN and inf are empty cells, not "nan"


@pytest.mark.parametrize("rows, says", [
    ([{"method": object()}], r"results row 0 of 'bad'\['method'\] is a object, which a results file cannot hold"),
    ([{"method": "m"}, ["not", "a", "dict"]], "results row 1 of 'bad' must be a dict, got list"),
])
def test_what_json_cannot_hold_is_an_error_naming_the_row(tmp_path, monkeypatch, rows, says):
    monkeypatch.setenv("LTCORE_OUTPUT_DIR", str(tmp_path))
    with pytest.raises(TypeError, match=says):
        save_results(rows, "bad")
    assert not (tmp_path / "results" / "bad.json").exists()


@pytest.mark.hostile
@pytest.mark.parametrize("content, says", [
    (b'[{"method": "m", "overall": NaN}]', "is not valid JSON: NaN is not standard JSON"),
    (b'[{"method": "m"', "is not valid JSON: Expecting"),
    (b'{"method": "m"}', "does not hold a list of rows"),
    (b'[1, 2]', "does not hold a list of rows"),
    (b'\xff\xfe[]', "is not UTF-8 text"),
])
def test_a_results_file_that_is_not_standard_json_rows_is_an_error_naming_it(tmp_path, content, says):
    (tmp_path / "table.json").write_bytes(content)
    with pytest.raises(ValueError, match=f"results file {tmp_path / 'table.json'} {says}"):
        load_results("table", tmp_path)
