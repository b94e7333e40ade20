"""Tests for ltcore.losses: every loss against its formula written out with plain torch ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltcore.losses import (
    LOSS_NAMES,
    LDAMLoss,
    balanced_softmax_ce,
    class_balanced_weights,
    cross_entropy,
    drw_weights,
    focal_loss,
    inverse_frequency_ce,
    ldam_margins,
    log_prior,
    logit_adjusted_ce,
    loss_options,
    build_loss,
    posthoc_logit_adjust,
)

COUNTS = [1000, 200, 50, 10, 1]  # a long tail over C = 5 classes


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, len(COUNTS), generator=gen, dtype=torch.float64) * 2
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 4, 2])
    return logits, targets


def softmax_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) -log softmax(z)_y written with exp/sum, independent of F.cross_entropy."""
    exp = logits.exp()
    return -torch.log(exp[torch.arange(len(targets)), targets] / exp.sum(dim=1))


# ----------------------------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------------------------
def test_cross_entropy_plain_matches_formula(batch):
    logits, targets = batch
    assert torch.allclose(cross_entropy(logits, targets), softmax_nll(logits, targets).mean())


def test_cross_entropy_label_smoothing_matches_formula(batch):
    logits, targets = batch
    eps, num_classes = 0.1, logits.shape[1]
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, C)
    expected = (-(1 - eps) * log_p[torch.arange(len(targets)), targets] - eps / num_classes * log_p.sum(1)).mean()
    assert torch.allclose(cross_entropy(logits, targets, label_smoothing=eps), expected)


def test_cross_entropy_weight_is_weighted_mean(batch):
    logits, targets = batch
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    w = weight[targets]
    expected = (w * softmax_nll(logits, targets)).sum() / w.sum()
    assert torch.allclose(cross_entropy(logits, targets, weight=weight.tolist()), expected)


def test_cross_entropy_weight_and_smoothing_follow_documented_formula(batch):
    logits, targets = batch
    eps, num_classes = 0.2, logits.shape[1]
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    rows = torch.arange(len(targets))
    per_sample = (1 - eps) * weight[targets] * -log_p[rows, targets] + eps / num_classes * (weight * -log_p).sum(1)
    expected = per_sample.sum() / weight[targets].sum()
    assert torch.allclose(cross_entropy(logits, targets, label_smoothing=eps, weight=weight), expected)


# ----------------------------------------------------------------------------------------------------------
# Focal and class-balanced weights
# ----------------------------------------------------------------------------------------------------------
def test_focal_matches_formula(batch):
    logits, targets = batch
    gamma = 2.0
    p_t = softmax_nll(logits, targets).neg().exp()
    expected = (-((1 - p_t) ** gamma) * torch.log(p_t)).mean()
    assert torch.allclose(focal_loss(logits, targets, gamma=gamma), expected)


def test_focal_with_alpha_and_gamma_zero_is_ce(batch):
    logits, targets = batch
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    p_t = softmax_nll(logits, targets).neg().exp()
    expected = (-alpha[targets] * (1 - p_t) ** 0.5 * torch.log(p_t)).mean()
    assert torch.allclose(focal_loss(logits, targets, gamma=0.5, alpha=alpha), expected)
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0), cross_entropy(logits, targets))


def test_class_balanced_weights_hand_computed():
    beta = 0.9
    counts = [1, 10, 100]
    effective = [(1 - beta**n) / (1 - beta) for n in counts]  # 1, 6.5132, 9.99997
    raw = [1 / e for e in effective]
    expected = torch.tensor([r * 3 / sum(raw) for r in raw])
    weights = class_balanced_weights(counts, beta=beta)
    assert torch.allclose(weights, expected.float(), atol=1e-6)
    assert math.isclose(float(weights.sum()), 3.0, rel_tol=1e-6)
    assert torch.all(weights[:-1] > weights[1:])  # rarer class, larger weight
    assert torch.allclose(class_balanced_weights(counts, beta=0.0), torch.ones(3))


