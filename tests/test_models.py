"""A sweep over every registered model and module, timm-style: forward, backward, every parameter receives a
gradient, on tiny inputs. Paper-sized variants are built as named and fed a small input (a 3x3 feature map)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltcore.iem.memory import EpisodicMemory
from ltcore.iem.model import ABLATIONS, IEM_VARIANTS, build_iem
from ltcore.iem.rsa import RSA_VARIANTS, build_rsa
from ltcore.losses import build_loss
from ltcore.models import BACKBONES, PRECOMPUTED, PlainClassifier, build_backbone

NUM_CLASSES = 3
BATCH = 6
# Smallest input giving each backbone a feature map of at least 3x3 (RSA's largest region in the paper-sized
# variants): the CIFAR-style stems divide by 4, the ImageNet stem of "resnet10" by 32.
INPUT_SIZE = {name: 12 if spec.small_input else 96 for name, spec in BACKBONES.items()}
# The identity over cached maps takes the 3x3 map itself, with this many channels.
INPUT_SIZE[PRECOMPUTED] = 3
MAP_CHANNELS = 8


def images(size: int, in_chans: int = 1, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, in_chans, size, size, generator=torch.Generator().manual_seed(seed))


def labels(batch: int = BATCH) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES  # every class in every batch


def assert_every_parameter_has_a_finite_gradient(module: torch.nn.Module, but: tuple[str, ...] = ()) -> None:
    """Every parameter (except those named in ``but``) is in the graph of the loss: its gradient exists and is
    finite. (Not necessarily non-zero: timm zero-initialises each residual block's last BatchNorm, so at
    initialisation the layers inside a block get gradient 0.)"""
    missing = [name for name, p in module.named_parameters() if p.grad is None and not name.startswith(but)]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


# --------------------------------------------------------------------------- backbones and the plain model
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("normed", [False, True])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_in_the_plain_model(name, normed, in_chans):
    torch.manual_seed(0)
    backbone = build_backbone(name, in_chans)
    model = PlainClassifier(backbone, NUM_CLASSES, normed=normed).train()
    x = images(INPUT_SIZE[name], in_chans)
    feature_map = backbone(x)
    assert feature_map.shape == (BATCH, backbone.out_dim, 3, 3)
    logits = model(x)
    assert logits.shape == (BATCH, NUM_CLASSES) and torch.isfinite(logits).all()
    F.cross_entropy(logits, labels()).backward()
    assert_every_parameter_has_a_finite_gradient(model)


def test_the_plain_model_on_precomputed_feature_maps_is_a_linear_head_on_their_mean():
    """The frozen-features setting of the claims: the identity backbone passes cached (float16) maps on as float32."""
    torch.manual_seed(0)
    backbone = build_backbone(PRECOMPUTED, MAP_CHANNELS)
    model = PlainClassifier(backbone, NUM_CLASSES)
    maps = torch.randn(BATCH, MAP_CHANNELS, 3, 3).half()
    assert backbone.out_dim == MAP_CHANNELS and not list(backbone.parameters())
    assert backbone(maps).dtype == torch.float32 and torch.equal(backbone(maps), maps.float())
    torch.testing.assert_close(model(maps), model.fc(maps.float().mean(dim=(2, 3))))
    F.cross_entropy(model(maps), labels()).backward()
    assert_every_parameter_has_a_finite_gradient(model)


@pytest.mark.parametrize("build, match", [
    (lambda: build_backbone(PRECOMPUTED, 0), "channels"),
    (lambda: build_backbone(PRECOMPUTED, 4, mean=0.5), "not normalised"),
    (lambda: build_backbone(PRECOMPUTED, 4)(torch.zeros(2, 5, 3, 3)), r"\[B, 4, H, W\]"),
    (lambda: build_backbone(PRECOMPUTED, 4)(torch.zeros(2, 4, 3)), r"\[B, 4, H, W\]"),
    (lambda: build_backbone("nosuch"), "precomputed"),
])
def test_bad_backbone_requests_are_clear_errors(build, match):
    with pytest.raises((ValueError, KeyError), match=match):
        build()


# --------------------------------------------------------------------------- region self-attention
RSA_OPTIONS = {
    "sliding": {},
    "tiling, clip": dict(mode="tiling", border="clip"),
    "tiling, drop": dict(mode="tiling", border="drop"),
    "query projection": dict(query_projection=True, value_dim=5),
    "uniform weights": dict(uniform_weights=True),
}


@pytest.mark.parametrize("options", list(RSA_OPTIONS))
@pytest.mark.parametrize("variant", list(RSA_VARIANTS))
def test_every_rsa_variant(variant, options):
    torch.manual_seed(0)
    rsa = build_rsa(variant, **RSA_OPTIONS[options]).train()
    side = max(rsa.h_max, rsa.w_max)  # the smallest map the variant accepts
    x = torch.randn(2, rsa.in_dim, side, side + 1, requires_grad=True)
    out = rsa(x, return_weights=True, return_regions=True)
    regions = rsa.region_count(side, side + 1)
    assert out.feature.shape == (2, rsa.out_dim) and out.weights.shape == (2, regions)
    assert out.region_features.shape == (2, regions, rsa.attention_dim)
    # the region features (the local memory's keys) reach the parameters the uniform control does not use
    (out.feature.square().mean() + out.region_features.square().mean()).backward()
    assert_every_parameter_has_a_finite_gradient(rsa)
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


# --------------------------------------------------------------------------- IEM and its ablations
def iem_input_size(variant: str) -> int:
    return INPUT_SIZE[IEM_VARIANTS[variant]["backbone"]]


def iem_inputs(variant: str, seed: int = 0) -> torch.Tensor:
    """Images for a backbone that sees images, cached maps for the identity over precomputed maps."""
    channels = MAP_CHANNELS if IEM_VARIANTS[variant]["backbone"] == PRECOMPUTED else 1
    return images(iem_input_size(variant), channels, seed=seed)


def iem_model(variant: str, ablation) -> torch.nn.Module:
    channels = MAP_CHANNELS if IEM_VARIANTS[variant]["backbone"] == PRECOMPUTED else 1
    return build_iem(variant, NUM_CLASSES, ablation=ablation, in_chans=channels, regions_per_image=2).train()


@pytest.mark.parametrize("ablation", list(ABLATIONS))
@pytest.mark.parametrize("variant", list(IEM_VARIANTS))
def test_every_iem_variant_and_ablation(variant, ablation):
    """Warm-up writes, then eq. 16: CE and the memory terms reach every parameter and the slots read."""
    torch.manual_seed(0)
    model = iem_model(variant, ablation)
    loss_fn = build_loss("ce", [10] * NUM_CLASSES)
    for step in range(2):  # warm-up (epoch 0): writes only
        warmup_loss = model.training_step(iem_inputs(variant, seed=step), labels(), None, loss_fn, epoch=0)
        warmup_loss.backward()
        model.after_optimizer_step()
    assert all(memory.num_slots > 0 for memory in model.memories.values())
    model.zero_grad(set_to_none=True)
    terms = model.loss_terms(iem_inputs(variant, seed=7), labels(), loss_fn, epoch=1)
    assert set(terms) == {"ce"} | {f"{name}_{sign}" for name in model.memories for sign in ("pos", "neg")}
    sum(terms.values()).backward()
    assert_every_parameter_has_a_finite_gradient(model)
    assert all(memory.step() > 0 for memory in model.memories.values())  # the lazy Adam moves the slots read
    model.eval()
    with torch.no_grad():
        out = model(iem_inputs(variant, seed=8))
    assert all(scores.shape == (BATCH, NUM_CLASSES) and torch.isfinite(scores).all() for scores in out.values())


@pytest.mark.parametrize("ablation", list(ABLATIONS))
@pytest.mark.parametrize("variant", list(IEM_VARIANTS))
def test_the_memory_terms_alone_reach_everything_but_the_head(variant, ablation):
    """Eq. 16's memory terms reach the backbone (and RSA) through the keys; the head's only gradient is CE's."""
    torch.manual_seed(0)
    model = iem_model(variant, ablation)
    loss_fn = build_loss("ce", [10] * NUM_CLASSES)
    model.training_step(iem_inputs(variant), labels(), None, loss_fn, epoch=0)
    model.after_optimizer_step()
    inputs = iem_inputs(variant, seed=1).requires_grad_()
    terms = model.loss_terms(inputs, labels(), loss_fn, epoch=1)
    sum(value for name, value in terms.items() if name != "ce").backward()
    # The global memory's keys are GAP(f) and the local ones RSA's region encodings g (eq. 9): the memories reach
    # RSA's key path only through the local keys, and never its values (eq. 12), which feed the head alone.
    rsa_unreached = ("rsa.to_value.",) if model.local_memory is not None else ("rsa.",)
    assert_every_parameter_has_a_finite_gradient(model, but=("fc.", *rsa_unreached))
    assert model.fc.weight.grad is None or not bool(model.fc.weight.grad.any())
    assert bool(inputs.grad.abs().sum() > 0)  # through the backbone (its first layer, or the identity) to the input
    if IEM_VARIANTS[variant]["backbone"] != PRECOMPUTED:
        assert bool(model.backbone.net.conv1.weight.grad.abs().sum() > 0)


