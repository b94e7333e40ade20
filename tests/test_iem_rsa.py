"""Tests for ltcore.iem.rsa: region partition (Fig. 2), summed-area statistics (eq. 6-7, 12)
and region self-attention (eq. 8-13) of Zhu & Yang, CVPR 2020, Section 3.2."""
from __future__ import annotations

import math

import pytest
import torch

from ltcore.iem.rsa import (
    RSAOutput,
    RegionSelfAttention,
    build_rsa,
    region_count,
    region_kernels,
    region_partition,
    region_statistics,
    region_sums,
    summed_area_table,
)

EPS = 1e-6


def direct_statistics(feature_map: torch.Tensor, regions: torch.Tensor, eps: float = EPS):
    """Region by region, straight from eq. 6-7 (population std, eps under the root)."""
    means, stds, sums = [], [], []
    for top, left, height, width in regions.tolist():
        patch = feature_map[:, :, top : top + height, left : left + width].flatten(2)  # (B, C, h*w)
        mean = patch.mean(dim=-1)  # (B, C)
        means.append(mean)
        stds.append(((patch - mean[..., None]) ** 2).mean(dim=-1).add(eps).sqrt())
        sums.append(patch.sum(dim=-1))
    return torch.stack(means, 1), torch.stack(stds, 1), torch.stack(sums, 1)  # 3 x (B, R, C)


def as_rows(regions: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(row) for row in regions.tolist()]


# --------------------------------------------------------------------------- partition
def test_region_kernels_are_the_four_kernels_of_fig2():
    assert region_kernels(2, 2) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert region_kernels(3, 1) == [(1, 1), (2, 1), (3, 1)]
    assert len(region_kernels(3, 4)) == 12


def test_sliding_3x3_fig2_has_25_regions_in_kernel_then_row_major_order():
    regions = region_partition(3, 3, 2, 2)
    assert regions.dtype == torch.long and regions.shape == (25, 4)
    assert region_count(3, 3, 2, 2) == 25 == 9 + 6 + 6 + 4
    rows = as_rows(regions)
    assert rows[:9] == [(t, l, 1, 1) for t in range(3) for l in range(3)]
    assert rows[9:15] == [(t, l, 1, 2) for t in range(3) for l in range(2)]
    assert rows[15:21] == [(t, l, 2, 1) for t in range(2) for l in range(3)]
    assert rows[21:] == [(0, 0, 2, 2), (0, 1, 2, 2), (1, 0, 2, 2), (1, 1, 2, 2)]
    assert len(set(rows)) == 25  # sliding never repeats a rectangle


@pytest.mark.parametrize("H, W, h_max, w_max", [(3, 3, 2, 2), (4, 5, 3, 2), (7, 7, 3, 3), (2, 6, 1, 4)])
def test_sliding_count_formula(H, W, h_max, w_max):
    expected = sum((H - kh + 1) * (W - kw + 1) for kh in range(1, h_max + 1) for kw in range(1, w_max + 1))
    assert len(region_partition(H, W, h_max, w_max)) == expected == region_count(H, W, h_max, w_max)


def test_tiling_clip_3x3_2x2_kernel_gives_the_four_regions_of_fig2():
    regions = region_partition(3, 3, 2, 2, mode="tiling")
    rows = as_rows(regions)
    assert len(rows) == 25 == region_count(3, 3, 2, 2, mode="tiling")  # 9 + 3*2 + 2*3 + 2*2
    assert rows[:9] == [(t, l, 1, 1) for t in range(3) for l in range(3)]
    assert rows[9:15] == [(t, l, 1, w) for t in range(3) for l, w in [(0, 2), (2, 1)]]
    assert rows[-4:] == [(0, 0, 2, 2), (0, 2, 2, 1), (2, 0, 1, 2), (2, 2, 1, 1)]
    assert len(set(rows)) == 16  # clipped border tiles repeat smaller kernels' tiles