def test_class_balanced_weights_rejects_bad_beta_and_counts():
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights([1, 2], beta=1.0)
    with pytest.raises(ValueError, match="class_counts"):
        class_balanced_weights([3, 0, 2])


# ----------------------------------------------------------------------------------------------------------
# LDAM and DRW
# ----------------------------------------------------------------------------------------------------------
def test_ldam_margins_hand_computed():
    # n^{-1/4} = 1, 1/2, 1/3 -> scaled so the largest is 0.5
    assert torch.allclose(ldam_margins([1, 16, 81], max_margin=0.5), torch.tensor([0.5, 0.25, 0.5 / 3]))


def test_ldam_loss_matches_formula(batch):
    logits, targets = batch
    scale = 30.0
    margins = torch.tensor(COUNTS, dtype=torch.float64) ** -0.25
    margins = margins * 0.5 / margins.max()
    rows = torch.arange(len(targets))
    z_y = scale * (logits[rows, targets] - margins[targets])  # (N,)
    z = scale * logits.clone()
    z[rows, targets] = z_y
    per_sample = -z_y + torch.log(torch.exp(z).sum(1))
    loss = LDAMLoss(COUNTS, max_margin=0.5, scale=scale)
    assert torch.allclose(loss(logits, targets), per_sample.mean())
    weight = class_balanced_weights(COUNTS).double()
    expected_weighted = (weight[targets] * per_sample).sum() / weight[targets].sum()
    assert torch.allclose(loss(logits, targets, weight=weight), expected_weighted)


def test_drw_schedule_switches_at_drw_epoch():
    assert drw_weights(COUNTS, epoch=0, drw_epoch=3) is None
    assert drw_weights(COUNTS, epoch=2, drw_epoch=3) is None
    expected = class_balanced_weights(COUNTS, beta=0.999)
    assert torch.equal(drw_weights(COUNTS, epoch=3, drw_epoch=3, beta=0.999), expected)
    assert torch.equal(drw_weights(COUNTS, epoch=10, drw_epoch=3, beta=0.999), expected)
    with pytest.raises(ValueError, match="epoch"):
        drw_weights(COUNTS, epoch=-1, drw_epoch=3)


def test_make_loss_ldam_drw_follows_schedule(batch):
    logits, targets = batch
    loss_fn = build_loss("ldam_drw", COUNTS, drw_epoch=2, beta=0.999)
    ldam = LDAMLoss(COUNTS)
    assert torch.allclose(loss_fn(logits, targets, epoch=1), ldam(logits, targets))
    weighted = ldam(logits, targets, weight=class_balanced_weights(COUNTS, beta=0.999))
    assert torch.allclose(loss_fn(logits, targets, epoch=2), weighted)
    assert not torch.allclose(weighted, ldam(logits, targets))
    with pytest.raises(ValueError, match="epoch"):
        loss_fn(logits, targets)
    with pytest.raises(ValueError, match="drw_epoch"):
        build_loss("ldam_drw", COUNTS)


# ----------------------------------------------------------------------------------------------------------
# Balanced softmax, LACE, post-hoc adjustment
# ----------------------------------------------------------------------------------------------------------
def test_balanced_softmax_matches_formula(batch):
    logits, targets = batch
    n = torch.tensor(COUNTS, dtype=torch.float64)
    rows = torch.arange(len(targets))
    numerator = n[targets] * logits[rows, targets].exp()  # n_y e^{z_y}
    expected = -torch.log(numerator / (n * logits.exp()).sum(1)).mean()
    assert torch.allclose(balanced_softmax_ce(logits, targets, COUNTS), expected)
    assert torch.allclose(logit_adjusted_ce(logits, targets, COUNTS, tau=1.0), expected)


def test_balanced_softmax_with_smoothing_is_lace_at_tau_one(batch):
    """The negative control's two losses: CE(z + log n) and CE(z + log(n / N)) with the same smoothing."""
    logits, targets = batch
    torch.testing.assert_close(balanced_softmax_ce(logits, targets, COUNTS, label_smoothing=0.1),
                               logit_adjusted_ce(logits, targets, COUNTS, tau=1.0, label_smoothing=0.1))
    assert not torch.allclose(balanced_softmax_ce(logits, targets, COUNTS, label_smoothing=0.1),
                              balanced_softmax_ce(logits, targets, COUNTS))


