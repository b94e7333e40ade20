"""The attention pictures of notebook 03 compute what they draw."""
import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from ltcore.iem.plots import (kernel_groups, plot_partition, plot_region_attention, region_attention_map,  # noqa: E402
                              top_weight_labels, uniform_attention_map)
from ltcore.iem.rsa import region_kernels, region_partition  # noqa: E402


def test_kernel_groups_follow_the_kernels_in_order():
    regions = region_partition(3, 3, 2, 2)
    groups = kernel_groups(regions)
    assert [kernel for kernel, _ in groups] == region_kernels(2, 2)
    assert [len(group) for _, group in groups] == [9, 6, 6, 4]
    assert torch.equal(torch.cat([group for _, group in groups]), regions)


def test_attention_map_is_the_covering_weight_sum():
    regions = region_partition(3, 3, 2, 2)
    weights = torch.softmax(torch.randn(2, len(regions), generator=torch.Generator().manual_seed(0)), dim=1)
    mass = region_attention_map(weights, regions, 3, 3)
    expected = torch.zeros(2, 3, 3)
    for r, (top, left, height, width) in enumerate(regions.tolist()):  # direct loop over regions and cells
        expected[:, top:top + height, left:left + width] += weights[:, r, None, None]
    assert torch.allclose(mass, expected, atol=1e-6)
    areas = (regions[:, 2] * regions[:, 3]).float()
    assert torch.allclose(mass.sum(dim=(1, 2)), (weights * areas).sum(1), atol=1e-6)


def test_uniform_map_weights_central_cells_more():
    one_by_one = uniform_attention_map(region_partition(3, 3, 1, 1), 3, 3)
    assert torch.allclose(one_by_one, torch.full((3, 3), 1 / 9))
    sliding = uniform_attention_map(region_partition(3, 3, 2, 2), 3, 3)  # 25 regions
    # the centre lies in 1 + 2 + 2 + 4 = 9 regions, a corner in 1 + 1 + 1 + 1 = 4
    assert torch.isclose(sliding[1, 1], torch.tensor(9 / 25)) and torch.isclose(sliding[0, 0], torch.tensor(4 / 25))
    assert torch.isclose(sliding.sum(), torch.tensor((9 * 1 + 6 * 2 + 6 * 2 + 4 * 4) / 25))


def test_partition_figure_draws():
    fig = plot_partition(region_partition(3, 3, 2, 2), 3, 3, title="Fig. 2")
    assert fig.axes


def test_region_attention_figure_draws_three_rows_per_image():
    regions = region_partition(3, 3, 2, 2)
    images = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    weights = torch.softmax(torch.randn(2, len(regions), generator=torch.Generator().manual_seed(2)), dim=1)
    fig = plot_region_attention(images, weights, regions, (3, 3), titles=["a", "b"], top_k=2)
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_title() in ("a", "b", "")]
    assert len(image_axes) >= 6  # boxes, attention mass and mass / uniform for each of the two images
    boxes = [ax for ax in fig.axes if ax.get_title() in ("a", "b")]
    assert [len(ax.patches) for ax in boxes] == [2, 2]  # the top-2 regions of each image


def test_top_weight_labels_tell_the_shown_weights_apart_or_call_a_tie():
    weights = torch.tensor([0.2, 0.3, 0.25, 0.25])  # R = 4, uniform 0.25
    order, labels, tied = top_weight_labels(weights, 2)
    assert order.tolist() == [1, 2] and labels == ["1.20", "1.00"] and not tied
    close = torch.tensor([0.24988, 0.25004, 0.25, 0.25008])  # in units of 1/R: 1.00032 and 1.00016 on top
    _, labels, tied = top_weight_labels(close, 2)
    assert tied and labels == ["1.0003", "1.0002"]  # within 2%: a tie, shown with the decimals that separate them


def test_region_attention_figure_says_tie_when_the_ranking_is_flat():
    regions = region_partition(3, 3, 2, 2)
    images = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    flat = torch.full((1, len(regions)), 1.0 / len(regions))
    fig = plot_region_attention(images, flat, regions, (3, 3), titles=["a"], top_k=3, title="flat")
    box = next(ax for ax in fig.axes if ax.get_title() == "a")
    assert box.get_xlabel().startswith("tie within 2%")
    assert fig._suptitle.get_text() == "flat"
    texts = [box.title, box.xaxis.label] + [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
    assert min(text.get_fontsize() for text in texts) >= 8