def test_tiling_drop_keeps_only_full_tiles():
    rows = as_rows(region_partition(3, 3, 2, 2, mode="tiling", border="drop"))
    assert len(rows) == 16 == 9 + 3 + 3 + 1 == region_count(3, 3, 2, 2, mode="tiling", border="drop")
    assert rows[15:] == [(0, 0, 2, 2)]  # the 2x2 kernel fits once in a 3x3 map
    assert len(set(rows)) == len(rows)
    assert len(region_partition(5, 7, 2, 3, mode="tiling", border="drop")) == sum(
        (5 // kh) * (7 // kw) for kh in (1, 2) for kw in (1, 2, 3)
    )


@pytest.mark.parametrize("border", ["clip", "drop"])
def test_each_tiling_kernel_tiles_the_map_without_overlap(border):
    H, W, h_max, w_max = 5, 7, 3, 4
    regions = region_partition(H, W, h_max, w_max, mode="tiling", border=border)
    assert len(regions) == region_count(H, W, h_max, w_max, mode="tiling", border=border)
    tiles_along = (lambda n, k: -(-n // k)) if border == "clip" else (lambda n, k: n // k)
    start = 0
    for k_h, k_w in region_kernels(h_max, w_max):  # the kernel's tiles are one contiguous block
        n_rows, n_cols = tiles_along(H, k_h), tiles_along(W, k_w)
        tiles = regions[start : start + n_rows * n_cols]
        start += n_rows * n_cols
        cover = torch.zeros(H, W, dtype=torch.long)
        for top, left, height, width in tiles.tolist():
            assert height <= k_h and width <= k_w
            assert border == "clip" or (height, width) == (k_h, k_w)
            cover[top : top + height, left : left + width] += 1
        covered = cover if border == "clip" else cover[: n_rows * k_h, : n_cols * k_w]
        assert bool((covered == 1).all()) and int(cover.sum()) == covered.numel()
    assert start == len(regions)


@pytest.mark.parametrize("mode, border", [("sliding", "clip"), ("tiling", "clip"), ("tiling", "drop")])
@pytest.mark.parametrize("H, W, h_max, w_max", [(3, 3, 2, 2), (4, 6, 4, 3), (7, 5, 3, 5)])
def test_regions_lie_inside_the_map(mode, border, H, W, h_max, w_max):
    top, left, height, width = region_partition(H, W, h_max, w_max, mode, border).unbind(1)
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((height >= 1).all() and (width >= 1).all())
    assert bool((height <= h_max).all() and (width <= w_max).all())
    assert bool((top + height <= H).all() and (left + width <= W).all())


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((3, 3, 4, 2), {}, "h_max"),
        ((3, 3, 2, 5), {}, "w_max"),
        ((3, 3, 0, 2), {}, "h_max"),
        ((0, 3, 1, 1), {}, "H"),
        ((3, 3, 2, 2), {"mode": "grid"}, "mode"),
        ((3, 3, 2, 2), {"mode": "tiling", "border": "pad"}, "border"),
    ],
)
def test_partition_bad_arguments_name_the_argument(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        region_partition(*args, **kwargs)


# --------------------------------------------------------------------------- statistics
def test_summed_area_table_corner_values():
    x = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4)
    table = summed_area_table(x)
    assert table.shape == (1, 1, 4, 5)
    assert bool((table[..., 0, :] == 0).all() and (table[..., :, 0] == 0).all())
    assert table[0, 0, 3, 4].item() == x.sum().item() == 66
    assert table[0, 0, 2, 3].item() == x[..., :2, :3].sum().item() == 0 + 1 + 2 + 4 + 5 + 6


@pytest.mark.parametrize("mode, border", [("sliding", "clip"), ("tiling", "clip"), ("tiling", "drop")])
def test_region_statistics_match_direct_loop(mode, border):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 2.0 + 0.5
    regions = region_partition(4, 5, 3, 2, mode, border)
    mean, std, sums = direct_statistics(x, regions)
    stats = region_statistics(x, regions)
    assert stats.mean.shape == stats.std.shape == stats.sums.shape == (2, len(regions), 3)
    torch.testing.assert_close(stats.mean, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.std, std, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.sums, sums, atol=1e-5, rtol=0)
    torch.testing.assert_close(region_sums(x, regions), sums, atol=1e-5, rtol=0)


def test_region_statistics_float32_with_large_offset_matches_float64_loop():
    torch.manual_seed(1)
    x = torch.randn(2, 16, 7, 7, dtype=torch.float64) + 30.0  # post-ReLU-like: large mean, unit spread
    regions = region_partition(7, 7, 3, 3)
    mean, std, _ = direct_statistics(x, regions)
    stats = region_statistics(x.float(), regions)
    assert stats.std.dtype == torch.float32
    torch.testing.assert_close(stats.mean.double(), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.std.double(), std, atol=1e-5, rtol=0)  # 1x1 regions: sqrt(eps)


def test_region_statistics_accept_a_list_of_tuples_and_one_region():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64).reshape(1, 1, 2, 2)
    stats = region_statistics(x, [(0, 0, 2, 2)])
    assert stats.mean.item() == pytest.approx(3.0)
    assert stats.sums.item() == pytest.approx(12.0)
    assert stats.std.item() == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4 + EPS))


