"""Headless reproduction: run every notebook with papermill under a named profile.

A profile is a set of papermill parameter overrides per notebook (``"*"`` applies to
all). ``quick`` runs each notebook's own CPU-sized defaults; ``full`` passes the
paper-sized settings and the real datasets to the same notebooks, for GPU
clusters; ``smoke`` runs the full profile's code on fixture datasets of the real
formats, written first into ``runs/smoke/fixtures/``, with the named configs
scaled down (:data:`SMOKE_OVERRIDES`; ``make test`` ends with it). Overrides are
checked against each notebook's ``parameters`` cell: an unknown name is an error,
not a silently ignored setting.

``python -m ltcore reproduce --profile quick`` (what ``make reproduce`` runs)
executes the notebooks in order into ``runs/<profile>/`` (their figures and
results too, unless ``LTCORE_OUTPUT_DIR`` says otherwise), stops at the first
failing notebook naming it and the cell, and prints a summary table. Each
notebook compares its trained results with the committed ``results/``
(:func:`ltcore.results.compare_with_recorded`). ``--inplace`` writes the
executed notebooks back into ``notebooks/`` and their figures and results into
``figures/`` and ``results/`` (the committed course material and record).

Notebooks read each other's results from the record (``load_results("01_baselines", folder=REPO_ROOT /
"results")``, ``quote_claims``). With ``--inplace``, which rewrites the record, a notebook that reads another's
results starts only once that notebook has finished, so that it never reads a record being rewritten; a run
into ``runs/`` leaves the record as committed, and nothing waits.
Whenever a worker is free, it starts the notebook that took longest last time (papermill's recorded duration in
the committed notebook) among those whose dependencies have finished (:func:`next_run`): the longest one, the
claims notebook, starts first, and the other worker meanwhile runs the notebooks that do not wait for it.
Notebooks run ``--jobs`` at a time (default 2), each kernel single-threaded
(``OMP_NUM_THREADS=1``): on a small CPU machine that is faster than one
two-threaded kernel at a time, and it makes the recorded numbers independent of
the machine's core count (the notebook tests set the same).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ltcore.paths import REPO_ROOT, output_dir, results_dir

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CLAIMS_NOTEBOOK = "08_claims"  # writes results/claims.json (ltcore.claims.write_claims)
KERNEL_THREADS = "1"  # threads per notebook kernel, see the module docstring
# glibc returns freed activation buffers to the OS and page-faults them back on every batch; keeping them
# mapped made CPU encoding ~1.7x faster (8.2 s -> 4.9 s for 1,024 images at 96 px, notebook 04).
KERNEL_ENV = {"OMP_NUM_THREADS": KERNEL_THREADS, "MKL_NUM_THREADS": KERNEL_THREADS,
              "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: dict = field(default_factory=dict)  # notebook stem or "*" -> {PARAMETER: value}
    notebooks: Optional[tuple] = None  # prefixes of the notebooks it runs (None: every notebook)
    # ltcore.data.fixtures format -> (classes, max_per_class), written into <output>/fixtures/<format> before running
    fixtures: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)  # variables the kernels get ("{output}" is the output folder)

    def parameters_for(self, notebook: str, output_dir: Path = Path(".")) -> dict:
        """The overrides for ``notebook``, ``{fixtures}`` in any string replaced by the fixtures' folder."""
        fixtures = (Path(output_dir) / "fixtures").resolve().as_posix()
        return _substitute({**self.overrides.get("*", {}), **self.overrides.get(notebook, {})},
                           {"{fixtures}": fixtures})


def _substitute(value, replacements: dict):
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {key: _substitute(item, replacements) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(item, replacements) for item in value]
    return value


# The smoke profile (issue 13): every notebook's full-profile path, on fixture datasets of the real formats
# (ltcore.data.fixtures), with the papers' named configs scaled down by --set overrides (FULL_SET) and the
# pretrained-model factories building random weights (no hub reaches a CI machine). Notebooks 02 and 08 have no full
# path (02 trains nothing; 08's claims run on Fashion-MNIST in every profile), so the smoke run leaves them out; the
# notebook tests run them.
# format -> (classes, training images of the head class, crop size). 120 down to 12 images a class gives all three
# shot groups (1 many-shot, 3 medium-shot, 2 few-shot classes), as the real benchmarks have.
SMOKE_FIXTURES = {"imagenet_lt": (6, 120, 64), "places_lt": (6, 120, 64)}


def _smoke_data(format: str) -> str:
    classes, _, size = SMOKE_FIXTURES[format]
    return (f'data.options={{ root = "{{fixtures}}/{format}", num_classes = {classes}, image_size = {size}, '
            f'resize_size = {size + size // 8} }}')