# --------------------------------------------------------------------------- memory configurations
MEMORY_CONFIGURATIONS = {
    "defaults": {},
    "top_n above the bank size": dict(top_n=50),
    "top_n 1": dict(top_n=1),
    "full banks (eviction)": dict(capacity=2),
    "gamma 0": dict(gamma=0.0),
    "gamma 1": dict(gamma=1.0),
    "large delta": dict(delta=10.0),
    "small chunks": dict(chunk_elements=7),
}


@pytest.mark.parametrize("configuration", list(MEMORY_CONFIGURATIONS))
def test_every_memory_configuration_reads_and_trains(configuration):
    """Write, read one bank per query (eq. 14-15) and every bank (inference), backward, Adam step."""
    key_dim = 4
    memory = EpisodicMemory(NUM_CLASSES, key_dim, **{"capacity": 8, "top_n": 3, "lr": 1e-2,
                                                     **MEMORY_CONFIGURATIONS[configuration]})
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        memory.write(torch.randn(BATCH, key_dim, generator=generator), torch.rand(BATCH, generator=generator), labels())
    assert memory.bank_sizes().tolist() == [min(4, memory.capacity)] * NUM_CLASSES
    queries = torch.randn(BATCH, key_dim, generator=generator, requires_grad=True)
    scores = memory.read(queries, labels())
    all_scores = memory.read_all(queries.detach())
    assert scores.shape == (BATCH,) and all_scores.shape == (BATCH, NUM_CLASSES)
    torch.testing.assert_close(all_scores[torch.arange(BATCH), labels()], scores.detach())
    F.mse_loss(scores, torch.ones_like(scores)).backward()
    assert queries.grad is not None and bool(queries.grad.abs().sum() > 0) and torch.isfinite(queries.grad).all()
    before = [memory.bank(c)[1:] for c in range(NUM_CLASSES)]
    assert memory.step() > 0
    after = [memory.bank(c)[1:] for c in range(NUM_CLASSES)]
    assert any(not torch.equal(b[0], a[0]) or not torch.equal(b[1], a[1]) for b, a in zip(before, after))