def test_region_statistics_gradients_are_finite_and_correct():
    torch.manual_seed(2)
    constant = torch.ones(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)  # variance 0 everywhere
    stats = region_statistics(constant, region_partition(3, 3, 2, 2))
    (stats.mean.sum() + stats.std.sum()).backward()
    assert torch.isfinite(constant.grad).all()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    regions = region_partition(3, 3, 2, 2)
    assert torch.autograd.gradcheck(lambda t: region_statistics(t, regions)[:2], (x,))


@pytest.mark.parametrize(
    "feature_map, regions, name",
    [
        (torch.zeros(3, 4, 4), [(0, 0, 1, 1)], "feature_map"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.long), [(0, 0, 1, 1)], "feature_map"),
        (torch.zeros(1, 3, 4, 4), [(3, 3, 2, 1)], "regions"),
        (torch.zeros(1, 3, 4, 4), [(0, 0, 0, 1)], "regions"),
        (torch.zeros(1, 3, 4, 4), [(0, 0, 1)], "regions"),
        (torch.zeros(1, 3, 4, 4), [(0.0, 0.0, 1.0, 1.0)], "regions"),
    ],
)
def test_region_statistics_bad_input(feature_map, regions, name):
    with pytest.raises(ValueError, match=name):
        region_statistics(feature_map, regions)


# --------------------------------------------------------------------------- module
@pytest.mark.parametrize("mode", ["sliding", "tiling"])
def test_output_shapes_and_weights_sum_to_one(mode):
    torch.manual_seed(0)
    rsa = build_rsa("tiny", mode=mode)
    x = torch.randn(3, 8, 4, 5)
    out = rsa(x, return_weights=True, return_regions=True)
    R = region_count(4, 5, 2, 2, mode)
    assert isinstance(out, RSAOutput)
    assert out.feature.shape == (3, rsa.out_dim) == (3, 8)
    assert out.weights.shape == (3, R)
    torch.testing.assert_close(out.weights.sum(dim=-1), torch.ones(3))
    assert bool((out.weights >= 0).all())
    assert torch.equal(out.regions, region_partition(4, 5, 2, 2, mode))
    assert out.region_features.shape == (3, R, rsa.attention_dim) == (3, R, 8)
    plain = rsa(x)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, out.feature)
    only_weights = rsa(x, return_weights=True)
    assert only_weights.region_features is None and only_weights.weights is not None
    only_regions = rsa(x, return_regions=True)
    assert only_regions.weights is None and only_regions.region_features is not None


def test_query_projection_option_uses_key_dim():
    rsa = build_rsa("tiny", query_projection=True, value_dim=5)
    out = rsa(torch.randn(2, 8, 3, 3), return_regions=True)
    assert rsa.attention_dim == 4 and rsa.scale == pytest.approx(1 / 2)
    assert out.feature.shape == (2, 5) and out.region_features.shape == (2, 25, 4)
    assert build_rsa("tiny").scale == pytest.approx(1 / math.sqrt(8))  # d = input channel size


def test_gradients_reach_paper_weights_and_input():
    torch.manual_seed(0)
    rsa = build_rsa("tiny")
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = rsa(x, return_regions=True)
    (out.feature.square().sum() + out.region_features.sum()).backward()
    for name, weight in rsa.paper_weights().items():
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name
    for module in (rsa.to_key, rsa.to_value):
        assert module.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["sliding", "tiling"])
def test_forward_matches_eq_6_to_13_computed_region_by_region(mode):
    torch.manual_seed(4)
    rsa = build_rsa("tiny", h_max=2, w_max=3, mode=mode).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    out = rsa(x, return_weights=True, return_regions=True)
    keys, values = rsa.to_key(x), rsa.to_value(x)  # (B, key_dim, H, W), (B, value_dim, H, W)
    mu, sigma, _ = direct_statistics(keys, out.regions)  # eq. 6-7
    _, _, value_sums = direct_statistics(values, out.regions)  # eq. 12
    W_h, W_w = rsa.height_embedding.weight, rsa.width_embedding.weight
    p = torch.stack([torch.cat([W_h[h - 1], W_w[w - 1]]) for _, _, h, w in out.regions.tolist()])  # eq. 8
    concat = torch.cat([mu, sigma, p.expand(2, -1, -1)], dim=-1)
    g = torch.relu(concat @ rsa.key_hidden.weight.T + rsa.key_hidden.bias)  # eq. 9
    g = g @ rsa.key_output.weight.T + rsa.key_output.bias
    query = x.mean(dim=(2, 3))  # eq. 10
    weights = torch.softmax((g @ query[:, :, None]).squeeze(-1) / math.sqrt(8), dim=-1)  # eq. 13, d = C = 8
    torch.testing.assert_close(out.region_features, g)
    torch.testing.assert_close(out.weights, weights)
    torch.testing.assert_close(out.feature, (weights[:, :, None] * value_sums).sum(dim=1))


