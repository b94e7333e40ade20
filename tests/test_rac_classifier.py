"""Tests of ltcore.rac.classifier: RAC with the trainer's hooks (tables looked up by dataset index) and T's centred
head (Sec. 3.3-3.4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltcore.rac.classifier import CentredLinear, RACClassifier, centre_text_head
from ltcore.rac.image_encoders import build_image_encoder
from ltcore.rac.index import VectorIndex
from ltcore.rac.model import RACModel, RetrievalModule, label_texts
from ltcore.rac.text_encoders import build_text_encoder
from ltcore.train import TrainConfig

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]
K = 3
CONFIG = TrainConfig(epochs=1, batch_size=8, lr=0.05, seed=0, progress=False)


class SmallBase(nn.Module):
    """A base branch B for tests: flatten + linear."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(36, len(CLASS_NAMES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))  # (B, 1, 6, 6) -> (B, 36) -> (B, L)


@pytest.fixture(scope="module")
def parts():
    """Raw-pixel E, an exact index of 40 training 'images' (labels cycling over 4 classes) and 12 test images."""
    generator = torch.Generator().manual_seed(0)
    train, test = torch.rand(40, 1, 6, 6, generator=generator), torch.rand(12, 1, 6, 6, generator=generator)
    encoder = build_image_encoder("raw_pixels")
    index = VectorIndex.build(encoder.embed(train).numpy(), "flat", progress=False)
    return encoder, index, label_texts(torch.arange(40) % 4, CLASS_NAMES), train, test


def rac_model(parts, text: str = "bow_random", **text_options) -> RACModel:
    encoder, index, texts, _, _ = parts
    torch.manual_seed(0)
    retrieval = RetrievalModule(encoder, index, texts, build_text_encoder(text, len(CLASS_NAMES), **text_options), k=K)
    return RACModel(SmallBase(), retrieval, len(CLASS_NAMES))


def tables(model: RACModel, parts) -> tuple[dict, dict]:
    """Neighbour ids per split (training rule on "train") and the frozen T's embeddings of their texts."""
    encoder, _, _, train, test = parts
    retrieval = model.retrieval
    neighbours = {"train": retrieval.precompute_neighbours(encoder.embed(train), drop=True, progress=False),
                  "test": retrieval.precompute_neighbours(encoder.embed(test), drop=False, progress=False)}
    with torch.no_grad():
        texts = {split: retrieval.text_encoder.embed(retrieval.retrieved_texts(ids))
                 for split, ids in neighbours.items()}
    return neighbours, texts


# ============================================================================================ centred head
def test_centred_linear_is_the_same_affine_map_on_centred_inputs():
    linear = nn.Linear(5, 3)
    centre = torch.randn(5)
    head = CentredLinear(linear, centre)
    x = torch.randn(4, 5)
    torch.testing.assert_close(head(x), linear(x - centre))
    torch.testing.assert_close(head(x), (x - centre) @ linear.weight.T + linear.bias)
    assert {name for name, _ in head.named_parameters()} == {"weight", "bias"}  # the centre does not train
    with pytest.raises(ValueError, match=r"centre must have shape \(5,\)"):
        CentredLinear(linear, torch.zeros(4))


def test_centre_text_head_centres_on_the_mean_embedding():
    text = build_text_encoder("bow_random", 4)
    embeddings = torch.rand(10, 300)
    before = nn.Linear(300, 4)
    before.load_state_dict(text.head.state_dict())
    centre_text_head(text, embeddings)
    torch.testing.assert_close(text.head(embeddings[:3]), before(embeddings[:3] - embeddings.mean(0)))


