"""compare_with_recorded: how the notebook tests check a re-run against the committed results/."""
import copy

import pytest

from ltcore.paths import REPO_ROOT
from ltcore.results import RecordedResultsMismatch, compare_with_recorded, load_results


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