def _identity_1x1_rsa(channels: int = 2) -> RegionSelfAttention:
    """1x1 regions only, with k = v = g = f for non-negative f (hand-checkable)."""
    rsa = RegionSelfAttention(channels, channels, 1, 1, shape_dim=1, hidden_dim=channels)
    eye = torch.eye(channels)
    with torch.no_grad():
        for conv in (rsa.to_key, rsa.to_value):
            conv.weight.copy_(eye[:, :, None, None])
            conv.bias.zero_()
        rsa.key_hidden.weight.zero_()
        rsa.key_hidden.weight[:, :channels] = eye  # keep mu, drop sigma and p
        rsa.key_hidden.bias.zero_()
        rsa.key_output.weight.copy_(eye)
        rsa.key_output.bias.zero_()
    return rsa


def test_1x1_only_reduces_to_hand_computed_attention():
    rsa = _identity_1x1_rsa()
    a, b = (1.0, 0.0), (0.0, 2.0)
    x = torch.tensor([[a[0], b[0]], [a[1], b[1]]]).reshape(1, 2, 1, 2)  # two positions a, b
    out = rsa(x, return_weights=True, return_regions=True)
    # Q = (a + b) / 2 = (0.5, 1); logits = Q.k / sqrt(2) with k = a, b.
    la, lb = 0.5 / math.sqrt(2), 2.0 / math.sqrt(2)
    wa, wb = math.exp(la) / (math.exp(la) + math.exp(lb)), math.exp(lb) / (math.exp(la) + math.exp(lb))
    assert as_rows(out.regions) == [(0, 0, 1, 1), (0, 1, 1, 1)]
    torch.testing.assert_close(out.weights, torch.tensor([[wa, wb]]))
    torch.testing.assert_close(out.feature, torch.tensor([[wa * a[0] + wb * b[0], wa * a[1] + wb * b[1]]]))
    torch.testing.assert_close(out.region_features, torch.tensor([[a, b]]))  # g = k = f


@pytest.mark.parametrize("h_max, w_max, mode", [(1, 1, "sliding"), (2, 3, "sliding"), (2, 2, "tiling")])
def test_constant_keys_give_uniform_weights_and_mean_of_region_sums(h_max, w_max, mode):
    torch.manual_seed(3)
    rsa = RegionSelfAttention(6, 4, h_max, w_max, mode)
    with torch.no_grad():
        rsa.key_output.weight.zero_()  # g = bias for every region -> equal logits
    x = torch.randn(2, 6, 3, 4)
    out = rsa(x, return_weights=True)
    R = len(out.regions)
    torch.testing.assert_close(out.weights, torch.full((2, R), 1.0 / R))
    values = rsa.to_value(x)  # (B, V, H, W)
    expected = region_sums(values, out.regions).mean(dim=1)  # (B, R, V) -> (B, V)
    torch.testing.assert_close(out.feature, expected)
    if (h_max, w_max) == (1, 1):  # 1x1 regions: RSA collapses to average pooling of v
        torch.testing.assert_close(out.feature, values.mean(dim=(2, 3)))


def test_uniform_weights_control_averages_region_sums_and_keeps_region_features():
    torch.manual_seed(4)
    attended, uniform = RegionSelfAttention(6, 4, 2, 2), RegionSelfAttention(6, 4, 2, 2, uniform_weights=True)
    uniform.load_state_dict(attended.state_dict())
    x = torch.randn(3, 6, 4, 4)
    out, control = attended(x, return_weights=True, return_regions=True), uniform(x, return_weights=True, return_regions=True)
    R = len(control.regions)
    torch.testing.assert_close(control.weights, torch.full((3, R), 1.0 / R))
    assert not torch.allclose(out.weights, control.weights)       # the trained-from-init softmax is not uniform
    torch.testing.assert_close(control.feature, region_sums(uniform.to_value(x), control.regions).mean(dim=1))
    torch.testing.assert_close(control.region_features, out.region_features)


