"""Run configs: every named config loads, overrides are held to the file's rules, and each kind of bad input is a
ConfigError naming the file and the key."""
from __future__ import annotations

import pytest

from ltcore.runconfig import ConfigError, RunConfig, config_names, load_config

NAMED = {"iem-imagenet-lt", "iem-places-lt", "iem-sun-lt", "iem-inat2018", "rac-places-lt", "rac-inat2018",
         "quick-baseline", "quick-iem", "quick-rac",
         "baseline-imagenet-lt"}  # the plain model of IEM's Table 4a, which notebooks 01 and 06 train in the full profile

VALID = """\
family = "rac"
checkpoint_every = 10

[data]
name = "fashion_mnist_lt"

[model]
backbone = "resnet10_micro"

[optimizer]
lr = 0.1

[schedule]
epochs = 3
batch_size = 16
milestones = [1, 2]

[rac]
k = 5
"""


def test_the_named_configs_are_the_issues_nine_and_the_plain_model():
    assert set(config_names()) == NAMED


@pytest.mark.parametrize("name", sorted(NAMED))
def test_every_named_config_loads_and_validates(name):
    config = load_config(name)
    assert isinstance(config, RunConfig) and config.name == name
    assert (config.iem is not None) == (config.family == "iem")
    assert (config.rac is not None) == (config.family == "rac")


def test_the_papers_settings():
    imagenet = load_config("iem-imagenet-lt")
    assert (imagenet.model.backbone, imagenet.schedule.epochs, imagenet.schedule.batch_size, imagenet.optimizer.lr,
            imagenet.schedule.milestones) == ("resnet10", 30, 256, 0.1, (10, 20))
    assert (imagenet.iem.capacity, imagenet.iem.top_n, imagenet.iem.gamma, imagenet.iem.memory_lr) == \
        (50000, 50, 0.99, 1e-5)
    assert load_config("iem-places-lt").model.backbone == "resnet152" == load_config("iem-sun-lt").model.backbone
    assert load_config("iem-inat2018").model.backbone == "resnet50"
    for name in ("rac-places-lt", "rac-inat2018"):
        rac = load_config(name)
        assert (rac.model.backbone, rac.rac.k, rac.rac.index, rac.rac.image_encoder) == \
            ("vit_b16", 30, "HNSW32", "vit_b16_in21k")


def test_a_quick_config_uses_the_offline_default_data():
    assert {load_config(name).data.name for name in NAMED if name.startswith("quick")} == {"fashion_mnist_lt"}


def test_overrides_are_dotted_keys_with_toml_values():
    config = load_config("quick-iem", ["optimizer.lr=0.01", "iem.capacity=64", "norm=group",
                                       "schedule.milestones=[1, 2]", 'data.options.seed=3'])
    assert config.optimizer.lr == 0.01 and config.iem.capacity == 64 and config.norm == "group"
    assert config.schedule.milestones == (1, 2) and config.data.options["seed"] == 3
    assert load_config("quick-iem").optimizer.lr == 0.1  # the file is unchanged


@pytest.mark.parametrize("override, says", [
    ("optimizer.lrr=0.01", "optimizer.lrr (from an override): unknown key; did you mean 'optimizer.lr'?"),
    ("iem.capacity=0", "iem.capacity (from an override): iem.capacity must be an integer >= 1, got 0"),
    ("iem.capacity=many", "iem.capacity (from an override): expected an integer, got 'many'"),
    ("norm=layer", "norm (from an override): norm must be one of"),
    ("seed.x=1", "key 'seed' is not a table"),
    ("optimizer.lr", "must be key=value"),
])
def test_a_bad_override_names_the_key(override, says):
    with pytest.raises(ConfigError) as error:
        load_config("quick-iem", [override])
    assert "quick-iem.toml" in str(error.value) and says in str(error.value)


def test_a_section_of_another_family_is_an_error():
    with pytest.raises(ConfigError, match=r"quick-baseline\.toml: iem.*only for family 'iem'"):
        load_config("quick-baseline", ["iem.capacity=64"])


def test_an_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'quick-iem'"):
        load_config("quick-iemm")


