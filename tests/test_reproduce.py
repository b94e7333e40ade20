"""The headless reproduction runner: profiles, strict parameters, failures named by notebook and cell."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ltcore import reproduce as rep


def write_notebook(path, sources, parameters="PROFILE = 'quick'\nVALUE = 1"):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell] + [new_code_cell(source) for source in sources]
    nbformat.write(nb, path)


def test_every_committed_notebook_has_a_profile_parameter():
    import papermill

    found = rep.notebooks()
    assert found, "no numbered notebooks found"
    for notebook in found:
        assert "PROFILE" in papermill.inspect_notebook(str(notebook)), notebook.name


def test_profiles_resolve_per_notebook_overrides():
    profile = rep.Profile("x", "", {"*": {"PROFILE": "full"}, "02_a": {"EPOCHS": 3}})
    assert profile.parameters_for("02_a") == {"PROFILE": "full", "EPOCHS": 3}
    assert profile.parameters_for("03_b") == {"PROFILE": "full"}
    with pytest.raises(KeyError, match="unknown profile"):
        rep.reproduce("huge")


def test_unknown_parameter_is_an_error_naming_it(tmp_path):
    write_notebook(tmp_path / "01_x.ipynb", ["print(VALUE)"])
    with pytest.raises(KeyError, match=r"01_x.ipynb has no parameter\(s\) \['EPOCHS'\]"):
        rep.check_parameters(tmp_path / "01_x.ipynb", {"EPOCHS": 2})


def test_parameters_are_checked_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(rep, "NOTEBOOK_DIR", tmp_path)
    write_notebook(tmp_path / "01_x.ipynb", ["print(VALUE)"])
    with pytest.raises(KeyError, match="EPOCHS"):
        rep.reproduce("quick", output_dir=tmp_path / "out", extra={"EPOCHS": 2})
    assert not (tmp_path / "out").exists()


def test_failing_notebook_is_named_with_its_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rep, "NOTEBOOK_DIR", tmp_path)
    write_notebook(tmp_path / "01_ok.ipynb", ["print(VALUE * 2)"])
    write_notebook(tmp_path / "02_bad.ipynb", ["x = 1", "raise ValueError('broken on purpose')"])
    write_notebook(tmp_path / "03_never.ipynb", ["print('not reached')"])
    with pytest.raises(SystemExit) as info:
        rep.reproduce("quick", output_dir=tmp_path / "out", jobs=1)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "FAILED: 02_bad.ipynb, cell 2" in err and "broken on purpose" in err
    assert (tmp_path / "out" / "01_ok.ipynb").exists() and not (tmp_path / "out" / "03_never.ipynb").exists()
    executed = nbformat.read(tmp_path / "out" / "01_ok.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "2\n"


def test_a_reproduction_writes_its_results_beside_its_notebooks_not_over_the_record(tmp_path, monkeypatch):
    monkeypatch.setattr(rep, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.delenv("LTCORE_OUTPUT_DIR")                  # as `make reproduce` runs: nothing redirected
    write_notebook(tmp_path / "01_saves.ipynb", [
        "from ltcore.results import save_results\n"
        "save_results([{'dataset': 'd', 'method': 'm', 'overall': 1.0}], 'reproduce_probe')"])
    rep.reproduce("quick", output_dir=tmp_path / "out", jobs=1)
    assert (tmp_path / "out" / "results" / "reproduce_probe.json").is_file()
    assert not (rep.REPO_ROOT / "results" / "reproduce_probe.json").exists()
    assert "LTCORE_OUTPUT_DIR" not in rep.os.environ       # for that call only: a second call picks its own folder
    rep.reproduce("quick", output_dir=tmp_path / "again", jobs=1)
    assert (tmp_path / "again" / "results" / "reproduce_probe.json").is_file()


def test_a_plan_checks_everything_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rep, "NOTEBOOK_DIR", tmp_path)
    write_notebook(tmp_path / "01_x.ipynb", ["print(VALUE)"])
    write_notebook(tmp_path / "02_y.ipynb", ["print(VALUE)"])
    plan = rep.plan_runs("full", output_dir=tmp_path / "out", only=["02"], extra={"VALUE": 3})
    assert [(nb.name, out, params) for nb, out, params in plan.runs] == \
        [("02_y.ipynb", tmp_path / "out" / "02_y.ipynb", {"PROFILE": "full", "VALUE": 3})]
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match=r"matches \['99'\]"):
        rep.plan_runs("quick", only=["99"])


@pytest.mark.hostile
@pytest.mark.parametrize("call, error, says", [
    (lambda: rep.notebooks([]), ValueError, "only is empty: name at least one notebook prefix"),
    (lambda: rep.reproduce("quick", jobs=0), ValueError, "jobs must be at least 1, got 0"),
    (lambda: rep.reproduce("quick", jobs=True), ValueError, "jobs must be at least 1, got True"),
])
def test_an_empty_selection_or_no_jobs_is_an_error_not_every_notebook(call, error, says):
    with pytest.raises(error, match=says):
        call()


def test_a_notebook_reading_another_ones_results_starts_after_it_finished(tmp_path, monkeypatch):
    import time

    write_notebook(tmp_path / "01_write.ipynb", ["save_results(rows, '01_rows')"])
    write_notebook(tmp_path / "02_other.ipynb", ["print(VALUE)"])
    write_notebook(tmp_path / "03_read.ipynb", ["rows = load_results('01_rows', folder=RESULTS)"])
    assert rep.results_read(tmp_path / "03_read.ipynb") == {"01"}
    assert rep.results_read(tmp_path / "02_other.ipynb") == set()
    events = []

    def fake_run(notebook, output, parameters):
        events.append(("start", notebook.stem[:2], time.perf_counter()))
        time.sleep(0.5 if notebook.stem.startswith("01") else 0.01)
        events.append(("end", notebook.stem[:2], time.perf_counter()))
        return 0.0

    monkeypatch.setattr(rep, "run_notebook", fake_run)
    runs = [(nb, tmp_path / "out" / nb.name, {}) for nb in sorted(tmp_path.glob("*.ipynb"))]
    rep.run_plans(rep.RunPlan("quick", tmp_path / "out", True, runs), jobs=2)  # --inplace: rewrites the record
    when = {(kind, prefix): at for kind, prefix, at in events}
    assert when[("start", "03")] >= when[("end", "01")]   # without the wait, 03 starts when 02 ends (~0.01 s)

    events.clear()   # a run into runs/ leaves the record alone: 03 reads it at once, beside 01
    rep.run_plans(rep.RunPlan("quick", tmp_path / "out", False, runs), jobs=2)
    when = {(kind, prefix): at for kind, prefix, at in events}
    assert when[("start", "03")] < when[("end", "01")]


def test_a_notebook_quoting_the_claims_waits_for_the_claims_notebook(tmp_path):
    write_notebook(tmp_path / "03_quotes.ipynb", ["display(Markdown(quote_claims(['RSA-attention'])))"])
    write_notebook(tmp_path / "05_reads.ipynb", ["records = read_claims(RESULTS)"])
    write_notebook(tmp_path / "06_mentions.ipynb", ["# quote_claims is not called here"])
    assert rep.results_read(tmp_path / "03_quotes.ipynb") == {rep.CLAIMS_NOTEBOOK[:2]}
    assert rep.results_read(tmp_path / "05_reads.ipynb") == {rep.CLAIMS_NOTEBOOK[:2]}
    assert rep.results_read(tmp_path / "06_mentions.ipynb") == set()


def _with_duration(path, seconds):
    nb = nbformat.read(path, as_version=4)
    nb.metadata["papermill"] = {"duration": seconds}
    nbformat.write(nb, path)


def test_the_longest_notebook_starts_first_but_never_before_what_it_reads(tmp_path, monkeypatch):
    write_notebook(tmp_path / "01_write.ipynb", ["save_results(rows, '01_rows')"])
    write_notebook(tmp_path / "02_short.ipynb", ["print(VALUE)"])
    write_notebook(tmp_path / "03_reads_01.ipynb", ["rows = load_results('01_rows', folder=RESULTS)"])
    write_notebook(tmp_path / "04_long.ipynb", ["print(VALUE)"])
    write_notebook(tmp_path / "05_never_run.ipynb", ["print(VALUE)"])
    for name, seconds in (("01_write", 10.0), ("02_short", 5.0), ("03_reads_01", 500.0), ("04_long", 100.0)):
        _with_duration(tmp_path / f"{name}.ipynb", seconds)
    assert rep.recorded_seconds(tmp_path / "03_reads_01.ipynb") == 500.0
    assert rep.recorded_seconds(tmp_path / "05_never_run.ipynb") == float("inf")  # unknown: started first
    runs = [(nb, tmp_path / "out" / nb.name, {}) for nb in sorted(tmp_path.glob("*.ipynb"))]
    assert [run[0].stem[:2] for run in rep.start_order(runs)] == ["05", "04", "01", "03", "02"]

    started = []
    monkeypatch.setattr(rep, "run_notebook",
                        lambda notebook, output, parameters: started.append(notebook.stem[:2]) or 1.0)
    summary = rep.run_plans(rep.RunPlan("quick", tmp_path / "out", True, runs), jobs=1)
    assert started == ["05", "04", "01", "03", "02"]
    assert [run[0].stem[:2] for run in rep.start_order(runs, follow_dependencies=False)] == ["05", "03", "04", "01", "02"]
    assert [row["notebook"] for row in summary] == [nb.name for nb, _, _ in runs]  # summary in teaching order


def test_a_free_worker_runs_what_is_ready_instead_of_waiting(tmp_path, monkeypatch):
    import time

    write_notebook(tmp_path / "01_write.ipynb", ["save_results(rows, '01_rows')"])
    write_notebook(tmp_path / "02_reads_01.ipynb", ["rows = load_results('01_rows', folder=RESULTS)"])
    write_notebook(tmp_path / "03_short.ipynb", ["print(VALUE)"])
    for name, seconds in (("01_write", 100.0), ("02_reads_01", 50.0), ("03_short", 1.0)):
        _with_duration(tmp_path / f"{name}.ipynb", seconds)
    events = {}

    def fake_run(notebook, output, parameters):
        events[("start", notebook.stem[:2])] = time.perf_counter()
        time.sleep(0.5 if notebook.stem.startswith("01") else 0.01)
        events[("end", notebook.stem[:2])] = time.perf_counter()
        return 0.0

    monkeypatch.setattr(rep, "run_notebook", fake_run)
    runs = [(nb, tmp_path / "out" / nb.name, {}) for nb in sorted(tmp_path.glob("*.ipynb"))]
    rep.run_plans(rep.RunPlan("quick", tmp_path / "out", True, runs), jobs=2)
    # 02 is longer than 03 but waits for 01: the second worker runs 03 meanwhile, and 02 starts after 01
    assert events[("end", "03")] < events[("end", "01")] <= events[("start", "02")]


def test_after_a_failure_nothing_new_starts(tmp_path, monkeypatch):
    from papermill.exceptions import PapermillExecutionError

    for name in ("01_fails", "02_next", "03_last"):
        write_notebook(tmp_path / f"{name}.ipynb", ["print(VALUE)"])
    started = []

    def fake_run(notebook, output, parameters):
        started.append(notebook.stem[:2])
        if notebook.stem.startswith("01"):
            raise PapermillExecutionError(1, 1, "boom", "RuntimeError", "boom", [])
        return 0.0

    monkeypatch.setattr(rep, "run_notebook", fake_run)
    runs = [(nb, tmp_path / "out" / nb.name, {}) for nb in sorted(tmp_path.glob("*.ipynb"))]
    with pytest.raises(SystemExit):
        rep.run_plans(rep.RunPlan("quick", tmp_path / "out", True, runs), jobs=1)
    assert started == ["01"]


def test_notebooks_waiting_for_each_other_in_a_cycle_are_an_error(tmp_path):
    write_notebook(tmp_path / "01_a.ipynb", ["rows = load_results('02_rows', folder=RESULTS)"])
    write_notebook(tmp_path / "02_b.ipynb", ["rows = load_results('01_rows', folder=RESULTS)"])
    runs = [(nb, tmp_path / nb.name, {}) for nb in sorted(tmp_path.glob("*.ipynb"))]
    with pytest.raises(ValueError, match=r"wait for each other in a cycle: \['01_a.ipynb', '02_b.ipynb'\]"):
        rep.start_order(runs)


def test_the_smoke_profile_points_every_full_path_at_its_fixtures_and_checks_every_parameter(tmp_path):
    plan = rep.plan_runs("smoke", output_dir=tmp_path / "smoke")
    stems = [notebook.stem[:2] for notebook, _, _ in plan.runs]
    assert stems == ["01", "03", "04", "05", "06", "07"]   # 02 and 08 have no full path (module comment)
    assert plan.fixtures == {format: (tmp_path / "smoke" / "fixtures" / format).resolve()
                             for format in ("imagenet_lt", "places_lt")}
    assert plan.environment == {"LTCORE_CACHE": f"{(tmp_path / 'smoke').resolve().as_posix()}/cache"}
    for notebook, output, parameters in plan.runs:
        assert parameters["PROFILE"] == "full" and output == tmp_path / "smoke" / notebook.name
        for item in parameters.get("FULL_SET", []):
            assert "{fixtures}" not in item
    options = next(item for item in dict((n.stem[:2], p) for n, _, p in plan.runs)["06"]["FULL_SET"]
                   if item.startswith("data.options="))
    assert f'root = "{(tmp_path / "smoke" / "fixtures" / "imagenet_lt").resolve().as_posix()}"' in options


def test_the_smoke_profiles_overrides_load_as_the_named_configs_they_scale_down(tmp_path):
    from ltcore.runconfig import load_config

    plan = rep.plan_runs("smoke", output_dir=tmp_path / "smoke")
    by_stem = {notebook.stem[:2]: parameters for notebook, _, parameters in plan.runs}
    configs = {"01": "baseline-imagenet-lt", "03": "iem-imagenet-lt", "04": "rac-places-lt", "05": "rac-places-lt",
               "06": "iem-imagenet-lt", "07": "rac-places-lt"}
    for stem, name in configs.items():
        config = load_config(name, by_stem[stem]["FULL_SET"])   # a bad key or value would raise, naming it
        assert config.data.options["num_classes"] == 6


def test_a_fixture_profile_cannot_rewrite_the_committed_notebooks(tmp_path):
    with pytest.raises(ValueError, match="--inplace"):
        rep.plan_runs("smoke", inplace=True)
    with pytest.raises(FileNotFoundError, match="runs only notebooks"):
        rep.plan_runs("smoke", output_dir=tmp_path, only=["08"])
