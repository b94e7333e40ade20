"""Pictures of region self-attention: region partitions (IEM Fig. 2) and attention over regions on images.

Paper: Zhu & Yang, CVPR 2020, Section 3.2 (region partition, eq. 13). Regions are int64 [R, 4] rows
``(top, left, height, width)`` in feature-map cells, as :func:`ltcore.iem.rsa.region_partition` lists them.

Taught in notebook 03, *Region partition (Figure 2)* (:func:`plot_partition`), and notebook 03, *RSA on
Fashion-MNIST-LT: where does it look?* (:func:`plot_region_attention`).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle
from torch import Tensor

TOP_COLORS = ("tab:red", "tab:orange", "gold", "tab:green", "tab:cyan")


def kernel_groups(regions: Tensor) -> list[tuple[tuple[int, int], Tensor]]:
    """Split a region list [R, 4] into its kernels' groups: [((k_h, k_w), regions [R_k, 4]), ...].

    :func:`ltcore.iem.rsa.region_partition` lists each kernel's regions together, row-major from the top-left
    corner, in every mode, so a group starts at each region whose corner is (0, 0); its first region is
    never clipped, so its shape is the kernel.
    """
    regions = torch.as_tensor(regions)
    starts = ((regions[:, 0] == 0) & (regions[:, 1] == 0)).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("regions must start with a region at the top-left corner (region_partition order)")
    bounds = starts + [len(regions)]
    return [((int(regions[start, 2]), int(regions[start, 3])), regions[start:end])
            for start, end in zip(bounds[:-1], bounds[1:])]


def region_attention_map(weights: Tensor, regions: Tensor, H: int, W: int) -> Tensor:
    """Attention mass per cell: the summed weights of the regions covering it, [B, R] -> [B, H, W]."""
    regions = torch.as_tensor(regions, device=weights.device)
    if weights.dim() != 2 or weights.shape[1] != len(regions):
        raise ValueError(f"weights must be [B, R={len(regions)}], got {tuple(weights.shape)}")
    rows = torch.arange(H, device=weights.device)[None, :, None]  # (1, H, 1)
    cols = torch.arange(W, device=weights.device)[None, None, :]  # (1, 1, W)
    top, left, height, width = (part[:, None, None] for part in regions.unbind(dim=1))  # 4 x (R, 1, 1)
    covers = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)  # (R, H, W)
    return torch.einsum("br,rhw->bhw", weights, covers.to(weights.dtype))  # (B, R) x (R, H, W) -> (B, H, W)


def _region_patch(region: Sequence[int], scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0),
                  **style) -> Rectangle:
    """A rectangle over a region; cell c spans pixels [c * scale, (c + 1) * scale), imshow centres pixels on integers."""
    top, left, height, width = (int(value) for value in region)
    return Rectangle((left * scale - 0.5 + offset[0], top * scale - 0.5 + offset[1]), width * scale, height * scale,
                     **style)


def plot_partition(regions: Tensor, H: int, W: int, title: str = "") -> plt.Figure:
    """One row per kernel, one small H x W grid per region with the region filled (IEM Fig. 2 redrawn).

    Clipped tiles (smaller than their kernel, ``mode="tiling", border="clip"``) are orange. All grids are drawn
    in one Axes, which keeps the figure cheap to render.
    """
    groups = kernel_groups(regions)
    columns = max(len(group) for _, group in groups)
    step_x, step_y = W + 1, H + 1  # grid size plus a one-cell gap
    fig, ax = plt.subplots(figsize=(0.75 * columns + 0.8, 0.8 * len(groups) + 0.5))
    for row, ((k_h, k_w), group) in enumerate(groups):
        ax.text(-1.0, row * step_y + (H - 1) / 2, f"{k_h}x{k_w}\n({len(group)})", ha="right", va="center", fontsize=9)
        for col, region in enumerate(group.tolist()):
            offset = (col * step_x, row * step_y)
            clipped = (region[2], region[3]) != (k_h, k_w)
            ax.add_patch(_region_patch(region, offset=offset, color="tab:orange" if clipped else "tab:blue",
                                       alpha=0.8))
            for line in range(H + 1):  # the H x W grid of this region
                ax.plot([offset[0] - 0.5, offset[0] + W - 0.5], [offset[1] + line - 0.5] * 2, color="0.5", lw=0.6)
            for line in range(W + 1):
                ax.plot([offset[0] + line - 0.5] * 2, [offset[1] - 0.5, offset[1] + H - 0.5], color="0.5", lw=0.6)
    ax.set_xlim(-2.5, columns * step_x - 1)
    ax.set_ylim(len(groups) * step_y - 1, -1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"{len(regions)} regions on a {H}x{W} map", fontsize=10)
    fig.tight_layout()
    return fig


def _display_image(image: Tensor) -> np.ndarray:
    """[C, H, W] tensor (C = 1 or 3) -> array imshow can draw, min-max scaled to [0, 1]."""
    array = image.detach().cpu().float()
    array = (array - array.min()) / (array.max() - array.min()).clamp_min(1e-8)
    return array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)


def uniform_attention_map(regions: Tensor, H: int, W: int) -> Tensor:
    """The attention mass [H, W] that uniform weights 1/R give: central cells lie in more regions."""
    regions = torch.as_tensor(regions)
    return region_attention_map(torch.full((1, len(regions)), 1.0 / len(regions)), regions, H, W)[0]  # (H, W)


def top_weight_labels(weights: Tensor, top_k: int, tie_tolerance: float = 0.02) -> tuple[Tensor, list[str], bool]:
    """The top_k regions of one image's weights [R], their weights as labels in units of the uniform weight 1/R
    (1.00 = uniform), and whether the ranking is a tie: the k-th weight within ``tie_tolerance`` (relative) of
    the first. Labels get as many decimals (2 to 4) as it takes to tell the shown weights apart."""
    weights = weights.detach().cpu().double()
    order = weights.argsort(descending=True)[:top_k]  # (k,)
    relative = (weights[order] * len(weights)).tolist()  # in units of 1/R
    for decimals in (2, 3, 4):
        labels = [f"{value:.{decimals}f}" for value in relative]
        if len(set(labels)) == len(labels):
            break
    tied = relative[-1] >= (1.0 - tie_tolerance) * relative[0]
    return order, labels, tied


def plot_region_attention(images: Tensor, weights: Tensor, regions: Tensor, map_size: tuple[int, int],
                          titles: Sequence[str] = (), top_k: int = 3, tie_tolerance: float = 0.02,
                          title: str = "") -> plt.Figure:
    """Attention over regions on images [N, C, H_img, W_img]; weights [N, R]; regions [R, 4] on a map_size map.

    Row 1: the image with its top_k regions (rectangles, thicker = heavier) and, under it, their weights in units
    of the uniform weight 1/R (:func:`top_weight_labels`). When the k-th weight is within ``tie_tolerance`` of the
    first, the ranking says nothing: the rectangles are drawn alike (dashed) and the text says "tie within ..." (else "ranked").
    Row 2: the attention mass per cell (:func:`region_attention_map`), upsampled (nearest) to the image.
    Row 3: that mass divided by the mass under uniform attention (:func:`uniform_attention_map`), centred
    on 1, which removes the pattern that region coverage alone gives (more regions contain a central cell).
    ``title`` goes above the figure. All text is at least 8 pt.
    """
    H, W = map_size
    weights = weights.detach().cpu()
    mass = region_attention_map(weights, regions, H, W)  # (N, H, W)
    relative = mass / uniform_attention_map(regions, H, W)  # (N, H, W) / (H, W)

    def upsample(maps: Tensor) -> np.ndarray:  # (N, H, W) -> (N, H_img, W_img), each cell a block of pixels
        return F.interpolate(maps[:, None], size=images.shape[-2:], mode="nearest")[:, 0].numpy()

    mass_pixels, relative_pixels = upsample(mass), upsample(relative)
    scale = images.shape[-1] / W  # image pixels per feature-map cell
    count = len(images)
    fig, axes = plt.subplots(3, count, figsize=(1.9 * count + 1.2, 6.8), squeeze=False)
    overlays = [(mass_pixels, dict(cmap="inferno", vmin=0, vmax=float(mass.max()))),
                (relative_pixels, dict(cmap="coolwarm", norm=TwoSlopeNorm(1.0, min(float(relative.min()), 0.99),
                                                                           max(float(relative.max()), 1.01))))]
    for i in range(count):
        picture = _display_image(images[i])
        box_ax, mass_ax, relative_ax = axes[:, i]
        box_ax.imshow(picture, cmap="gray")
        order, labels, tied = top_weight_labels(weights[i], top_k, tie_tolerance)
        for rank, region in enumerate(order.tolist()):
            box_ax.add_patch(_region_patch(regions[region], scale, fill=False, ec=TOP_COLORS[rank % len(TOP_COLORS)],
                                           lw=1.8 if tied else 3.0 - 0.7 * rank, ls="--" if tied else "-"))
        box_ax.set_xlabel(("tie within " + f"{tie_tolerance:.0%}" if tied else "ranked") + "\n" + ", ".join(labels),
                          fontsize=8, labelpad=2)
        for ax, (pixels, style) in zip((mass_ax, relative_ax), overlays):
            ax.imshow(picture, cmap="gray")
            ax.imshow(pixels[i], alpha=0.65, **style)
        if i < len(titles):
            box_ax.set_title(titles[i], fontsize=8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for row, label in ((1, "summed weight"), (2, "ratio to uniform")):
        bar = fig.colorbar(axes[row, -1].images[-1], ax=axes[row, :].tolist(), fraction=0.02, pad=0.01)
        bar.ax.tick_params(labelsize=8)
        bar.set_label(label, fontsize=8)
    axes[0, 0].set_ylabel(f"top-{top_k} regions\n(weight x R)", fontsize=9)
    axes[1, 0].set_ylabel("attention mass", fontsize=9)
    axes[2, 0].set_ylabel("mass / uniform", fontsize=9)
    fig.suptitle(title or f"Attention over {len(regions)} regions: heaviest regions (weights in units of the "
                          f"uniform 1/R; 'tie': top {top_k} within {tie_tolerance:.0%}), mass per cell, and mass "
                          f"against uniform weights", fontsize=10)
    return fig