def test_deterministic_for_fixed_seed():
    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(5))
    outputs = []
    for _ in range(2):
        torch.manual_seed(11)
        outputs.append(build_rsa("tiny")(x, return_weights=True))
    assert torch.equal(outputs[0].feature, outputs[1].feature)
    assert torch.equal(outputs[0].weights, outputs[1].weights)


def test_regions_are_cached_per_size_as_non_persistent_buffers():
    rsa = build_rsa("tiny")
    first = rsa.regions_for(3, 3)
    assert rsa.regions_for(3, 3) is first
    rsa(torch.randn(1, 8, 4, 5))
    buffers = dict(rsa.named_buffers())
    assert set(buffers) == {"regions_3x3", "regions_4x5"}
    assert buffers["regions_4x5"].shape == (rsa.region_count(4, 5), 4)
    assert not any(key.startswith("regions_") for key in rsa.state_dict())
    assert rsa.double().regions_for(3, 3).dtype == torch.long


@pytest.mark.parametrize(
    "feature_map, name",
    [
        (torch.randn(8, 3, 3), "feature_map"),
        (torch.randn(1, 7, 3, 3), "in_dim"),
        (torch.randn(1, 8, 1, 3), "h_max"),
        (torch.randn(1, 8, 3, 1), "w_max"),
    ],
)
def test_forward_bad_input_names_the_argument(feature_map, name):
    with pytest.raises(ValueError, match=name):
        build_rsa("tiny")(feature_map)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"mode": "grid"}, "mode"),
        ({"border": "wrap"}, "border"),
        ({"key_dim": 0}, "key_dim"),
        ({"h_max": 0}, "h_max"),
        ({"eps": -1.0}, "eps"),
        ({"not_an_argument": 1}, "not_an_argument"),
    ],
)
def test_constructor_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_rsa("tiny", **kwargs)


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        build_rsa("huge")


# --------------------------------------------------------------------------- hostile inputs (issue 16)
@pytest.mark.hostile
@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_eps_is_refused_everywhere(eps):
    with pytest.raises(ValueError, match="eps must be a finite number"):
        build_rsa("tiny", eps=eps)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        region_statistics(torch.zeros(1, 1, 2, 2), [(0, 0, 1, 1)], eps=eps)


@pytest.mark.hostile
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_feature_map_in_another_dtype_than_the_module_is_a_clear_error(dtype):
    with pytest.raises(ValueError, match=rf"feature_map is {dtype}.*parameters are torch.float32"):
        build_rsa("tiny")(torch.randn(2, 8, 3, 3).to(dtype))


@pytest.mark.hostile
def test_half_precision_region_sums_are_accumulated_in_float32():
    """A half-precision prefix sum over the map overflows past 65,504: the 16x16 map of 300s sums to 76,800."""
    feature_map = torch.full((1, 1, 16, 16), 300.0, dtype=torch.float16)
    regions = region_partition(16, 16, 2, 2)
    sums = region_sums(feature_map, regions)
    assert sums.dtype == torch.float16
    areas = (regions[:, 2] * regions[:, 3]).to(torch.float16)
    torch.testing.assert_close(sums[0, :, 0], 300 * areas)


def test_a_half_precision_module_on_half_input_matches_float32():
    torch.manual_seed(6)
    single = build_rsa("tiny")
    half = build_rsa("tiny").half()
    half.load_state_dict({key: value.half() for key, value in single.state_dict().items()})
    x = torch.randn(2, 8, 4, 4)
    reference, out = single(x, return_weights=True, return_regions=True), half(x.half(), return_weights=True,
                                                                                return_regions=True)
    assert out.feature.dtype == out.weights.dtype == out.region_features.dtype == torch.float16
    torch.testing.assert_close(out.weights.float(), reference.weights, atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(out.feature.float(), reference.feature, atol=2e-2, rtol=2e-2)


def test_autocast_casts_operation_by_operation():
    rsa = build_rsa("tiny")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rsa(torch.randn(2, 8, 3, 3).bfloat16(), return_weights=True)
    assert torch.isfinite(out.feature.float()).all()
    torch.testing.assert_close(out.weights.float().sum(-1), torch.ones(2), atol=1e-2, rtol=0)