SMOKE_SCHEDULE = ["device=cpu", "schedule.epochs=2", "schedule.batch_size=16", "checkpoint_every=5",
                  "schedule.milestones=[1]"]
SMOKE_IEM = ["iem.capacity=64", "iem.top_n=4", "iem.key_dim=16", "iem.h_max=2", "iem.w_max=2",
             "iem.regions_per_image=2"]
# RAC: ViT-B-16's code paths (timm's factory, the class token as B's feature, E's timm encoder, open_clip's text
# tower) at ViT-Ti/16's and a tiny CLIP text tower's sizes, with random weights.
SMOKE_RAC = ["schedule.warmup_epochs=0", "schedule.milestones=[]", "model.backbone=vit_ti16", "model.pretrained=false",
             "rac.image_encoder=vit_ti16", "rac.pretrained_encoders=false", "rac.image_size=64",
             "rac.text_encoder=clip_tiny", "rac.k=5"]
SMOKE_OVERRIDES = {
    "*": {"PROFILE": "full"},
    "01_long_tailed_data": {"FULL_SET": [_smoke_data("imagenet_lt"), *SMOKE_SCHEDULE]},
    "03_region_self_attention": {"FULL_SET": [_smoke_data("imagenet_lt"), *SMOKE_SCHEDULE, *SMOKE_IEM]},
    "04_retrieval_accuracy": {"FULL_SET": [_smoke_data("places_lt")], "PRETRAINED": False,
                              "PAPER_ENCODERS": [["resnet50", 64], ["vit_b16_in21k", 32]]},
    "05_branch_accuracy": {"FULL_SET": [_smoke_data("places_lt"), *SMOKE_SCHEDULE, *SMOKE_RAC], "WINDOW": 3},
    "06_iem_results": {"FULL_SET": [_smoke_data("imagenet_lt"), *SMOKE_SCHEDULE, *SMOKE_IEM]},
    "07_rac_training": {"FULL_SET": [_smoke_data("places_lt"), *SMOKE_SCHEDULE, *SMOKE_RAC],
                        "K_VALUES": [1, 5], "TEXT_ENCODERS": ["bow_random", "clip_tiny"]},
}


PROFILES = {
    "quick": Profile("quick", "each notebook's CPU-sized defaults: Fashion-MNIST-LT, minutes on 2 cores"),
    "full": Profile(
        "full",
        "paper-sized settings for GPU clusters: ImageNet-LT / Places-LT with the papers' epochs "
        "(set LTCORE_DATA or the per-dataset *_ROOT variables to the real datasets first)",
        {"*": {"PROFILE": "full"}, "05_branch_accuracy": {"WINDOW": 20}},  # RAC Fig. 2: 20 of Places' 365 classes
    ),
    "smoke": Profile(
        "smoke",
        "the full profile's code paths on fixture datasets of the real formats, scaled down: minutes on a CPU "
        "(part of make test)",
        SMOKE_OVERRIDES, notebooks=tuple(sorted(stem[:2] for stem in SMOKE_OVERRIDES if stem != "*")),
        fixtures={format: (classes, max_per_class) for format, (classes, max_per_class, _) in SMOKE_FIXTURES.items()},
        environment={"LTCORE_CACHE": "{output}/cache"},
    ),
}


def notebooks(only: Optional[list[str]] = None) -> list[Path]:
    """The numbered notebooks in teaching order, optionally those whose name starts with one of ``only``."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only is not None and not only:
        raise ValueError("only is empty: name at least one notebook prefix, or pass None for every notebook")
    if only:
        found = [nb for nb in found if any(nb.stem.startswith(prefix) for prefix in only)]
        if not found:
            raise FileNotFoundError(f"no notebook in {NOTEBOOK_DIR} matches {only}")
    return found


def results_read(notebook: Path) -> set[str]:
    """Prefixes (``"01"``) of the notebooks whose results ``notebook``'s code cells load: ``load_results("01_...")``
    reads notebook 01's, and ``read_claims`` or ``quote_claims`` reads ``results/claims.json``, which
    :data:`CLAIMS_NOTEBOOK` writes."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = "".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    read = set(re.findall(r"load_results\(\s*[\"'](\d\d)_", code))
    if re.search(r"\b(read_claims|quote_claims)\(", code):
        read.add(CLAIMS_NOTEBOOK[:2])
    return read - {notebook.stem[:2]}


def recorded_seconds(notebook: Path) -> float:
    """How long ``notebook`` took when it was last executed (papermill's metadata). A notebook never executed
    has an unknown cost: infinity, so that it starts first (a new notebook is as likely as any to be the longest,
    and its errors show early)."""
    metadata = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
    duration = metadata.get("papermill", {}).get("duration")
    return float(duration) if isinstance(duration, (int, float)) and duration >= 0 else math.inf


