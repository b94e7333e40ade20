"""Classification losses for long-tailed training: CE, focal, class-balanced, LDAM-DRW, two BalCEs, LACE.

Papers
------
* RAC (Long et al., CVPR 2022), Sec. 3.1, eq. 2 (BalCE as printed) and Sec. 3.2, eq. 3-4 (the general re-weighted and
  logit-adjusted softmax CE; LACE and LDAM as special cases). RAC trains both branches under LACE with label
  smoothing and tau = 1: "we use LACE as the base loss and do not apply manual temperature adjustment,
  setting tau=1".
* IEM (Zhu & Yang, CVPR 2020), Table 2 and Table 4 baselines: focal loss, CB-focal, LDAM, LDAM+DRW.
* Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, eq. 5: FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t.
* Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019, eq. 3-4:
  E_n = (1 - beta^n) / (1 - beta), class weight proportional to 1 / E_n, normalised to sum to C.
* Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019, eq. 10-13
  and Alg. 1: margin Delta_j = C / n_j^{1/4}; deferred re-weighting (DRW) switches to class-balanced weights
  after a fixed epoch (epoch 160 of 200 on CIFAR in their code).
* Ren et al., "Balanced Meta-Softmax", NeurIPS 2020: balanced softmax = CE(z + log n).
* Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, eq. 9-10: logit-adjusted loss
  CE(z + tau log pi) and post-hoc adjustment argmax_y z_y - tau log pi_y.

Choices and readings
--------------------
* BalCE: two different losses go by that name, and both are here.

  - RAC eq. 2 as printed (``inverse_frequency_ce``, ``build_loss("balce_eq2")``):

        l_BalCE(x, y, f) = -(1/N_y) log( e^{f_y(x)} / sum_{y'} e^{f_{y'}(x)} )              (RAC eq. 2)

    "a form of re-weighting, where the contribution of each label's individual loss is scaled by ... the
    inverse class frequency" (Sec. 3.1). The batch loss is the plain mean of eq. 2 over the samples, so every
    class contributes its *average* per-sample loss (n_y samples times 1/N_y), whatever its size. With label
    smoothing eps the per-sample term that is re-weighted is the smoothed CE,
    (1/N_y) [(1 - eps)(-log p_y) + (eps / C) sum_c (-log p_c)].
    (``cross_entropy(weight=1 / counts)`` is not this loss: PyTorch's weighted mean divides by sum_i w_{y_i},
    and with smoothing it weighs each -log p_c by w_c instead of the sample's 1/N_y.)
  - Ren et al.'s balanced softmax (``balanced_softmax_ce``, ``build_loss("balanced_softmax")``, alias
    ``"balce"``), whose name RAC uses ("the Balanced Softmax Cross Entropy (BalCE)", Sec. 3.1): the logit form
    CE(z + log n). It equals LACE at tau = 1 (below), so it is *not* a different loss from RAC's Base.

  Our reading: eq. 2 is what RAC wrote, so the claims compare Base (LACE) against it; Ren et al.'s form is
  the negative control that must come out equal to LACE (:mod:`ltcore.claims`).
* LACE. RAC eq. 3 with alpha_y = 1, Delta_y = log(N_y / N): ``logit_adjusted_ce`` = CE(z + tau log pi),
  pi = counts / counts.sum(). With tau = 1 it equals ``balanced_softmax_ce`` (log N shifts every logit equally).
* LDAM sign. RAC eq. 4 puts LDAM in the "+ tau Delta_y" form with Delta_y = N_y^{-1/4}; Cao et al. *subtract*
  the margin from the true-class logit (a margin must make the true class harder), and scale all logits by s:
  loss = CE(s * (z - m_y e_y)). We follow Cao et al. and their code: m_j proportional to n_j^{-1/4}, the
  largest margin equal to ``max_margin`` (0.5), s = 30. Cao et al. feed cosine logits (normalised features and
  weights) into LDAM; ``LDAMLoss`` takes whatever logits it is given.
* Reductions. ``cross_entropy`` wraps ``F.cross_entropy``: with ``weight`` its mean is the weighted mean
  sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch semantics, also what LDAM-DRW's code uses), and with label
  smoothing eps the per-sample term is (1 - eps) w_y (-log p_y) + (eps / C) sum_c w_c (-log p_c).
  ``focal_loss`` averages alpha_{y_i} (1 - p_{y_i})^gamma (-log p_{y_i}) with a plain mean over samples
  (Lin et al.). (LDAM-DRW's FocalLoss computes p_t from the *weighted* CE, exp(-w_y CE); we use the
  unweighted p_t of Lin et al.)
* CB-focal here is softmax focal loss with class-balanced alpha; Cui et al.'s CB-focal is sigmoid-based.
* Every class count must be >= 1: log 0 (LACE, balanced softmax) and 1 - beta^0 = 0 (class-balanced
  weights) are undefined, so a zero count is an error rather than a silent inf. Every float setting (tau,
  gamma, beta, max_margin, scale, label_smoothing) must be finite (``ltcore.checks.check_float``).

Taught in notebook 01, *Baselines*.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltcore.checks import check_choice, check_float, check_int

CountsLike = Union[np.ndarray, torch.Tensor, Sequence[int]]
_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def _as_counts(class_counts: CountsLike, num_classes: Optional[int] = None) -> torch.Tensor:
    """(C,) float64 tensor of strictly positive, finite class counts."""
    if isinstance(class_counts, torch.Tensor):
        counts = class_counts.detach().cpu().to(torch.float64)
    else:
        counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if not torch.isfinite(counts).all():
        raise ValueError("class_counts contains nan or inf")
    if (counts <= 0).any():
        zero = torch.nonzero(counts <= 0).flatten().tolist()
        raise ValueError(
            f"class_counts must be positive (log 0 / empty classes are undefined); "
            f"class(es) {zero[:10]} have count <= 0"
        )
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(f"class_counts has {counts.numel()} entries but logits.shape[1] is {num_classes}")
    return counts


def _check_logits_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"logits and targets must be torch tensors, got {type(logits).__name__} and {type(targets).__name__}"
        )
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with N, C > 0, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape (N,) = ({logits.shape[0]},) to match logits, got {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"targets must hold integer class ids, got {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(
            f"targets must lie in [0, {logits.shape[1]}); got min {int(targets.min())}, max {int(targets.max())}"
        )


def _per_class_vector(values: Any, name: str, logits: torch.Tensor) -> torch.Tensor:
    """(C,) tensor on logits' device/dtype from a per-class sequence (weight, alpha)."""
    vec = torch.as_tensor(
        values.detach() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)
    )
    vec = vec.to(device=logits.device, dtype=logits.dtype)
    if vec.ndim != 1 or vec.numel() != logits.shape[1]:
        raise ValueError(f"{name} must have shape ({logits.shape[1]},) = (C,), got {tuple(vec.shape)}")
    if not torch.isfinite(vec).all() or (vec < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return vec


def _check_reduction(reduction: str) -> None:
    check_choice("reduction", reduction, _REDUCTIONS)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample


# ----------------------------------------------------------------------------------------------------------
# Priors and class weights
# ----------------------------------------------------------------------------------------------------------
def log_prior(class_counts: CountsLike) -> torch.Tensor:
    """log pi with pi = counts / counts.sum(). class_counts: (C,) -> (C,) float64 (RAC eq. 3 Delta_y)."""
    counts = _as_counts(class_counts)
    return torch.log(counts) - torch.log(counts.sum())


def class_balanced_weights(class_counts: CountsLike, beta: float = 0.9999) -> torch.Tensor:
    """Cui et al. 2019 weights: w_c proportional to (1 - beta) / (1 - beta^{n_c}), scaled so sum_c w_c = C.

    class_counts: (C,) -> (C,) float32. beta = 0 gives all ones; beta -> 1 approaches inverse frequency.
    """
    beta = check_float("beta", beta, 0.0, 1.0, high_open=True)
    counts = _as_counts(class_counts)
    effective_num = (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)  # E_n
    weights = 1.0 / effective_num
    return (weights * counts.numel() / weights.sum()).to(torch.float32)


def ldam_margins(class_counts: CountsLike, max_margin: float = 0.5) -> torch.Tensor:
    """Cao et al. margins m_c proportional to n_c^{-1/4}, the largest equal to max_margin. (C,) -> (C,) float32."""
    max_margin = check_float("max_margin", max_margin, 0.0, low_open=True)
    inv_quartic = _as_counts(class_counts).pow(-0.25)
    return (inv_quartic * (max_margin / inv_quartic.max())).to(torch.float32)


def drw_weights(
    class_counts: CountsLike, epoch: int, drw_epoch: int, beta: float = 0.9999
) -> Optional[torch.Tensor]:
    """Deferred re-weighting schedule (Cao et al. Alg. 1): None (unweighted) for epoch < drw_epoch, then the
    class-balanced weights. Epochs count from 0 as in Cao et al.'s code (``epoch // 160`` picks beta from
    [0, 0.9999]), so weights apply from epoch == drw_epoch on. Call once per epoch from the trainer."""
    epoch, drw_epoch = check_int("epoch", epoch, 0), check_int("drw_epoch", drw_epoch, 0)
    check_float("beta", beta, 0.0, 1.0, high_open=True)
    if epoch < drw_epoch:
        _as_counts(class_counts)  # validate even when unused, so a bad config fails at epoch 0
        return None
    return class_balanced_weights(class_counts, beta=beta)


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    weight: Optional[Any] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy. logits: (N, C), targets: (N,) int -> scalar (or (N,) if reduction="none").

    ``weight``: optional (C,) per-class weights (weighted-mean reduction, see module docstring).
    """
    _check_logits_targets(logits, targets)
    _check_reduction(reduction)
    label_smoothing = check_float("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    weight_vec = None if weight is None else _per_class_vector(weight, "weight", logits)
    return F.cross_entropy(
        logits, targets.long(), weight=weight_vec, label_smoothing=label_smoothing, reduction=reduction
    )


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    alpha: Optional[Any] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax focal loss (Lin et al. eq. 5): -alpha_y (1 - p_y)^gamma log p_y, plain mean over samples.

    logits: (N, C), targets: (N,); alpha: optional (C,) per-class weights. gamma = 0, alpha = None is CE.
    """
    _check_logits_targets(logits, targets)
    _check_reduction(reduction)
    gamma = check_float("gamma", gamma, 0.0)
    log_p_target = F.log_softmax(logits, dim=1).gather(1, targets.long()[:, None]).squeeze(1)  # (N, 1) -> (N,)
    modulating = (1.0 - log_p_target.exp()).clamp_min(0.0).pow(gamma)  # clamp: p may round to 1 + eps
    per_sample = -modulating * log_p_target  # (N,)
    if alpha is not None:
        per_sample = per_sample * _per_class_vector(alpha, "alpha", logits)[targets.long()]
    return _reduce(per_sample, reduction)


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss (Cao et al. eq. 13): CE(s * (z - m_y e_y), y, weight).

    class_counts: (C,); forward(logits (N, C), targets (N,), weight=None (C,)) -> scalar.
    Margins ``m`` (buffer, (C,)) from ``ldam_margins``. Pair with ``drw_weights`` for LDAM-DRW.
    """

    margins: torch.Tensor

    def __init__(self, class_counts: CountsLike, max_margin: float = 0.5, scale: float = 30.0) -> None:
        super().__init__()
        self.scale = check_float("scale", scale, 0.0, low_open=True)
        self.register_buffer("margins", ldam_margins(class_counts, max_margin=max_margin))

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weight: Optional[Any] = None, reduction: str = "mean"
    ) -> torch.Tensor:
        _check_logits_targets(logits, targets)
        if logits.shape[1] != self.margins.numel():
            raise ValueError(f"LDAMLoss has {self.margins.numel()} classes but logits.shape[1] is {logits.shape[1]}")
        margins = self.margins.to(device=logits.device, dtype=logits.dtype)
        target_margin = F.one_hot(targets.long(), logits.shape[1]).to(logits.dtype) * margins  # (N, C), m_y at y
        return cross_entropy(self.scale * (logits - target_margin), targets, weight=weight, reduction=reduction)


def balanced_softmax_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: CountsLike,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Balanced softmax (Ren et al. 2020): CE(z + log n). logits: (N, C), targets: (N,), class_counts: (C,).

    Not RAC's eq. 2 as printed (that is :func:`inverse_frequency_ce`; module docstring). Equals
    ``logit_adjusted_ce`` with tau = 1 and the same label smoothing: log n and log(n / N) differ by log N on
    every logit, which the softmax ignores.
    """
    _check_logits_targets(logits, targets)
    log_counts = torch.log(_as_counts(class_counts, logits.shape[1])).to(device=logits.device, dtype=logits.dtype)
    return cross_entropy(logits + log_counts, targets, label_smoothing=label_smoothing, reduction=reduction)


def inverse_frequency_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: CountsLike,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """BalCE as RAC prints it (eq. 2): -(1/N_y) log softmax(z)_y, the cross-entropy re-weighted by 1/N_y.

        l_BalCE(x, y, f) = -(1/N_y) log( e^{f_y(x)} / sum_{y'} e^{f_{y'}(x)} )              (RAC eq. 2)

    logits: (N, C), targets: (N,), class_counts: (C,) all >= 1 -> scalar, or (N,) with reduction="none".
    "mean" is the plain mean of the per-sample eq. 2 (not PyTorch's weighted mean); with ``label_smoothing``
    the smoothed per-sample CE is what 1/N_y re-weights (module docstring).
    """
    _check_logits_targets(logits, targets)
    _check_reduction(reduction)
    inverse_counts = 1.0 / _as_counts(class_counts, logits.shape[1]).to(device=logits.device, dtype=logits.dtype)
    per_sample = cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="none")  # (N,)
    return _reduce(inverse_counts[targets.long()] * per_sample, reduction)  # 1/N_{y_i} * l_i, (N,)