def test_a_config_file_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(VALID)
    config = load_config(path)
    assert config.name == "mine" and config.rac.k == 5 and config.rac.index == "HNSW32"


@pytest.mark.hostile
@pytest.mark.parametrize("old, new, key, says", [
    ('family = "rac"', 'familly = "rac"', "familly", "unknown key; did you mean 'family'?"),
    ("lr = 0.1", "lr = 0.1\nlrr = 2", "optimizer.lrr", "did you mean 'optimizer.lr'?"),
    ("lr = 0.1", 'lr = "fast"', "optimizer.lr", "expected a number, got 'fast'"),
    ("epochs = 3", "epochs = 2.5", "schedule.epochs", "expected an integer"),
    ('backbone = "resnet10_micro"', 'backbone = "resnet10_micro"\npretrained = 1', "model.pretrained",
     "expected true or false"),
    ("milestones = [1, 2]", "milestones = 2", "schedule.milestones", "expected a list of integers"),
    ("lr = 0.1", "lr = 0.0", "optimizer.lr", "must be a finite number > 0.0"),
    ("lr = 0.1", "lr = nan", "optimizer.lr", "must be a finite number"),
    ("epochs = 3", "epochs = 0", "schedule.epochs", "must be an integer >= 1"),
    ("batch_size = 16", "batch_size = 0", "schedule.batch_size", "must be an integer >= 1"),
    ("milestones = [1, 2]", "milestones = [2, 1]", "schedule.milestones", "strictly increasing"),
    ("milestones = [1, 2]", "milestones = [1, 3]", "schedule.milestones[1]", "in [1, 2]"),
    ("checkpoint_every = 10", "checkpoint_every = 0", "checkpoint_every", "must be an integer >= 1"),
    ('family = "rac"', 'family = "svm"', "family", "must be one of"),
    ('name = "fashion_mnist_lt"', 'name = "mnist"', "data.name", "must be one of"),
    ('name = "fashion_mnist_lt"', 'name = "fashion_mnist_lt"\noptions = { n_maks = 5 }', "data.options.n_maks",
     "did you mean 'n_max'?"),
    ('backbone = "resnet10_micro"', 'backbone = "resnet9000"', "model.backbone", "must be one of"),
    ("[optimizer]", '[loss]\nname = "hinge"\n\n[optimizer]', "loss.name", "must be one of"),
    ("[optimizer]", '[loss]\nname = "ce"\noptions = { tau = 1.0 }\n\n[optimizer]', "loss.options.tau",
     "has no such option"),
    ("k = 5", "k = 0", "rac.k", "must be an integer >= 1"),
    ("k = 5", 'k = 5\nindex = "IVF4096"', "rac.index", "'Flat' or 'HNSW<M>'"),
    ("k = 5", 'k = 5\ntext_encoder = "gpt"', "rac.text_encoder", "must be one of"),
    ("k = 5", 'k = 5\nimage_encoder = "eye"', "rac.image_encoder", "must be one of"),
    ('family = "rac"', 'family = "rac"\ndevice = "gpu9"', "device", "is not a device"),
    ("[rac]", "[loop]\nworkers = -1\n\n[rac]", "loop.workers", "must be an integer >= 0"),
    ("[rac]", '[loop]\nautocast = "fp8"\n\n[rac]', "loop.autocast", "must be one of"),
    ("lr = 0.1\n", "", "optimizer.lr", "required key missing"),
    ("[data]", "[data\n", "TOML syntax error", "line 4"),
])
def test_a_bad_config_names_the_file_and_the_key(tmp_path, old, new, key, says):
    assert old in VALID
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and key in message and says in message and "\n" not in message


def test_an_iem_only_value_is_checked(tmp_path):
    path = tmp_path / "iem.toml"
    path.write_text(VALID.replace('family = "rac"', 'family = "iem"').replace("[rac]\nk = 5\n", "[iem]\ntop_n = 0\n"))
    with pytest.raises(ConfigError, match=r"iem\.toml: iem\.top_n: iem\.top_n must be an integer >= 1"):
        load_config(path)