def start_order(runs: list, follow_dependencies: bool = True) -> list:
    """``runs`` (:class:`RunPlan` entries) in the order one worker would start them: each time, of the runs whose
    results dependencies (:func:`results_read`) have finished, the one with the longest recorded duration, teaching
    order breaking ties (:func:`next_run`). With ``follow_dependencies=False`` (nothing waits, see
    :func:`run_plans`) the dependencies are ignored: longest first. Notebooks that wait for each other in a cycle are an error."""
    pending, ordered, done = list(runs), [], set()
    waits_for = dependencies(runs, follow_dependencies)
    while pending:
        chosen = next_run(pending, waits_for, done)
        if chosen is None:
            raise ValueError(f"notebooks wait for each other in a cycle: {[run[0].name for run in pending]}")
        pending.remove(chosen)
        ordered.append(chosen)
        done.add(chosen[0].stem[:2])
    return ordered


def dependencies(runs: list, follow: bool = True) -> dict:
    """Each run's notebook -> the prefixes of the notebooks among ``runs`` whose results it reads (none if not
    ``follow``)."""
    prefixes = {notebook.stem[:2] for notebook, _, _ in runs} if follow else set()
    return {notebook: results_read(notebook) & prefixes for notebook, _, _ in runs}


def next_run(pending: list, waits_for: dict, done: set):
    """Of the ``pending`` runs whose dependencies are all ``done``, the one that took longest last time
    (:func:`recorded_seconds`; the first of equals, so teaching order breaks ties); None if none is ready."""
    ready = [run for run in pending if waits_for[run[0]] <= done]
    return max(ready, key=lambda run: recorded_seconds(run[0])) if ready else None


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

    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters or None,
                               kernel_name="python3", cwd=str(notebook.parent), progress_bar=False,
                               log_output=False)
    seconds = time.perf_counter() - started
    drop_widget_state(output)
    return seconds


def drop_widget_state(path: Path) -> None:
    """Remove the saved state of progress-bar widgets (hundreds of KB per notebook, no teaching value).

    Each bar keeps its plain-text rendering in the cell output, which is what a reader sees without the state.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    if nb.metadata.pop("widgets", None) is not None:
        nbformat.write(nb, str(path))


@dataclass(frozen=True)
class RunPlan:
    """What :func:`run_plans` executes: each notebook with its output path and parameters, all checked."""

    profile: str
    output_dir: Path
    inplace: bool
    runs: list  # (notebook, output path, parameters) in teaching order
    fixtures: dict = field(default_factory=dict)  # format -> folder, written before the first notebook runs
    environment: dict = field(default_factory=dict)  # variables set for the kernels


def plan_runs(profile: str = "quick", output_dir: Optional[Path] = None, only: Optional[list[str]] = None,
              inplace: bool = False, extra: Optional[dict] = None) -> RunPlan:
    """Check the profile, the notebook selection and every notebook's parameters; runs nothing.

    Raises ``KeyError`` (unknown profile or parameter) or ``FileNotFoundError`` (no notebook matches ``only``).
    """
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    spec = PROFILES[profile]
    output_dir = Path(output_dir or REPO_ROOT / "runs" / profile)
    if inplace and spec.fixtures:
        raise ValueError(f"profile {profile!r} runs on fixture data: it cannot rewrite the committed notebooks "
                         f"(--inplace)")
    selected = notebooks(only)
    if spec.notebooks is not None:
        selected = [notebook for notebook in selected if notebook.stem[:2] in spec.notebooks]
        if not selected:
            raise FileNotFoundError(f"profile {profile!r} runs only notebooks {', '.join(spec.notebooks)}; "
                                    f"--only {only} selects none of them")
    runs = []
    for notebook in selected:  # check every notebook's parameters before running anything
        parameters = {**spec.parameters_for(notebook.stem, output_dir), **(extra or {})}
        check_parameters(notebook, parameters)
        runs.append((notebook, notebook if inplace else output_dir / notebook.name, parameters))
    fixtures = {format: output_dir.resolve() / "fixtures" / format for format in spec.fixtures}
    environment = _substitute(spec.environment, {"{output}": output_dir.resolve().as_posix()})
    return RunPlan(profile, output_dir, inplace, runs, fixtures, environment)


def reproduce(profile: str = "quick", output_dir: Optional[Path] = None, only: Optional[list[str]] = None,
              inplace: bool = False, extra: Optional[dict] = None, jobs: int = 2) -> list[dict]:
    """Run the notebooks under ``profile``; returns one summary row per notebook. Exits non-zero on failure.

    Whenever a worker is free it starts the longest notebook whose dependencies have finished (:func:`next_run`),
    ``jobs`` at a time; after a failure no new one starts. The summary is in teaching order.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs!r}")
    return run_plans(plan_runs(profile, output_dir, only, inplace, extra), jobs)


