"""Tests of ltcore.rac.model: eq. 5 fusion, the retrieval module's self-hit rule, frozen encoders, branch modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ltcore.rac import fuse_logits
from ltcore.rac.image_encoders import build_image_encoder
from ltcore.rac.index import VectorIndex
from ltcore.rac.model import RACModel, RACOutput, RetrievalModule, label_texts
from ltcore.rac.text_encoders import build_text_encoder

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]
NUM_CLASSES = len(CLASS_NAMES)


# ==================================================================================================== eq. 5
def test_fusion_on_a_hand_computed_case():
    f_ret = torch.tensor([[3.0, 4.0]])  # unit: (0.6, 0.8)
    f_base = torch.tensor([[0.0, -2.0]])  # unit: (0, -1)
    torch.testing.assert_close(fuse_logits(f_ret, f_base), torch.tensor([[0.6, -0.2]]))  # L/2 = 1


def test_fusion_matches_the_formula():
    generator = torch.Generator().manual_seed(0)
    f_ret, f_base = torch.randn(2, 5, 365, generator=generator).unbind(0)
    direct = 365 / 2 * (
        f_ret / f_ret.pow(2).sum(-1, keepdim=True).sqrt() + f_base / f_base.pow(2).sum(-1, keepdim=True).sqrt()
    )
    fused = fuse_logits(f_ret, f_base)
    torch.testing.assert_close(fused, direct)
    torch.testing.assert_close(fuse_logits(10 * f_ret, 0.1 * f_base), fused)  # scale of each branch is removed


def test_fusion_guards_a_zero_branch():
    f_base = torch.tensor([[1.0, 2.0, 2.0]])
    fused = fuse_logits(torch.zeros(1, 3), f_base)
    torch.testing.assert_close(fused, 1.5 * f_base / 3.0)
    with pytest.raises(ValueError, match="same shape"):
        fuse_logits(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        fuse_logits(f_base, f_base, eps=float("nan"))


@pytest.mark.hostile
@pytest.mark.parametrize("num_classes", [3, 365])
def test_a_zero_branch_has_a_finite_bounded_gradient(num_classes):
    """An all-zero branch contributes zero and its gradient stays bounded by (L/2) / eps (not 1.5e12)."""
    f_ret = torch.zeros(2, num_classes, requires_grad=True)
    f_base = torch.randn(2, num_classes, generator=torch.Generator().manual_seed(0), requires_grad=True)
    fused = fuse_logits(f_ret, f_base)
    torch.testing.assert_close(fused, num_classes / 2 * f_base / f_base.norm(dim=-1, keepdim=True))
    weights = torch.randn(2, num_classes, generator=torch.Generator().manual_seed(1))
    (fused * weights).sum().backward()
    for grad in (f_ret.grad, f_base.grad):
        assert torch.isfinite(grad).all()
    bound = num_classes / 2 / 1e-3 * weights.norm(dim=-1).max()  # (L/2) / eps times the upstream gradient
    assert f_ret.grad.norm(dim=-1).max() <= 1.001 * bound and f_ret.grad.abs().max() < 1e7


# ============================================================================================ retrieval set-up
def make_images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def raw_setup():
    """Index over 40 raw-pixel 'images' with labels cycling over 4 classes; exact cosine search."""
    encoder = build_image_encoder("raw_pixels")
    images = make_images(40, seed=0)
    labels = torch.arange(40) % NUM_CLASSES
    index = VectorIndex.build(encoder.embed(images).numpy(), "flat", progress=False)
    return encoder, images, labels, index


def small_retrieval_module(raw_setup, k=5, drop_self="first") -> RetrievalModule:
    encoder, _, labels, index = raw_setup
    texts = label_texts(labels, CLASS_NAMES)
    return RetrievalModule(encoder, index, texts, build_text_encoder("bow_random", NUM_CLASSES), k=k,
                           drop_self=drop_self)


def test_label_texts():
    assert label_texts(torch.tensor([1, 0, 3]), CLASS_NAMES) == ["Trouser", "T-shirt/top", "Dress"]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        label_texts([4], CLASS_NAMES)


def test_training_drops_the_first_hit_and_eval_keeps_it(raw_setup):
    encoder, images, _, index = raw_setup
    module = small_retrieval_module(raw_setup)
    queries = encoder.embed(images[:8])
    _, ranked = index.search(queries.numpy(), 6)
    module.train()
    np.testing.assert_array_equal(module.neighbours(queries).numpy(), ranked[:, 1:6])
    assert not (module.neighbours(queries).numpy() == np.arange(8)[:, None]).any(), "the image itself is dropped"
    module.eval()
    np.testing.assert_array_equal(module.neighbours(queries).numpy(), ranked[:, :5])


def test_id_rule_drops_the_query_wherever_it_ranks(raw_setup):
    encoder, images, _, index = raw_setup
    module = small_retrieval_module(raw_setup, drop_self="id").train()
    queries = encoder.embed(images[:3])
    _, ranked = index.search(queries.numpy(), 6)
    # Pretend each query's own id is the one at rank 2, rank 0, and not retrieved at all (id 10**6).
    query_ids = torch.tensor([ranked[0, 2], ranked[1, 0], 10**6])
    got = module.neighbours(queries, query_ids=query_ids).numpy()
    np.testing.assert_array_equal(got[0], np.delete(ranked[0], 2))
    np.testing.assert_array_equal(got[1], ranked[1, 1:])
    np.testing.assert_array_equal(got[2], ranked[2, :5])
    with pytest.raises(ValueError, match="query_ids"):
        module.neighbours(queries)


def test_precomputed_neighbours_give_the_same_logits(raw_setup):
    encoder, images, _, _ = raw_setup
    module = small_retrieval_module(raw_setup).train()
    table = module.precompute_neighbours(encoder.embed(images), progress=False)  # (40, k)
    assert table.shape == (40, 5)
    batch = torch.tensor([3, 17, 29])
    online = module(images[batch])
    torch.testing.assert_close(module(neighbour_ids=table[batch]), online)
    torch.testing.assert_close(module(query_embeddings=encoder.embed(images[batch])), online)


def test_retrieved_texts_are_the_neighbours_labels(raw_setup):
    _, _, labels, _ = raw_setup
    module = small_retrieval_module(raw_setup, k=3)
    texts = module.retrieved_texts(torch.tensor([[0, 1, 2], [7, 7, 5]]))
    assert texts == [["T-shirt/top", "Trouser", "Pullover"], ["Dress", "Dress", "Trouser"]]
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        module.retrieved_texts(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="39"):
        module.retrieved_texts(torch.tensor([[0, 1, 40]]))


def test_retrieval_module_checks_its_parts(raw_setup):
    encoder, _, _, index = raw_setup
    bow = build_text_encoder("bow_random", NUM_CLASSES)
    with pytest.raises(ValueError, match="one text per key"):
        RetrievalModule(encoder, index, ["x"] * 39, bow)
    with pytest.raises(ValueError, match="drop_self must be one of"):
        RetrievalModule(encoder, index, ["x"] * 40, bow, k=5, drop_self="last")
    for k in (40, 0, 2.5, True):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 39\]"):
            RetrievalModule(encoder, index, ["x"] * 40, bow, k=k)


# ================================================================================================ RAC model
class SmallBase(nn.Module):
    """A base branch B for tests: flatten + linear."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(pixels, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))  # (B, 1, H, W) -> (B, H*W) -> (B, L)


