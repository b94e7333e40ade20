"""Tests for ltcore.iem.model: the IEM classifier of Zhu & Yang, CVPR 2020, Section 3.3 (warm-up, eq. 14-16,
inference) and the ablations of Section 4.4 / Table 5, on the tiny "test" variant."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltcore.data import ArrayDataset
from ltcore.iem.model import (ABLATIONS, IEMClassifier, bank_mean_values, build_iem, check_memory_fits,
                               hard_negatives)
from ltcore.losses import build_loss
from ltcore.iem.memory import EpisodicMemory, MemoryOptimizer, projected_bank_sizes
from ltcore.iem.rsa import region_partition
from ltcore.models import build_backbone
from ltcore.train import TrainConfig, fit, predict

NUM_CLASSES = 3
BATCH = 6
K = 2  # regions per image of the "test" variant
CE = build_loss("ce", [10] * NUM_CLASSES)


def make_model(ablation=None, **overrides) -> IEMClassifier:
    torch.manual_seed(0)
    return build_iem("test", NUM_CLASSES, ablation=ablation, **overrides)


def batch(seed: int = 0, n: int = BATCH):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=generator)
    labels = torch.arange(n) % NUM_CLASSES
    return images, labels


def warm_up(model: IEMClassifier, steps: int = 3) -> None:
    """Warm-up steps (epoch 0): writes only, through the public hooks."""
    for step in range(steps):
        images, labels = batch(seed=100 + step)
        model.training_step(images, labels, None, CE, epoch=0)
        model.after_optimizer_step()


def direct_read(memory: EpisodicMemory, query: torch.Tensor, c: int) -> torch.Tensor:
    """Eq. 1-2 over the top-n nearest keys of bank c, from the bank's contents."""
    _, keys, values = memory.bank(c)                                   # [L, D], [L]
    distances = (keys - query).square().sum(1)                         # [L]
    nearest = distances.argsort()[: memory.top_n]
    similarity = 1.0 / (distances[nearest] + memory.delta)             # eq. 2
    return (similarity * values[nearest]).sum() / similarity.sum()     # eq. 1


