"""The planner: its numbers equal direct counts on small configs, the paper's IEM ImageNet-LT setting does not fit an
80 GB device and says what to lower, the quick configs fit, and `python -m ltcore plan` exits 0 / 1 / 2."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from ltcore.__main__ import main
from ltcore.data.longtail import longtail_counts
from ltcore.iem.model import build_iem
from ltcore.models import PlainClassifier, build_backbone
from ltcore.plan import PUBLISHED_PROFILES, class_counts, index_bytes, parse_size, plan_run, profile_counts
from ltcore.runconfig import load_config

GB = 10**9
FASHION_COUNTS = longtail_counts(1000, 10, 100.0)  # Fashion-MNIST-LT's default profile


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_a_baselines_parameters_are_its_models():
    plan = plan_run(load_config("quick-baseline"), device_memory=24 * GB)
    assert plan.parameters == numel(PlainClassifier(build_backbone("resnet10_micro", 1), 10))
    assert plan.trainable_parameters == plan.parameters and plan.memory == {} and plan.index_bytes == 0


def test_an_iem_plans_parameters_and_memories_are_the_packages():
    config = load_config("quick-iem")
    plan = plan_run(config, device_memory=24 * GB)
    iem = config.iem
    model = build_iem("tiny", 10, in_chans=1, backbone="resnet10_micro", regions_per_image=iem.regions_per_image,
                      warmup_epochs=iem.warmup_epochs, rsa_kwargs=dict(key_dim=iem.key_dim, h_max=iem.h_max,
                                                                       w_max=iem.w_max),
                      memory_kwargs=dict(capacity=iem.capacity, top_n=iem.top_n, gamma=iem.gamma, delta=iem.delta,
                                         lr=iem.memory_lr))
    assert plan.parameters == numel(model)
    assert plan.memory == model.projected_memory(FASHION_COUNTS, config.schedule.epochs)
    np.testing.assert_array_equal(class_counts(config)[0], FASHION_COUNTS)


@pytest.mark.parametrize("name", ["quick-baseline", "quick-iem", "quick-rac"])
def test_the_quick_configs_fit_a_24_gb_device(name):
    plan = plan_run(load_config(name), device_memory=parse_size("24GB"))
    assert plan.fits and plan.lower == [] and "fits" in plan.format()


def test_the_papers_imagenet_lt_setting_does_not_fit_80_gb_and_says_what_to_lower():
    plan = plan_run(load_config("iem-imagenet-lt"), device_memory=parse_size("80GB"))
    global_memory, local_memory = plan.memory["global"], plan.memory["local"]
    assert global_memory["slots"] == 115_846 * 30  # no class reaches 50,000 slots: 1,280 x 30 = 38,400
    assert global_memory["device_bytes"] == pytest.approx(21.4 * GB, rel=0.01)
    assert global_memory["slots"] < local_memory["slots"] <= 8 * global_memory["slots"]
    assert not plan.fits
    text = plan.format()
    assert "does NOT fit" in text and "iem.capacity (now 50,000; at most" in text and "--gpus" in text


def test_with_more_devices_the_banks_are_sharded_and_the_parameters_replicated():
    config = load_config("iem-imagenet-lt")
    one, eight = plan_run(config, 1, 80 * GB), plan_run(config, 8, 80 * GB)
    assert eight.per_device["parameters"] == one.per_device["parameters"]
    assert eight.per_device["IEM local memory"] == -(-one.memory["local"]["device_bytes"] // 8)
    assert eight.per_device["activations"] == one.activation_bytes_per_image * 32  # 256 images / 8 devices
    assert eight.device_bytes < one.device_bytes


def test_activations_grow_with_the_batch():
    small = plan_run(load_config("quick-baseline", ["schedule.batch_size=16"]), device_memory=GB)
    large = plan_run(load_config("quick-baseline", ["schedule.batch_size=32"]), device_memory=GB)
    assert small.activation_bytes_per_image > 0
    assert large.per_device["activations"] == 2 * small.per_device["activations"]


@pytest.mark.parametrize("name", sorted(PUBLISHED_PROFILES))
def test_a_published_profile_keeps_its_ends_and_its_total(name):
    profile = PUBLISHED_PROFILES[name]
    counts = profile_counts(profile)
    assert len(counts) == profile.num_classes and counts.sum() == profile.total
    assert counts.max() == profile.n_max and counts.min() == profile.n_min and (np.diff(counts) <= 0).all()


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "HNSW8"])
def test_the_index_formula_matches_a_faiss_index(factory):
    vectors = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    index = faiss.index_factory(16, factory)
    index.add(vectors)
    written = faiss.serialize_index(index).nbytes
    assert index_bytes(3000, 16, factory) == pytest.approx(written, rel=0.05)


@pytest.mark.parametrize("text, expected", [("80GB", 80 * 10**9), ("24GiB", 24 * 2**30), ("512MB", 512 * 10**6),
                                            ("1.5 TB", 1.5 * 10**12), ("1000", 1000)])
def test_sizes_are_parsed(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["80XB", "GB", "-1GB", "0GB", ""])
def test_a_bad_size_is_an_error_naming_it(text):
    with pytest.raises(ValueError, match=repr(text)):
        parse_size(text)


def test_the_command_exits_0_when_the_run_fits(capsys):
    assert main(["plan", "--config", "quick-iem", "--device-memory", "24GB", "--set", "iem.capacity=64"]) == 0
    out = capsys.readouterr().out
    assert "plan for quick-iem" in out and "IEM global memory" in out and "fits a 24.0 GB device" in out


def test_the_command_exits_1_when_it_does_not(capsys):
    assert main(["plan", "--config", "iem-imagenet-lt", "--device-memory", "80GB"]) == 1
    assert "to fit, lower: iem.capacity" in capsys.readouterr().out


@pytest.mark.hostile
@pytest.mark.parametrize("argv, says", [
    (["plan", "--config", "quick-iem", "--device-memory", "80XB"],
     "argument --device-memory: expected a size such as 80GB, 24GiB or 512MB, got '80XB'"),
    (["plan", "--config", "quick-iem", "--gpus", "0"], "argument --gpus: expected a whole number >= 1, got '0'"),
    (["plan", "--config", "quick-iem", "--set", "iem.capcity=3"], "iem.capcity (from an override): unknown key; "
                                                                  "did you mean 'iem.capacity'?"),
    (["plan", "--config", "nosuch"], "no named config 'nosuch'"),
    (["plan"], "the following arguments are required: --config"),
])
def test_a_bad_config_or_option_is_one_line_and_status_2(capsys, argv, says):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m ltcore") and says in err