def test_inverse_frequency_ce_is_rac_eq2_as_printed(batch):
    """RAC eq. 2: -(1/N_y) log(e^{f_y} / sum_y' e^{f_y'}), averaged over the samples with a plain mean."""
    logits, targets = batch
    n = torch.tensor(COUNTS, dtype=torch.float64)
    per_sample = softmax_nll(logits, targets) / n[targets]
    torch.testing.assert_close(inverse_frequency_ce(logits, targets, COUNTS), per_sample.mean())
    torch.testing.assert_close(inverse_frequency_ce(logits, targets, COUNTS, reduction="sum"), per_sample.sum())
    torch.testing.assert_close(inverse_frequency_ce(logits, targets, COUNTS, reduction="none"), per_sample)
    # Not PyTorch's weighted mean, which divides by sum_i 1/N_{y_i} instead of the number of samples
    assert not torch.allclose(inverse_frequency_ce(logits, targets, COUNTS),
                              cross_entropy(logits, targets, weight=1 / n))


def test_inverse_frequency_ce_reweights_the_smoothed_loss_by_the_sample_class(batch):
    logits, targets = batch
    eps, num_classes = 0.1, logits.shape[1]
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, C)
    smoothed = -(1 - eps) * log_p[torch.arange(len(targets)), targets] - eps / num_classes * log_p.sum(1)
    expected = (smoothed / torch.tensor(COUNTS, dtype=torch.float64)[targets]).mean()
    torch.testing.assert_close(inverse_frequency_ce(logits, targets, COUNTS, label_smoothing=eps), expected)


def test_inverse_frequency_ce_weighs_every_class_equally():
    """The re-weighting of eq. 2: a class's N_y samples together weigh as much as another class's."""
    counts = [6, 2]
    targets = torch.tensor([0] * 6 + [1] * 2)
    logits = torch.zeros(8, 2, dtype=torch.float64, requires_grad=True)
    inverse_frequency_ce(logits, targets, counts).backward()
    # d/dz_y of -log softmax at z = 0 is p_y - 1 = -1/2 per sample: each class totals -(1/2) / 8 * N_y / N_y
    per_class = torch.stack([logits.grad[targets == c, c].sum() for c in (0, 1)])
    torch.testing.assert_close(per_class, torch.full((2,), -0.5 / 8, dtype=torch.float64))


def test_logit_adjusted_ce_matches_formula_with_tau_and_smoothing(batch):
    logits, targets = batch
    tau, eps, num_classes = 0.7, 0.1, logits.shape[1]
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    weighted = prior**tau * logits.exp()  # pi^tau e^z, (N, C)
    log_q = torch.log(weighted / weighted.sum(1, keepdim=True))
    rows = torch.arange(len(targets))
    expected = (-(1 - eps) * log_q[rows, targets] - eps / num_classes * log_q.sum(1)).mean()
    got = logit_adjusted_ce(logits, targets, COUNTS, tau=tau, label_smoothing=eps)
    assert torch.allclose(got, expected)


def test_log_prior_and_posthoc_adjust():
    counts = [30, 10]
    assert torch.allclose(log_prior(counts), torch.tensor([math.log(0.75), math.log(0.25)], dtype=torch.float64))
    logits = torch.zeros(3, 2)
    adjusted = posthoc_logit_adjust(logits, counts, tau=2.0)
    assert torch.allclose(adjusted, torch.tensor([-2 * math.log(0.75), -2 * math.log(0.25)]).expand(3, 2))
    assert adjusted.argmax(1).tolist() == [1, 1, 1]  # equal logits now favour the rare class