@pytest.fixture(scope="module")
def cnn_setup():
    """A frozen conv encoder with batch norm (timm's tiny test EfficientNet at 32 px) and its index."""
    encoder = build_image_encoder("test_efficientnet", pretrained=False, image_size=32)
    images = make_images(24, seed=1)
    index = VectorIndex.build(encoder.embed(images).numpy(), "hnsw", progress=False)
    texts = label_texts(torch.arange(24) % NUM_CLASSES, CLASS_NAMES)
    return encoder, images, index, texts


@pytest.mark.parametrize("train_transformer", [False, True])
def test_only_base_and_text_head_learn(cnn_setup, train_transformer):
    encoder, images, index, texts = cnn_setup
    text = build_text_encoder("clip_tiny", NUM_CLASSES, train_transformer=train_transformer)
    retrieval = RetrievalModule(encoder, index, texts, text, k=4)
    model = RACModel(SmallBase(36), retrieval, NUM_CLASSES).train()
    bn_before = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}

    output = model(images[:6])
    nn.functional.cross_entropy(output.fused, torch.arange(6) % NUM_CLASSES).backward()

    assert all(p.grad is None for p in encoder.parameters()), "E is frozen"
    assert not encoder.training
    for key, value in bn_before.items():
        torch.testing.assert_close(encoder.state_dict()[key], value, msg=f"batch-norm statistic {key} moved")
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.base.parameters())
    assert text.head.weight.grad is not None and text.head.weight.grad.abs().sum() > 0
    transformer_grads = [p.grad for n, p in text.clip.named_parameters() if "logit" not in n]
    if train_transformer:
        assert any(g is not None and g.abs().sum() > 0 for g in transformer_grads)
    else:
        assert all(g is None for g in transformer_grads)
    expected = {n for n, _ in model.named_parameters() if n.startswith(("base.", "retrieval.text_encoder.head."))}
    trainable = {n for n, _ in model.trainable_parameters()}
    assert expected <= trainable and not any(n.startswith("retrieval.image_encoder.") for n in trainable)
    assert (trainable == expected) != train_transformer


def test_modes_return_each_branch(raw_setup, monkeypatch):
    _, images, _, _ = raw_setup
    model = RACModel(SmallBase(36), small_retrieval_module(raw_setup), NUM_CLASSES).eval()
    both = model(images[:5])
    assert isinstance(both, RACOutput)
    torch.testing.assert_close(both.fused, fuse_logits(both.retrieval, both.base))

    def not_called(*args, **kwargs):
        raise AssertionError("branch should not run in this mode")

    with monkeypatch.context() as patch:
        patch.setattr(model.retrieval, "forward", not_called)
        base_only = model.set_mode("base")(images[:5])
    assert base_only.retrieval is None
    torch.testing.assert_close(base_only.fused, both.base)
    torch.testing.assert_close(base_only.base, both.base)

    with monkeypatch.context() as patch:
        patch.setattr(model.base, "forward", not_called)
        retrieval_only = model.set_mode("retrieval")(images[:5])
    assert retrieval_only.base is None
    torch.testing.assert_close(retrieval_only.fused, both.retrieval)

    with pytest.raises(ValueError, match=r"mode must be one of \['base', 'rac', 'retrieval'\], got 'ensemble'"):
        model.set_mode("ensemble")
    with pytest.raises(ValueError, match="needs a base branch"):
        RACModel(None, small_retrieval_module(raw_setup), NUM_CLASSES)
    with pytest.raises(ValueError, match="needs a retrieval branch"):
        RACModel(SmallBase(36), None, NUM_CLASSES, mode="retrieval")
    assert RACModel(SmallBase(36), None, NUM_CLASSES, mode="base")(images[:2]).fused.shape == (2, NUM_CLASSES)


def test_branch_width_is_checked(raw_setup):
    _, images, _, _ = raw_setup
    with pytest.raises(ValueError, match="retrieval branch gives 4 logits"):
        RACModel(SmallBase(36), small_retrieval_module(raw_setup), 5)