# --------------------------------------------------------------------------- RAC (tiny: raw-pixel E, bag-of-words T)
@pytest.mark.parametrize("mode", ["rac", "base", "retrieval"])
def test_rac_model_in_every_mode(mode):
    """Frozen E (raw pixels) and an exact index; every trainable parameter of the branches in use gets a gradient."""
    from ltcore.rac.image_encoders import build_image_encoder
    from ltcore.rac.index import VectorIndex
    from ltcore.rac.model import RACModel, RetrievalModule, label_texts
    from ltcore.rac.text_encoders import build_text_encoder

    torch.manual_seed(0)
    encoder = build_image_encoder("raw_pixels")
    index_images = images(12, batch=16, seed=1)
    index = VectorIndex.build(encoder.embed(index_images).numpy(), "flat", progress=False)
    texts = label_texts(torch.arange(16) % NUM_CLASSES, ["shirt", "trouser", "bag"])
    retrieval = RetrievalModule(encoder, index, texts, build_text_encoder("bow_random", NUM_CLASSES), k=4)
    base = PlainClassifier(build_backbone("test_resnet"), NUM_CLASSES)
    model = RACModel(base, retrieval, NUM_CLASSES, mode=mode).train()
    out = model(images(12))
    assert out.fused.shape == (BATCH, NUM_CLASSES) and torch.isfinite(out.fused).all()
    F.cross_entropy(out.fused, labels()).backward()
    unused = {"rac": (), "base": ("retrieval.",), "retrieval": ("base.",)}[mode]
    trainable = [name for name, _ in model.trainable_parameters() if not name.startswith(unused)]
    assert trainable and all(dict(model.named_parameters())[name].grad is not None for name in trainable)
    assert all(p.grad is None for p in encoder.parameters())  # E is frozen


@pytest.mark.parametrize("name, image_size, shape", [
    ("resnet50", 224, (2, 2048, 7, 7)),
    ("resnet152", 224, (2, 2048, 7, 7)),
    ("vit_b16", 224, (2, 768, 1, 1)),     # the class token as a 1 x 1 map
])
def test_the_papers_larger_backbones_give_a_feature_map(name, image_size, shape):
    from ltcore.models import PlainClassifier, build_backbone

    with torch.device("meta"):   # shapes only: no memory for 60-86 M parameters
        backbone = build_backbone(name, 3)
        maps = backbone(torch.empty(2, 3, image_size, image_size))
        logits = PlainClassifier(backbone, 5)(torch.empty(2, 3, image_size, image_size))
    assert tuple(maps.shape) == shape and backbone.out_dim == shape[1]
    assert tuple(logits.shape) == (2, 5)


def test_unreachable_pretrained_weights_are_an_error_naming_the_backbone(monkeypatch):
    import timm

    from ltcore.models import build_backbone

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"pretrained weights of resnet50 \(resnet50\).*HF_HOME.*pretrained = false"):
        build_backbone("resnet50", 3, pretrained=True)
    with pytest.raises(ValueError, match="trained from scratch here"):
        build_backbone("resnet10", 3, pretrained=True)
