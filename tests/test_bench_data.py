"""`python -m ltcore bench data` (ltcore.benchmarks.data): tiny sizes, no timing assertions."""
from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from ltcore.benchmarks import data as bench_data

TINY = ["--classes", "4", "--max-per-class", "6", "--batch", "4", "--image-size", "32", "--repeats", "1",
        "--steps", "3", "--log-every", "2", "--train-batch", "4", "--train-image-size", "16", "--device", "cpu"]
LOADER_ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(\S+)\s+(\S+)$")


def test_tiny_run_prints_both_parts_with_consistent_ratios(tmp_path, capsys):
    path = tmp_path / "bench.json"
    returned = bench_data.main(TINY + ["--workers", "0", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert "1. loader" in out and "2. training steps" in out

    rows = {int(m[1]): [float(m[2]), float(m[3]), float(m[4])]
            for m in (LOADER_ROW.match(line) for line in out.splitlines()) if m}
    assert set(rows) == {0, 2}
    for first, median, ratio in rows.values():
        assert first > 0 and median > 0 and ratio > 0
    # the printed ratio is the printed rates' quotient (up to their rounding to 0.1 images/s and 0.01)
    quotient = rows[2][1] / rows[0][1]
    assert rows[2][2] == pytest.approx(quotient, abs=0.006 + 0.1 * quotient / rows[2][1] + 0.1 * quotient / rows[0][1])
    assert rows[0][2] == 1.0
    assert re.search(r"ratio 2 workers / 0 workers: [\d.]+x on \d+ cores", out)

    item = re.search(r"every step \(loss\.item\(\), a sync\)\s+([\d.]+)$", out, re.M)
    deferred = re.search(r"every 2 steps \(summed on the device\)\s+([\d.]+)$", out, re.M)
    ratio = re.search(r"ratio every 2 steps / every step: ([\d.]+)x", out)
    assert item and deferred and ratio
    assert float(item[1]) > 0 and float(deferred[1]) > 0
    assert float(ratio[1]) == pytest.approx(float(deferred[1]) / float(item[1]), abs=0.02)
    assert "on a CPU ~1x is expected" in out

    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    loader = {row["workers"]: row for row in written["loader"]["rows"]}
    assert loader[2]["ratio_to_0"] == pytest.approx(loader[2]["images_per_s"] / loader[0]["images_per_s"], rel=1e-12)
    assert loader[0]["images_per_s"] > 0 and loader[2]["images_per_s"] > 0
    assert loader[0]["cpu_s_per_pass"] > 0
    if sys.platform.startswith("linux"):   # the workers' CPU time is read from /proc
        assert loader[2]["cpu_s_per_pass"] >= 0 and loader[2]["cores_busy"] >= 0
        assert f"{loader[2]['cpu_s_per_pass']:.2f}" == [line.split()[4] for line in out.splitlines()
                                                        if LOADER_ROW.match(line) and line.split()[0] == "2"][0]
    steps = written["steps"]
    assert steps["ratio_deferred_to_item"] == pytest.approx(
        steps["deferred_steps_per_s"] / steps["item_every_step_steps_per_s"], rel=1e-12)
    assert steps["loss_sums_max_relative_difference"] < 1e-5   # both loops trained the same model alike


def test_zero_workers_is_always_the_baseline(capsys):
    returned = bench_data.main(TINY + ["--workers", "1", "--steps", "1"])
    capsys.readouterr()
    assert [row["workers"] for row in returned["loader"]["rows"]] == [0, 1]


@pytest.mark.parametrize("argv", [["--workers", "-1"], ["--repeats", "0"], ["--no-such-option"],
                                  ["--device", "no-such-device"], ["--classes", "1"]])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_data.main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("python -m ltcore bench data: error: ") and captured.err.count("\n") == 1


def test_bad_arguments_through_the_cli(capsys):
    from ltcore.__main__ import main as cli

    with pytest.raises(SystemExit) as exit_:
        cli(["bench", "data", "--repeats", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_zero_and_two_workers_give_identical_batches(tmp_path):
    dataset = bench_data.build_fixture_dataset(tmp_path / "fixture", classes=4, max_per_class=6, image_size=32)
    passes = {}
    for workers in (0, 2):
        loader = bench_data.build_loader(dataset, workers, batch_size=4, seed=0)
        # two passes: the second is where persistent workers could shift the shuffle
        passes[workers] = [list(bench_data.reseed(loader, 0, number)) for number in (0, 1)]
        del loader
    for batches_0, batches_2 in zip(passes[0], passes[2]):
        assert len(batches_0) == len(batches_2) == 3                       # 11 training images, batches of 4
        for (images_0, labels_0, index_0), (images_2, labels_2, index_2) in zip(batches_0, batches_2):
            assert torch.equal(index_0, index_2) and torch.equal(labels_0, labels_2)
            assert images_0.shape[1:] == (3, 32, 32) and torch.equal(images_0, images_2)
    assert not torch.equal(passes[0][0][0][2], passes[0][1][0][2])         # each pass its own shuffle