def test_zero_counts_are_rejected(batch):
    logits, targets = batch
    zero = [10, 5, 0, 3, 1]
    for fn in (lambda: logit_adjusted_ce(logits, targets, zero), lambda: balanced_softmax_ce(logits, targets, zero),
               lambda: posthoc_logit_adjust(logits, zero), lambda: inverse_frequency_ce(logits, targets, zero)):
        with pytest.raises(ValueError, match=r"class_counts must be positive.*\[2\]"):
            fn()


# ----------------------------------------------------------------------------------------------------------
# Validation and registry
# ----------------------------------------------------------------------------------------------------------
def test_validation_errors_name_the_argument(batch):
    logits, targets = batch
    with pytest.raises(ValueError, match="targets must lie in"):
        cross_entropy(logits, torch.tensor([0, 1, 2, 3, 5, 0, 0, 0]))
    with pytest.raises(ValueError, match="targets must have shape"):
        cross_entropy(logits, targets[:3])
    with pytest.raises(ValueError, match="logits must have shape"):
        focal_loss(logits[0], targets[:1])
    with pytest.raises(ValueError, match="class_counts has 4 entries"):
        logit_adjusted_ce(logits, targets, COUNTS[:4])
    with pytest.raises(ValueError, match="class_counts must be a non-empty 1-D"):
        balanced_softmax_ce(logits, targets, [[1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match="LDAMLoss has 4 classes"):
        LDAMLoss(COUNTS[:4])(logits, targets)
    with pytest.raises(ValueError, match="alpha must have shape"):
        focal_loss(logits, targets, alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match="targets must hold integer"):
        cross_entropy(logits, targets.double())
    with pytest.raises(ValueError, match="N, C > 0"):
        cross_entropy(logits[:0], targets[:0])


def test_make_loss_every_name_gives_finite_scalar_with_gradient(batch):
    logits, targets = batch
    for name in LOSS_NAMES:
        kwargs = {"drw_epoch": 1} if name == "ldam_drw" else {}
        z = logits.clone().requires_grad_(True)
        value = build_loss(name, COUNTS, **kwargs)(z, targets, epoch=3)
        assert value.ndim == 0 and torch.isfinite(value), name
        value.backward()
        assert z.grad is not None and torch.isfinite(z.grad).all(), name


def test_make_loss_matches_direct_calls_and_aliases(batch):
    logits, targets = batch
    assert torch.equal(build_loss("ce", COUNTS, label_smoothing=0.1)(logits, targets),
                       cross_entropy(logits, targets, label_smoothing=0.1))
    assert torch.equal(build_loss("focal", COUNTS, gamma=1.0)(logits, targets), focal_loss(logits, targets, gamma=1.0))
    assert torch.allclose(build_loss("cb_focal", COUNTS, beta=0.99)(logits, targets),
                          focal_loss(logits, targets, alpha=class_balanced_weights(COUNTS, beta=0.99)))
    balce = build_loss("balce", COUNTS)(logits, targets)
    assert torch.equal(balce, build_loss("balanced_softmax", COUNTS)(logits, targets))
    assert torch.equal(build_loss("lace", COUNTS, tau=0.5)(logits, targets),
                       logit_adjusted_ce(logits, targets, COUNTS, tau=0.5))
    assert build_loss("lace", COUNTS).name == "logit_adjusted"
    assert torch.equal(build_loss("balce_eq2", COUNTS, label_smoothing=0.1)(logits, targets),
                       inverse_frequency_ce(logits, targets, COUNTS, label_smoothing=0.1))
    assert build_loss("balce_eq2", COUNTS).name == "inverse_frequency_ce"
    assert torch.equal(build_loss("balce", COUNTS, label_smoothing=0.1)(logits, targets),
                       balanced_softmax_ce(logits, targets, COUNTS, label_smoothing=0.1))


def test_make_loss_errors():
    with pytest.raises(ValueError, match="valid names: ce, focal, cb_focal, ldam_drw"):
        build_loss("crossentropy", COUNTS)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['gamma'\]; valid options: tau, label_smoothing"):
        build_loss("lace", COUNTS, gamma=2.0)
    with pytest.raises(ValueError, match="class_counts must be positive"):
        build_loss("ce", [3, 0])
    with pytest.raises(ValueError, match="class_counts has 5 entries but logits.shape\\[1\\] is 3"):
        build_loss("focal", COUNTS)(torch.zeros(2, 3), torch.tensor([0, 1]))
    assert loss_options("ldam_drw") == ("drw_epoch", "max_margin", "scale", "beta")
    with pytest.raises(TypeError, match="option 'tau' of loss 'lace' must be a number"):
        build_loss("lace", COUNTS, tau="1")


def test_counts_accept_numpy_and_tensor(batch):
    logits, targets = batch
    ref = logit_adjusted_ce(logits, targets, COUNTS)
    assert torch.equal(logit_adjusted_ce(logits, targets, np.array(COUNTS)), ref)
    assert torch.equal(logit_adjusted_ce(logits, targets, torch.tensor(COUNTS)), ref)


@pytest.mark.hostile
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("call, name", [
    (lambda z, y, bad: cross_entropy(z, y, label_smoothing=bad), "label_smoothing"),
    (lambda z, y, bad: focal_loss(z, y, gamma=bad), "gamma"),
    (lambda z, y, bad: class_balanced_weights(COUNTS, beta=bad), "beta"),
    (lambda z, y, bad: drw_weights(COUNTS, epoch=0, drw_epoch=3, beta=bad), "beta"),
    (lambda z, y, bad: ldam_margins(COUNTS, max_margin=bad), "max_margin"),
    (lambda z, y, bad: LDAMLoss(COUNTS, scale=bad), "scale"),
    (lambda z, y, bad: logit_adjusted_ce(z, y, COUNTS, tau=bad), "tau"),
    (lambda z, y, bad: posthoc_logit_adjust(z, COUNTS, tau=bad), "tau"),
    (lambda z, y, bad: balanced_softmax_ce(z, y, COUNTS, label_smoothing=bad), "label_smoothing"),
    (lambda z, y, bad: inverse_frequency_ce(z, y, COUNTS, label_smoothing=bad), "label_smoothing"),
])
def test_every_float_setting_of_a_loss_must_be_finite(batch, call, name, bad):
    logits, targets = batch
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        call(logits, targets, bad)


@pytest.mark.hostile
@pytest.mark.parametrize("name, option", [("ce", "label_smoothing"), ("focal", "gamma"), ("cb_focal", "gamma"),
                                          ("cb_focal", "beta"), ("ldam_drw", "max_margin"), ("ldam_drw", "scale"),
                                          ("ldam_drw", "beta"), ("lace", "tau"), ("lace", "label_smoothing"),
                                          ("balce", "label_smoothing"), ("balce_eq2", "label_smoothing")])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_build_loss_refuses_non_finite_options_when_built(name, option, bad):
    extra = {"drw_epoch": 2} if name == "ldam_drw" else {}
    with pytest.raises(ValueError, match=f"option '{option}' of loss '{name}' must be a finite number, got {bad}"):
        build_loss(name, COUNTS, **extra, **{option: bad})


@pytest.mark.parametrize("name, options, says", [
    ("ce", {"label_smoothing": 1.0}, r"label_smoothing must be a finite number in \[0.0, 1.0\), got 1.0"),
    ("focal", {"gamma": -1.0}, "gamma must be a finite number >= 0.0, got -1.0"),
    ("lace", {"label_smoothing": -0.1}, "label_smoothing must be a finite number in"),
    ("ldam_drw", {"drw_epoch": -1}, "drw_epoch must be an integer >= 0, got -1"),
    ("ldam_drw", {"drw_epoch": 2, "scale": 0}, "scale must be a finite number > 0.0, got 0"),
])
def test_build_loss_checks_option_ranges_when_built(name, options, says):
    with pytest.raises(ValueError, match=says):
        build_loss(name, COUNTS, **options)


def test_an_unknown_reduction_names_the_choices(batch):
    logits, targets = batch
    with pytest.raises(ValueError, match=r"reduction must be one of \['mean', 'none', 'sum'\], got 'avg'"):
        cross_entropy(logits, targets, reduction="avg")