# =============================================================================================== tables
def test_cached_tables_give_the_logits_of_running_the_frozen_t(parts):
    model = rac_model(parts)
    neighbours, texts = tables(model, parts)
    cached = RACClassifier(model, neighbour_tables=neighbours, text_tables=texts)
    precomputed = RACClassifier(model, neighbour_tables=neighbours)
    live = RACClassifier(model)  # retrieval runs on the batch images
    _, _, _, train, test = parts
    for mode, images, indices in (("train", train[[3, 17, 29]], [3, 17, 29]), ("eval", test[:5], range(5))):
        outputs = [getattr(c, mode)()(images, torch.tensor(list(indices))) for c in (cached, precomputed, live)]
        for branch in ("fused", "base", "retrieval"):
            for other in outputs[1:]:
                torch.testing.assert_close(getattr(outputs[0], branch), getattr(other, branch), msg=branch)
    assert [c.text_encoder_mode for c in (cached, precomputed, live)] == ["frozen, cached", "frozen", "frozen"]


def test_lookups_name_the_split_and_range(parts):
    model = rac_model(parts).set_mode("retrieval")
    neighbours, _ = tables(model, parts)
    classifier = RACClassifier(model, neighbour_tables=neighbours).eval()
    images = torch.zeros(2, 1, 6, 6)
    with classifier.evaluating_on("open_set"), pytest.raises(KeyError, match="open_set"):
        classifier(images, torch.tensor([0, 1]))
    with pytest.raises(IndexError, match="out of range"):
        classifier(images, torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="indices"):
        classifier(images)


@pytest.mark.parametrize("spoil, message", [
    (lambda n, t: ({"train": n["train"][:, :2]}, {}), r"neighbour table 'train' must be \[N, 3\]"),
    (lambda n, t: (n, {"train": t["train"]}), "text tables for splits"),
    (lambda n, t: (n, {"train": t["train"], "test": t["test"][:, :10]}), "text table 'test' must be"),
])
def test_tables_are_checked(parts, spoil, message):
    model = rac_model(parts)
    neighbour_tables, text_tables = spoil(*tables(model, parts))
    with pytest.raises(ValueError, match=message):
        RACClassifier(model, neighbour_tables=neighbour_tables, text_tables=text_tables)


def test_tables_need_a_frozen_t_and_a_retrieval_branch(parts):
    fine_tuned = rac_model(parts, "clip_tiny", train_transformer=True)
    neighbours, texts = tables(fine_tuned, parts)
    with pytest.raises(ValueError, match="need a frozen T"):
        RACClassifier(fine_tuned, neighbour_tables=neighbours, text_tables=texts)
    assert RACClassifier(fine_tuned, neighbour_tables=neighbours).text_encoder_mode == "fine-tuned"
    base_only = RACModel(SmallBase(), None, len(CLASS_NAMES), mode="base")
    with pytest.raises(ValueError, match="without a retrieval branch"):
        RACClassifier(base_only, neighbour_tables=neighbours)
    assert RACClassifier(base_only).text_encoder_mode is None


# =========================================================================================== optimizers
@pytest.mark.parametrize("optimizer, kind", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_one_optimizer_trains_the_base_and_t_head(parts, optimizer, kind):
    classifier = RACClassifier(rac_model(parts), optimizer=optimizer)
    (first,) = classifier.configure_optimizers(CONFIG)
    assert isinstance(first, kind) and first.param_groups[0]["lr"] == CONFIG.lr
    trained = {id(p) for p in first.param_groups[0]["params"]}
    assert trained == {id(p) for p in classifier.parameters() if p.requires_grad}
    assert id(classifier.model.retrieval.text_encoder.head.weight) in trained


@pytest.mark.parametrize("options, message", [
    ({"optimizer": "adam"}, r"optimizer must be one of \['adamw', 'sgd'\], got 'adam'"),
    ({"transformer_lr": float("nan")}, "transformer_lr must be a finite number > 0.0"),
    ({"transformer_weight_decay": -0.1}, "transformer_weight_decay must be a finite number >= 0.0"),
])
def test_optimizer_settings_are_checked(parts, options, message):
    with pytest.raises(ValueError, match=message):
        RACClassifier(rac_model(parts), **options)