def run_plans(plan: RunPlan, jobs: int = 2) -> list[dict]:
    """Execute a :func:`plan_runs` result, ``jobs`` notebooks at a time (see :func:`reproduce`)."""
    from papermill.exceptions import PapermillExecutionError

    os.environ.update(KERNEL_ENV)  # inherited by the kernels
    os.environ.update(plan.environment)
    if plan.fixtures:
        from ltcore.data.fixtures import make_fixture

        for format, folder in plan.fixtures.items():  # the same bytes again if already there
            classes, max_per_class = PROFILES[plan.profile].fixtures[format]
            make_fixture(format, folder, classes=classes, max_per_class=max_per_class)
        print(f"[{plan.profile}] fixtures: {', '.join(str(folder) for folder in plan.fixtures.values())}", flush=True)
    # A reproduction's figures and results go beside its notebooks (the record stays as committed, and each
    # notebook compares with it), for this call only: the kernels inherit the variable when they start.
    redirect = not plan.inplace and "LTCORE_OUTPUT_DIR" not in os.environ
    failed: list[str] = []

    def run(notebook: Path, output: Path, parameters: dict) -> dict:
        print(f"[{plan.profile}] {notebook.name} ...", flush=True)
        try:
            seconds = run_notebook(notebook, output, parameters)
        except PapermillExecutionError as exc:
            failed.append(notebook.name)
            print(f"\nFAILED: {notebook.name}, cell {exc.cell_index} (execution count {exc.exec_count}): "
                  f"{exc.ename}: {exc.evalue}\nThe executed notebook, with the traceback, is {output}",
                  file=sys.stderr, flush=True)
            return {"notebook": notebook.name, "status": "FAILED", "seconds": None}
        print(f"[{plan.profile}] {notebook.name} done in {seconds:.0f} s", flush=True)
        return {"notebook": notebook.name, "status": "ok", "seconds": round(seconds, 1)}

    started = time.perf_counter()
    if redirect:
        os.environ["LTCORE_OUTPUT_DIR"] = str(plan.output_dir)
    # Notebooks read other notebooks' results from the record (results/ at the repository's root). Only a run
    # that rewrites the record (--inplace) must let a reader wait for its writer; any other run leaves the
    # record untouched, so nothing waits.
    writes_record = plan.inplace or output_dir().resolve() == REPO_ROOT.resolve()
    start_order(plan.runs, writes_record)  # a cycle is an error before anything runs
    waits_for = dependencies(plan.runs, writes_record)
    pending, running, done, by_name = list(plan.runs), {}, set(), {}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            while pending or running:
                # A free worker takes the longest notebook whose dependencies have finished; none sits waiting.
                while len(running) < jobs and not failed:
                    chosen = next_run(pending, waits_for, done)
                    if chosen is None:
                        break
                    pending.remove(chosen)
                    running[pool.submit(run, *chosen)] = chosen
                if not running:  # after a failure: what has not started, does not
                    by_name.update({notebook.name: {"notebook": notebook.name, "status": "not run", "seconds": None}
                                    for notebook, _, _ in pending})
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    notebook = running.pop(future)[0]
                    by_name[notebook.name] = future.result()
                    done.add(notebook.stem[:2])
        summary = [by_name[notebook.name] for notebook, _, _ in plan.runs]  # teaching order
        print_summary(summary, time.perf_counter() - started)
    finally:
        if redirect:
            del os.environ["LTCORE_OUTPUT_DIR"]
    if failed:
        raise SystemExit(1)
    return summary


def print_summary(summary: list[dict], wall_seconds: float) -> None:
    from ltcore.results import load_results, markdown_table

    print("\nNotebooks:")
    print(markdown_table(summary, ["notebook", "status", "seconds"]))
    print(f"notebook seconds summed: {sum(row['seconds'] or 0 for row in summary):.0f}, wall: {wall_seconds:.0f}")
    folder = results_dir()
    for path in sorted(folder.glob("*.json")):
        if path.stem == "claims":  # not a table of rows: notebook 08 prints its verdicts
            continue
        try:
            rows = load_results(path.stem, folder)
        except ValueError as exc:  # a stray file in the folder does not hide the notebooks' summary
            print(f"\n{exc}")
            continue
        if rows and {"method", "overall"} <= set(rows[0]):
            print(f"\n{path.relative_to(folder.parent) if folder.parent in path.parents else path}:")
            print(markdown_table(rows))