def logit_adjusted_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: CountsLike,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """LACE (RAC eq. 3, alpha_y = 1, Delta_y = log(N_y / N); Menon et al. eq. 10): CE(z + tau log pi).

    logits: (N, C), targets: (N,), class_counts: (C,) all >= 1. RAC uses tau = 1 with label smoothing.
    """
    _check_logits_targets(logits, targets)
    _as_counts(class_counts, logits.shape[1])
    tau = check_float("tau", tau)
    shift = (tau * log_prior(class_counts)).to(device=logits.device, dtype=logits.dtype)  # (C,)
    return cross_entropy(logits + shift, targets, label_smoothing=label_smoothing, reduction=reduction)


def posthoc_logit_adjust(logits: torch.Tensor, class_counts: CountsLike, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. eq. 9): z - tau log pi. logits: (..., C) -> (..., C).

    Apply to a model trained with plain CE before taking the argmax, never on top of LACE-trained logits
    (that would adjust twice).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim == 0:
        raise ValueError("logits must be a floating-point tensor of shape (..., C)")
    tau = check_float("tau", tau)
    shift = (tau * log_prior(_as_counts(class_counts, logits.shape[-1]))).to(
        device=logits.device, dtype=logits.dtype
    )
    return logits - shift


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------
class EpochLoss:
    """A configured loss: ``loss(logits, targets, epoch=None) -> scalar``. Built by ``build_loss``."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor, torch.Tensor, Optional[int]], torch.Tensor],
                 config: dict[str, Any]) -> None:
        self.name, self._fn, self.config = name, fn, config

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, epoch: Optional[int] = None) -> torch.Tensor:
        return self._fn(logits, targets, epoch)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"EpochLoss({self.name!r}{', ' if args else ''}{args})"


def _check_num_classes(counts: torch.Tensor, logits: torch.Tensor) -> None:
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[1] != counts.numel():
        raise ValueError(f"class_counts has {counts.numel()} entries but logits.shape[1] is {logits.shape[1]}")


def _build_ce(class_counts: CountsLike, *, label_smoothing: float = 0.0):
    counts = _as_counts(class_counts)
    label_smoothing = check_float("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)

    def loss(logits, targets, epoch):
        _check_num_classes(counts, logits)
        return cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return loss


def _build_focal(class_counts: CountsLike, *, gamma: float = 2.0):
    counts = _as_counts(class_counts)
    gamma = check_float("gamma", gamma, 0.0)

    def loss(logits, targets, epoch):
        _check_num_classes(counts, logits)
        return focal_loss(logits, targets, gamma=gamma)

    return loss


def _build_cb_focal(class_counts: CountsLike, *, gamma: float = 2.0, beta: float = 0.9999):
    counts = _as_counts(class_counts)
    gamma = check_float("gamma", gamma, 0.0)
    alpha = class_balanced_weights(counts, beta=beta)

    def loss(logits, targets, epoch):
        _check_num_classes(counts, logits)
        return focal_loss(logits, targets, gamma=gamma, alpha=alpha)

    return loss


def _build_ldam_drw(
    class_counts: CountsLike,
    *,
    drw_epoch: Optional[int] = None,
    max_margin: float = 0.5,
    scale: float = 30.0,
    beta: float = 0.9999,
):
    if drw_epoch is None:
        raise ValueError(
            "build_loss('ldam_drw', ...) needs drw_epoch=<epoch at which re-weighting starts> "
            "(Cao et al. use 160 of 200 epochs on CIFAR)"
        )
    counts = _as_counts(class_counts)
    ldam = LDAMLoss(counts, max_margin=max_margin, scale=scale)
    # fail on a bad drw_epoch or beta now, not at the re-weighting epoch mid-training
    drw_weights(counts, 0, drw_epoch, beta=beta)
    class_balanced_weights(counts, beta=beta)

    def loss(logits, targets, epoch):
        if epoch is None:
            raise ValueError("the ldam_drw loss needs epoch=<current epoch> to apply the deferred re-weighting")
        return ldam(logits, targets, weight=drw_weights(counts, epoch, drw_epoch, beta=beta))

    return loss


def _build_balanced_softmax(class_counts: CountsLike, *, label_smoothing: float = 0.0):
    counts = _as_counts(class_counts)
    label_smoothing = check_float("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    return lambda logits, targets, epoch: balanced_softmax_ce(logits, targets, counts,
                                                              label_smoothing=label_smoothing)


def _build_inverse_frequency(class_counts: CountsLike, *, label_smoothing: float = 0.0):
    counts = _as_counts(class_counts)
    label_smoothing = check_float("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    return lambda logits, targets, epoch: inverse_frequency_ce(logits, targets, counts,
                                                               label_smoothing=label_smoothing)


def _build_logit_adjusted(class_counts: CountsLike, *, tau: float = 1.0, label_smoothing: float = 0.0):
    counts = _as_counts(class_counts)
    tau = check_float("tau", tau)
    label_smoothing = check_float("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    return lambda logits, targets, epoch: logit_adjusted_ce(
        logits, targets, counts, tau=tau, label_smoothing=label_smoothing
    )


_LOSS_BUILDERS: dict[str, Callable[..., Callable]] = {
    "ce": _build_ce,
    "focal": _build_focal,
    "cb_focal": _build_cb_focal,
    "ldam_drw": _build_ldam_drw,
    "balanced_softmax": _build_balanced_softmax,
    "logit_adjusted": _build_logit_adjusted,
    "inverse_frequency_ce": _build_inverse_frequency,
}
# "balce" is Ren et al.'s balanced softmax, "balce_eq2" RAC's eq. 2 as printed (module docstring).
LOSS_ALIASES: dict[str, str] = {"balce": "balanced_softmax", "lace": "logit_adjusted",
                                "balce_eq2": "inverse_frequency_ce"}
LOSS_NAMES: tuple[str, ...] = tuple(_LOSS_BUILDERS) + tuple(LOSS_ALIASES)


def _canonical_loss_name(name: str) -> str:
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
    return LOSS_ALIASES.get(name, name)


def loss_options(name: str) -> tuple[str, ...]:
    """Keyword arguments ``build_loss`` accepts for ``name`` (all numeric)."""
    builder = _LOSS_BUILDERS[_canonical_loss_name(name)]
    return tuple(p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY)


def build_loss(name: str, class_counts: CountsLike, **kwargs: Any) -> EpochLoss:
    """Build a loss by name: returns ``loss(logits, targets, epoch=None) -> scalar``.

    Names: "ce" (label_smoothing), "focal" (gamma), "cb_focal" (gamma, beta), "ldam_drw" (drw_epoch required,
    max_margin, scale, beta; ``epoch`` required at call time), "balanced_softmax" / "balce" (Ren et al.;
    label_smoothing), "logit_adjusted" / "lace" (tau, label_smoothing), "inverse_frequency_ce" / "balce_eq2"
    (RAC eq. 2 as printed; label_smoothing). class_counts: (C,) training images per class, all >= 1.
    """
    canonical = _canonical_loss_name(name)
    allowed = loss_options(canonical)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"loss {name!r} got unknown option(s) {unknown}; valid options: {', '.join(allowed) or '(none)'}"
        )
    for key, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"option {key!r} of loss {name!r} must be a number, got {value!r}")
        check_float(f"option {key!r} of loss {name!r}", value)
    return EpochLoss(canonical, _LOSS_BUILDERS[canonical](class_counts, **kwargs), dict(kwargs))
