"""The papers' named configs, scaled down with --set, train end to end on fixture datasets of the real formats:
the OLTR loaders, the ImageNet-stem ResNet-10, IEM's memories, RAC's retrieval set-up, AdamW and the cosine schedule
run in CI through the same command a GPU run uses (ltcore.run, ltcore.data.fixtures)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ltcore.data.fixtures import make_fixture
from ltcore.run import CHECKPOINT, METRICS, RESULTS

SCALED = ["schedule.epochs=2", "schedule.batch_size=8", "device=cpu", "checkpoint_every=5"]


def train(config: str, output, overrides: list[str], cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "LTCORE_CACHE": str(cache)}   # fixture embeddings stay out of .cache/
    command = [sys.executable, "-m", "ltcore", "train", "--config", config, "--output", str(output), "--set",
               *overrides]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def data_options(root, size: int = 64) -> str:
    return f'data.options={{ root = "{root}", num_classes = 6, image_size = {size}, resize_size = {size + 8} }}'


@pytest.mark.parametrize("config, fixture, overrides", [
    # IEM 4.2 on ImageNet-LT: the ImageNet-stem ResNet-10, SGD with steps; memories and RSA made small
    ("iem-imagenet-lt", "imagenet_lt", ["schedule.milestones=[1]", "iem.capacity=64", "iem.top_n=4", "iem.key_dim=16",
                                        "iem.h_max=2", "iem.w_max=2", "iem.regions_per_image=2"]),
    # RAC on Places-LT: AdamW, the cosine schedule, LACE with label smoothing, HNSW32; E and T the offline ones and
    # B a ResNet-10 from scratch (no ViT weights reach this machine)
    ("rac-places-lt", "places_lt", ["schedule.warmup_epochs=0", "model.backbone=resnet10", "model.pretrained=false",
                                    "rac.image_encoder=efficientnet_lite0", "rac.image_size=64",
                                    "rac.text_encoder=bow_random", "rac.train_transformer=false", "rac.k=5"]),
])
def test_a_paper_config_trains_on_a_fixture_of_its_real_format(tmp_path, config, fixture, overrides):
    root = make_fixture(fixture, tmp_path / "data", classes=6, max_per_class=12)
    result = train(config, tmp_path / "run", [data_options(root), *SCALED, *overrides], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / RESULTS).read_text())
    assert record["complete"] is True and record["steps"] == 2 * 4   # 2 epochs of ceil(27 / 8) batches
    assert record["dataset"].lower().startswith(fixture.split("_")[0])
    assert (tmp_path / "run" / CHECKPOINT).exists()
    rows = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert [row["epoch"] for row in rows if "val_top1" in row] == [1, 2]   # every epoch validated, the last too