def toy_dataset(n_per_class: int = 12, seed: int = 0) -> ArrayDataset:
    """Three classes: a bright band at the top, middle or bottom of the image."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(NUM_CLASSES * n_per_class, 28, 28)).astype(np.uint8)
    for c in range(NUM_CLASSES):
        images[c * n_per_class:(c + 1) * n_per_class, 9 * c: 9 * c + 10] += 150
    return ArrayDataset(images, np.repeat(np.arange(NUM_CLASSES), n_per_class))


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_shapes_of_every_output(ablation):
    model = make_model(ablation)
    warm_up(model)
    images, labels = batch()
    features = model.encode(images)
    assert features.feature_map.shape == (BATCH, 16, 7, 7)
    assert features.global_keys.shape == (BATCH, 16)
    assert features.logits.shape == (BATCH, NUM_CLASSES)
    if ablation == "no_local":
        assert features.region_keys is None
    else:
        local_dim = 16  # RSA's attention_dim = C (unprojected query), or C for the pooled regions
        assert features.region_keys.shape == (BATCH, K, local_dim)
    model.eval()
    with torch.no_grad():
        out = model(images)
    branches = {"global_memory", "local_memory"} - {"no_global": {"global_memory"},
                                                    "no_local": {"local_memory"}}.get(ablation, set())
    assert set(out) == {"logits", "classifier", "memory"} | branches
    assert all(value.shape == (BATCH, NUM_CLASSES) for value in out.values())


# --------------------------------------------------------------------------- warm-up and the loss
def test_warmup_only_writes_and_its_loss_is_cross_entropy():
    model = make_model()
    model.train()
    images, labels = batch()
    terms = model.loss_terms(images, labels, CE, epoch=0)
    assert list(terms) == ["ce"]
    assert all(m.num_slots == 0 for m in model.memories.values())  # writes wait for the optimizer step
    moved = [m.step() for m in model.memories.values()]
    assert moved == [0, 0]                                          # nothing was read, nothing to train
    model.after_optimizer_step()
    assert model.global_memory.bank_sizes().tolist() == [2, 2, 2]   # one global key per image
    assert model.local_memory.bank_sizes().tolist() == [2 * K] * 3  # K region keys per image
    model.eval()
    features = model.encode(images)
    assert torch.allclose(model.training_step(images, labels, None, CE, epoch=0),
                          F.cross_entropy(features.logits, labels))


def test_written_values_are_true_class_probabilities_and_local_keys_the_top_attended_regions():
    model = make_model().eval()  # eval: BatchNorm with running stats, so encode is repeatable
    images, labels = batch()
    model.loss_terms(images, labels, CE, epoch=0)
    model.after_optimizer_step()
    with torch.no_grad():
        features = model.encode(images)
        confidence = features.logits.softmax(1)[torch.arange(BATCH), labels]          # [B]
        out = model.rsa(features.feature_map, return_weights=True, return_regions=True)
        top = out.weights.argsort(1, descending=True)[:, :K]                           # [B, K]
        regions = out.region_features[torch.arange(BATCH)[:, None], top]              # [B, K, D]
    for c in range(NUM_CLASSES):
        rows = (labels == c).nonzero().flatten()
        _, keys, values = model.global_memory.bank(c)
        assert torch.allclose(keys, features.global_keys[rows], atol=1e-6)
        assert torch.allclose(values, confidence[rows], atol=1e-6)
        _, local_keys, local_values = model.local_memory.bank(c)
        assert torch.allclose(local_keys, regions[rows].reshape(-1, regions.shape[-1]), atol=1e-5)
        assert torch.allclose(local_values, confidence[rows].repeat_interleave(K), atol=1e-6)


def test_after_warmup_the_loss_has_the_three_terms_of_eq16_per_memory():
    model = make_model()
    warm_up(model)
    model.eval()  # same features for the model and the direct computation
    images, labels = batch(seed=7)
    terms = model.loss_terms(images, labels, CE, epoch=1)
    assert list(terms) == ["ce", "global_pos", "global_neg", "local_pos", "local_neg"]
    # the banks stay as they were until after_optimizer_step, so the direct reads below see what loss_terms saw
    with torch.no_grad():
        features = model.encode(images)
        negatives = hard_negatives(features.logits, labels)
        out = model.rsa(features.feature_map, return_weights=True, return_regions=True)
        top = out.weights.argsort(1, descending=True)[:, :K]
        regions = out.region_features[torch.arange(BATCH)[:, None], top]  # [B, K, D]

        def global_read(classes):
            return torch.stack([direct_read(model.global_memory, features.global_keys[i], int(c))
                                for i, c in enumerate(classes)])

        def local_read(classes):  # each of the K regions reads the bank, the image's score is their mean
            return torch.stack([torch.stack([direct_read(model.local_memory, region, int(c)) for region in regions[i]])
                                .mean() for i, c in enumerate(classes)])

        expected = {
            "ce": F.cross_entropy(features.logits, labels),
            "global_pos": ((global_read(labels) - 1) ** 2).mean(),
            "global_neg": (global_read(negatives) ** 2).mean(),
            "local_pos": ((local_read(labels) - 1) ** 2).mean(),
            "local_neg": (local_read(negatives) ** 2).mean(),
        }
    for name, value in expected.items():
        assert torch.allclose(terms[name], value, atol=1e-5), name
    assert terms["global_pos"] > 0 and terms["local_neg"] > 0
    total = model.training_step(images, labels, None, CE, epoch=1)
    assert torch.allclose(total, sum(expected.values()), atol=1e-5)


def test_hard_negative_is_the_highest_scoring_wrong_class():
    logits = torch.tensor([[5.0, 1.0, 3.0, 2.0],   # label 0 is top: next is 2
                           [5.0, 1.0, 3.0, 2.0],   # label 2: top wrong is 0
                           [0.0, 9.0, -1.0, 8.5],  # label 1: 3
                           [-3.0, -1.0, -2.0, -0.5]])  # label 3: 1
    assert hard_negatives(logits, torch.tensor([0, 2, 1, 3])).tolist() == [2, 0, 3, 1]
    with pytest.raises(ValueError, match="L >= 2"):
        hard_negatives(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))


def test_gradients_of_the_memory_loss_reach_backbone_rsa_and_memory_slots():
    model = make_model().train()
    warm_up(model)
    images, labels = batch(seed=3)
    terms = model.loss_terms(images, labels, CE, epoch=1)
    model.zero_grad()
    sum(value for name, value in terms.items() if name != "ce").backward()
    assert model.fc.weight.grad is None or model.fc.weight.grad.abs().sum() == 0  # the head only sees CE
    assert model.backbone.net.conv1.weight.grad.abs().sum() > 0
    assert model.rsa.key_output.weight.grad.abs().sum() > 0      # through the local memory's region keys
    def all_keys(memory):  # every bank's keys, in class order
        return torch.cat([memory.bank(c)[1] for c in range(NUM_CLASSES)])

    before = {name: all_keys(m) for name, m in model.memories.items()}
    moved = {name: m.step() for name, m in model.memories.items()}  # lazy Adam on the slots read
    assert all(count > 0 for count in moved.values())
    assert all(not torch.equal(before[name], all_keys(m)) for name, m in model.memories.items())


# --------------------------------------------------------------------------- ablations
def test_ablations_remove_what_they_say():
    full, no_rsa, no_local, no_global = (make_model(a) for a in (None, "no_rsa", "no_local", "no_global"))
    assert isinstance(full.rsa, torch.nn.Module) and set(full.memories) == {"global", "local"}
    assert no_rsa.rsa is None and not any(k.startswith("rsa.") for k in no_rsa.state_dict())
    assert no_local.local_memory is None and set(no_local.memories) == {"global"}
    assert not any(k.startswith("local_memory.") for k in no_local.state_dict())
    assert no_global.global_memory is None and set(no_global.memories) == {"local"}
    assert not any(k.startswith("global_memory.") for k in no_global.state_dict())
    for model, names in [(no_local, ["ce", "global_pos", "global_neg"]), (no_global, ["ce", "local_pos", "local_neg"])]:
        warm_up(model)
        assert list(model.loss_terms(*batch(), CE, epoch=1)) == names
    # without RSA the head sits on GAP(f): its logits are fc(mean over the map)
    no_rsa.eval()
    features = no_rsa.encode(batch()[0])
    assert torch.allclose(features.logits, no_rsa.fc(features.feature_map.mean((2, 3))), atol=1e-6)
    assert [ABLATIONS[a][0] for a in ABLATIONS] == ["IEM", "w/o RSA", "w/o local memory", "w/o global memory"]


def test_without_rsa_the_local_keys_are_the_most_activated_pooled_regions():
    model = make_model("no_rsa").eval()
    features = model.encode(batch()[0])
    f = features.feature_map                                          # [B, C, 7, 7]
    pooled = []
    for top, left, height, width in region_partition(7, 7, 2, 2).tolist():  # the "test" variant's partition
        pooled.append(f[:, :, top:top + height, left:left + width].mean((2, 3)))
    pooled = torch.stack(pooled, 1)                                   # [B, R, C]
    order = pooled.norm(dim=-1).argsort(1, descending=True)[:, :K]
    assert torch.allclose(features.region_keys, pooled[torch.arange(BATCH)[:, None], order], atol=1e-5)


def test_the_uniform_attention_control_writes_the_regions_with_the_largest_encodings():
    """Every region weighs 1/R, so no attention ranks them: the k encodings g of largest norm are the local keys."""
    model = make_model(rsa_kwargs=dict(uniform_weights=True)).eval()
    features = model.encode(batch()[0])
    with torch.no_grad():
        out = model.rsa(features.feature_map, return_weights=True, return_regions=True)
    assert torch.allclose(out.weights, torch.full_like(out.weights, 1 / out.weights.shape[1]))
    order = out.region_features.norm(dim=-1).argsort(1, descending=True)[:, :K]        # [B, K]
    assert torch.allclose(features.region_keys, out.region_features[torch.arange(BATCH)[:, None], order])


# --------------------------------------------------------------------------- our memory variants (not the paper)
def test_written_value_one_writes_one_for_every_key():
    model = make_model(written_value="one")
    warm_up(model, steps=1)
    for memory in model.memories.values():
        assert all(torch.equal(memory.bank(c)[2], torch.ones(memory.bank_size(c))) for c in range(NUM_CLASSES))


def test_bank_mean_reads_divide_each_class_by_its_banks_mean_value():
    paper, normalised = make_model(), make_model(read_normalization="bank_mean")
    warm_up(paper)
    normalised.load_state_dict(paper.state_dict())   # the same network and banks, only the reads differ
    images, _ = batch(seed=5)
    with torch.no_grad():
        out_paper, out_normalised = paper.eval()(images), normalised.eval()(images)
    for name, memory in paper.memories.items():
        means = torch.stack([memory.bank(c)[2].mean() for c in range(NUM_CLASSES)])  # [L]
        torch.testing.assert_close(bank_mean_values(memory), means)
        torch.testing.assert_close(out_normalised[f"{name}_memory"], out_paper[f"{name}_memory"] / means)
    torch.testing.assert_close(out_normalised["classifier"], out_paper["classifier"])


def test_bank_mean_of_an_empty_or_non_positive_bank_leaves_the_read_as_it_is():
    memory = EpisodicMemory(3, 2)
    memory.write(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0.0, 0.5]), torch.tensor([0, 1]))
    assert bank_mean_values(memory).tolist() == [1.0, 0.5, 1.0]


def test_reset_memories_empties_them_and_keeps_their_settings():
    model = make_model(memory_kwargs=dict(capacity=16, top_n=3))
    warm_up(model)
    before = {name: memory.config for name, memory in model.memories.items()}
    model.reset_memories()
    assert {name: memory.config for name, memory in model.memories.items()} == before
    assert all(memory.num_slots == 0 for memory in model.memories.values())
    warm_up(model, steps=1)   # the emptied memories are the ones written and read
    assert all(memory.num_slots > 0 for memory in model.memories.values())


# --------------------------------------------------------------------------- training and inference
def test_one_fit_epoch_after_warmup_writes_to_the_memories_within_capacity():
    data = toy_dataset()  # 12 images per class, 2 epochs -> 24 global, 48 local writes per class
    model = make_model()
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05, progress=False, device="cpu")
    history = fit(model, data, build_loss("ce", [12] * NUM_CLASSES), config)
    assert len(history.epochs) == 2 and all(np.isfinite(row["loss"]) for row in history.epochs)
    capacity = model.global_memory.capacity
    assert model.global_memory.bank_sizes().tolist() == [24] * 3           # below capacity 32
    assert model.local_memory.bank_sizes().tolist() == [capacity] * 3      # 48 writes, evicted down to 32
    assert history.epochs[1]["loss"] > 0
    optimizers = model.configure_optimizers(config)
    assert isinstance(optimizers[0], torch.optim.SGD) and isinstance(optimizers[1], MemoryOptimizer)
    sgd_params = {id(p) for group in optimizers[0].param_groups for p in group["params"]}
    assert sgd_params == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.rsa.parameters()} <= sgd_params
    assert set(map(id, optimizers[1].memories)) == {id(m) for m in model.memories.values()}


def test_projected_memory_is_what_training_leaves_in_the_banks():
    full = toy_dataset()
    keep = np.r_[0:12, 12:17, 24:26]                        # 12, 5 and 2 images: 2 epochs fill bank 0 of the local memory
    data, counts = ArrayDataset(full.images[keep], full.labels[keep]), [12, 5, 2]
    model = make_model()
    projection = model.projected_memory(counts, epochs=2)
    fit(model, data, build_loss("ce", counts), TrainConfig(epochs=2, batch_size=8, lr=0.05, progress=False, device="cpu"))
    for name, memory in model.memories.items():
        k = 1 if name == "global" else K
        assert memory.bank_sizes().tolist() == projected_bank_sizes(counts, 2, k, memory.capacity).tolist()
        assert projection[name]["slots"] == memory.num_slots
        device_bytes, host_bytes = memory.slot_bytes()
        assert projection[name]["device_bytes"] == memory.num_slots * device_bytes
        # what a slot owns: its key [D] and value, each with two Adam moments, float32, and an int64 bank-table cell
        assert device_bytes == 3 * 4 * (memory.key_dim + 1) + 8
    assert projected_bank_sizes(counts, 2, K, 32).tolist() == [32, 20, 8]    # 48 writes capped at 32


def test_memories_that_would_not_fit_stop_before_training():
    model = make_model(memory_kwargs=dict(capacity=10**9))
    projection = model.projected_memory([10**7] * NUM_CLASSES, epochs=10**4)   # ~ 10^11 slots
    with pytest.raises(MemoryError, match=r"global [\d,]+ slots, local [\d,]+ slots.*capacity"):
        check_memory_fits(projection, "cpu")
    check_memory_fits(make_model().projected_memory([12] * NUM_CLASSES, epochs=2), "cpu")   # kilobytes: fits
    with pytest.raises(ValueError, match="regions_per_image=None"):
        make_model(regions_per_image=None).projected_memory([12] * NUM_CLASSES, epochs=2)
    with pytest.raises(ValueError, match="class_counts"):
        projected_bank_sizes([[3, 4]], 2, 1, 10)


def test_forward_logits_average_the_classifier_and_the_memories():
    model = make_model()
    warm_up(model)
    model.eval()
    images, _ = batch(seed=5)
    with torch.no_grad():
        out = model(images)
        features = model.encode(images)
    assert torch.allclose(out["classifier"], features.logits.softmax(1), atol=1e-6)
    assert torch.allclose(out["memory"], (out["global_memory"] + out["local_memory"]) / 2, atol=1e-6)
    assert torch.allclose(out["logits"], (out["classifier"] + out["memory"]) / 2, atol=1e-6)
    # the memory branches are eq. 1 on every bank: global key / mean over the K region reads
    c = 1
    expected_global = torch.stack([direct_read(model.global_memory, q, c) for q in features.global_keys])
    assert torch.allclose(out["global_memory"][:, c], expected_global, atol=1e-5)
    expected_local = torch.stack([torch.stack([direct_read(model.local_memory, r, c) for r in regions]).mean()
                                  for regions in features.region_keys])
    assert torch.allclose(out["local_memory"][:, c], expected_local, atol=1e-5)


def test_state_dict_round_trip_gives_identical_predictions():
    data = toy_dataset()
    model = make_model()
    fit(model, data, build_loss("ce", [12] * NUM_CLASSES),
        TrainConfig(epochs=2, batch_size=8, lr=0.05, progress=False, device="cpu"))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    restored = build_iem("test", NUM_CLASSES)
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # plain tensors and values: no pickled code
    first, second = predict(model, data, progress=False), predict(restored, data, progress=False)
    assert set(first) == set(second)
    for key in first:
        assert np.array_equal(first[key], second[key]), key


# --------------------------------------------------------------------------- helpers and errors
@pytest.mark.parametrize("build, match", [
    (lambda: build_iem("huge", NUM_CLASSES), "variant"),
    (lambda: build_iem("test", NUM_CLASSES, ablation="no_memory"), "ablation"),
    (lambda: build_iem("test", NUM_CLASSES, ablation="no_rsa", use_rsa=True), r"sets \['use_rsa'\]"),
    (lambda: IEMClassifier(build_backbone("test_resnet"), NUM_CLASSES, use_global_memory=False,
                           use_local_memory=False), "at least one memory"),
    (lambda: build_iem("test", NUM_CLASSES, colour="red"), "build_iem"),
    (lambda: build_iem("test", NUM_CLASSES, regions_per_image=0), "regions_per_image"),
    (lambda: build_iem("test", 1), "num_classes"),
    (lambda: build_iem("test", NUM_CLASSES, warmup_epochs=-1), "warmup_epochs"),
    (lambda: build_iem("test", NUM_CLASSES, written_value="logit"), "written_value"),
    (lambda: build_iem("test", NUM_CLASSES, read_normalization="softmax"), "read_normalization"),
    (lambda: build_iem("test", NUM_CLASSES, ablation="no_rsa", rsa_kwargs=dict(kye_dim=4)), "kye_dim"),
    (lambda: make_model(regions_per_image=500).encode(batch()[0]), "exceeds the 169 regions"),  # 7x7 map, <= 2x2
    (lambda: make_model().loss_terms(batch()[0], torch.tensor([0, 1, 2, 3, 0, 1]), CE, epoch=0),
     "labels must lie in"),
    (lambda: make_model().loss_terms(batch()[0], torch.zeros(BATCH), CE, epoch=0), "integer tensor of shape"),
    (lambda: make_model().loss_terms(batch()[0], torch.zeros(BATCH - 1, dtype=torch.long), CE, epoch=0),
     r"shape \[6\]"),
])
def test_bad_configurations_and_inputs_are_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.hostile
@pytest.mark.parametrize("ablation", list(ABLATIONS))
@pytest.mark.parametrize("eps", [float("nan"), float("inf")])
def test_non_finite_rsa_settings_are_refused_in_every_ablation(ablation, eps):
    with pytest.raises(ValueError, match="eps must be a finite number"):
        build_iem("test", NUM_CLASSES, ablation=ablation, rsa_kwargs=dict(eps=eps))


def test_all_regions_can_be_written_as_the_paper_does():
    model = make_model(regions_per_image=None)
    images, labels = batch(n=3)
    model.loss_terms(images, labels, CE, epoch=0)
    model.after_optimizer_step()
    assert model.local_memory.bank_sizes().tolist() == [32] * 3  # 169 regions each, capped at capacity 32


@pytest.mark.hostile
@pytest.mark.parametrize("setting", ["delta", "gamma", "lr", "eps"])
def test_non_finite_memory_settings_are_refused_by_build_iem(setting):
    with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
        build_iem("test", NUM_CLASSES, memory_kwargs={setting: float("nan")})
