"""Region Self-Attention (RSA).

Paper: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for
Long-Tailed Visual Recognition", CVPR 2020, Section 3.2 (region partition,
region key encoding eq. 6-9, attention eq. 10-13) and Section 3.3 / Figure 4
(the region features written to the local memory).
RSA "is inspired by [19]", Area Attention (Li et al., ICML 2019); we take from
that paper the summed-area-table computation of area means and standard
deviations, the order in which areas are listed, and the epsilon under the
square root.

What the module computes, for a feature map ``f`` of shape [B, C, H, W]:

1. Region partition (Fig. 2): a fixed list of R rectangles (top, left, height,
   width), see :func:`region_partition`.
2. Per-position keys and values (a linear layer, i.e. a 1x1 convolution):
   ``k_ij = W_k f_ij``, ``v_ij = W_v f_ij``.
3. Region statistics of the keys, for all regions at once, from summed-area
   tables of ``k`` and ``k**2`` (eq. 6-7), see :func:`region_statistics`.
4. Region-Key-Encoding (eq. 8-9):
   ``p = Concat[One-hot(r_h) W_h, One-hot(r_w) W_w]`` (embedding lookups) and
   ``g = ReLU(Concat[mu, sigma, p] W_o) W_d``.
5. Query = mean-pooled feature map (eq. 10), region values = summed value
   vectors over the region (eq. 12), ``Softmax(Q K^T / sqrt(d)) V`` over the
   R regions (eq. 13).

Region format (used everywhere in this module): an int64 tensor of shape
[R, 4] whose rows are ``(top, left, height, width)`` in feature-map cells,
0-based, so a region covers rows ``top .. top+height-1`` and columns
``left .. left+width-1``.

Interpretations (the paper is under-specified in these places)
-------------------------------------------------------------
* Partition. Text: "We introduce multiple kernels to scan over the whole
  feature map to incorporate multi-scale features." Figure 2 caption: "The
  feature map is 3x3, and the maximum allowed region is 2x2. Four regions are
  generated after partition." Text right after: "We introduce four kernels,
  i.e., 1x1, 1x2, 2x1, 2x2."
  Our reading (default ``mode="sliding"``): every kernel is placed at every
  position where it fits, exactly as Area Attention enumerates areas; the
  caption's "four" counts the four kernels of the following sentence (the
  number of regions on a 3x3 map is then 9 + 6 + 6 + 4 = 25). "Scan over the
  whole feature map" describes a sliding window, and RSA is a variant of Area
  Attention, which attends to all areas.
  Option ``mode="tiling"``: each kernel tiles the map without overlap, with
  stride equal to its size, starting at the top-left corner. Ragged border
  (``border="clip"``, default of this mode): the last row/column of tiles is
  clipped to the map and kept with its true, smaller shape, so every kernel's
  tiles form a partition of the whole map; with this rule the 2x2 kernel alone
  cuts the 3x3 map of Fig. 2 into exactly four regions (2x2, 2x1, 1x2, 1x1),
  the other way to read the caption. A clipped tile can coincide with a tile
  of a smaller kernel; duplicates are kept (each kernel's partition is listed
  whole), so on a 3x3 map with 2x2 maximum, 25 rectangles are listed and 16 are
  distinct. ``border="drop"`` keeps only full tiles (no duplicates; positions
  in a ragged last row/column are then reached only by smaller kernels).
* Region counts. sliding: sum over kernels of (H - k_h + 1)(W - k_w + 1);
  tiling/clip: sum of ceil(H / k_h) ceil(W / k_w); tiling/drop: sum of
  floor(H / k_h) floor(W / k_w). See :func:`region_count`.
* Order. Kernels with k_h in the outer loop and k_w in the inner loop
  ((1,1), (1,2), (2,1), (2,2)), as Area Attention lists areas; within a kernel,
  positions in row-major order (top, then left).
* Keys and values. "We obtain the (key, value)=(k, v) pair by transforming r
  with a linear layer." Our reading: one linear layer per spatial position
  (a 1x1 convolution) for the keys ``k_ij`` [key_dim] and one for the values
  ``v_ij`` [value_dim]; eq. 6-7 take the statistics of ``k_ij`` over a region.
* Standard deviation (eq. 7): population std (divide by r_h r_w), computed as
  ``sqrt(max(E[k^2] - mu^2, 0) + eps)`` with ``eps = 1e-6`` as Area Attention
  does, so the gradient stays finite for 1x1 regions (whose variance is 0; their
  sigma is sqrt(eps)). To limit the cancellation in E[k^2] - mu^2, the map is
  centred per channel (variance is shift-invariant) and the tables are
  accumulated in float64, then cast back to the input dtype.
* Precision. Region sums (eq. 12) of a float16 / bfloat16 map are accumulated
  in float32 and cast back to the input dtype: a prefix sum over the whole map
  in half precision loses small regions' sums to rounding and overflows past
  65,504. The module computes in its parameters' dtype: a feature map of
  another dtype is a ``ValueError`` naming both (cast the module with
  ``.half()`` / ``.to(dtype)``, or the map), except under ``torch.autocast``,
  which casts operation by operation.
* Shape embedding (eq. 8): ``One-hot(r_h) W_h`` is an embedding lookup in a
  table with h_max rows (r_h = 1..h_max); width likewise. Each has
  ``shape_dim`` = key_dim // 2 columns by default, as Area Attention uses half
  the depth for each, so p has (about) key_dim columns like mu and sigma.
* Query and d (eq. 10, 13). "We obtain the query by mean pooling the whole
  feature map f" and "d is the input channel size". Our reading (default
  ``query_projection=False``): the query is the mean-pooled map itself, without
  projection, so it has in_dim = C channels; W_d therefore maps to C, and
  ``d = C`` as the paper says, with no deviation. ``query_projection=True``
  adds a learned linear map C -> key_dim on the pooled map (a common
  self-attention variant, not in the paper); keys g then have key_dim channels
  and we scale by sqrt(key_dim) (the dimension of the dot product), which
  deviates from "d is the input channel size" when key_dim != C.
* Values (eq. 12) are the *sums* of v over the region, as written (not means),
  so larger regions carry larger values; the output has value_dim channels
  (default C, a drop-in for the average pooling that the paper's ablation puts
  in RSA's place).
* Region features for the local memory. Section 3.3: "The region encodings are
  r_1, ..., r_c, where c is the number of generated regions", and Fig. 4:
  "the local memory records region features". Our reading: these are the
  outputs g of Region-Key-Encoding (eq. 9), "the final region representation
  g", one per region; ``forward(..., return_regions=True)`` returns them as
  ``region_features`` [B, R, attention_dim].
* Hidden width of W_o: ``hidden_dim`` defaults to attention_dim (Area
  Attention uses the key depth). Not given in the paper, nor are h_max, w_max.

Taught in notebook 03, *Region self-attention*.
"""
from __future__ import annotations

import inspect
import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcore.checks import check_choice, check_float, check_int

__all__ = [
    "MODES",
    "BORDERS",
    "RSA_VARIANTS",
    "RegionStatistics",
    "RSAOutput",
    "RegionSelfAttention",
    "build_rsa",
    "region_count",
    "region_kernels",
    "region_partition",
    "region_statistics",
    "region_sums",
    "summed_area_table",
]

MODES = ("sliding", "tiling")
BORDERS = ("clip", "drop")
DEFAULT_EPS = 1e-6


# --------------------------------------------------------------------------- #
# Region partition (Fig. 2)
# --------------------------------------------------------------------------- #
def _check_mode(mode: str, border: str) -> None:
    check_choice("mode", mode, MODES)
    check_choice("border", border, BORDERS)


def region_kernels(h_max: int, w_max: int) -> list[tuple[int, int]]:
    """All kernels (k_h, k_w) with 1 <= k_h <= h_max and 1 <= k_w <= w_max.

    k_h varies slowest: ``region_kernels(2, 2) == [(1, 1), (1, 2), (2, 1), (2, 2)]``,
    the "four kernels" of Fig. 2.

    Taught in notebook 03, *Region partition (Figure 2)*.
    """
    h_max, w_max = check_int("h_max", h_max, 1), check_int("w_max", w_max, 1)
    return [(k_h, k_w) for k_h in range(1, h_max + 1) for k_w in range(1, w_max + 1)]


def _check_map_fits(H: int, W: int, h_max: int, w_max: int) -> None:
    for name, value in (("H", H), ("W", W), ("h_max", h_max), ("w_max", w_max)):
        check_int(name, value, 1)
    if h_max > H:
        raise ValueError(f"h_max={h_max} exceeds the feature-map height H={H}")
    if w_max > W:
        raise ValueError(f"w_max={w_max} exceeds the feature-map width W={W}")


def _kernel_positions(size: int, kernel: int, mode: str, border: str) -> list[tuple[int, int]]:
    """(start, extent) of one kernel along one axis of length ``size``."""
    if mode == "sliding":
        return [(start, kernel) for start in range(size - kernel + 1)]
    if border == "drop":
        return [(start, kernel) for start in range(0, size - kernel + 1, kernel)]
    return [(start, min(kernel, size - start)) for start in range(0, size, kernel)]  # clip


def region_partition(
    H: int, W: int, h_max: int, w_max: int, mode: str = "sliding", border: str = "clip"
) -> Tensor:
    """List the regions of an H x W map as an int64 tensor [R, 4] of (top, left, height, width).

    ``mode="sliding"`` (default): every kernel at every position where it fits;
    R = sum over kernels of (H - k_h + 1)(W - k_w + 1), 25 for H = W = 3 and
    h_max = w_max = 2. ``mode="tiling"``: non-overlapping tiles of each kernel
    from the top-left corner; ``border="clip"`` keeps the clipped border tiles
    (R = sum ceil(H/k_h) ceil(W/k_w)), ``border="drop"`` drops them
    (R = sum floor(H/k_h) floor(W/k_w)). ``border`` is ignored when sliding.
    Rows are grouped by kernel in :func:`region_kernels` order, row-major
    within a kernel. See the module docstring for why sliding is the default.

    Taught in notebook 03, *Region partition (Figure 2)*.
    """
    _check_mode(mode, border)
    _check_map_fits(H, W, h_max, w_max)
    rows = [
        (top, left, height, width)
        for k_h, k_w in region_kernels(h_max, w_max)
        for top, height in _kernel_positions(H, k_h, mode, border)
        for left, width in _kernel_positions(W, k_w, mode, border)
    ]
    return torch.tensor(rows, dtype=torch.long)  # (R, 4)


def region_count(
    H: int, W: int, h_max: int, w_max: int, mode: str = "sliding", border: str = "clip"
) -> int:
    """Closed-form number of regions R that :func:`region_partition` lists."""
    _check_mode(mode, border)
    _check_map_fits(H, W, h_max, w_max)

    def along(size: int, kernel: int) -> int:
        if mode == "sliding":
            return size - kernel + 1
        return size // kernel if border == "drop" else -(-size // kernel)

    return sum(along(H, k_h) * along(W, k_w) for k_h, k_w in region_kernels(h_max, w_max))


# --------------------------------------------------------------------------- #
# Region statistics with summed-area tables (eq. 6, 7, 12)
# --------------------------------------------------------------------------- #
class RegionStatistics(NamedTuple):
    """Per-region statistics, each [B, R, C]."""

    mean: Tensor  # eq. 6
    std: Tensor  # eq. 7 (population std, eps under the square root)
    sums: Tensor  # eq. 12 when applied to values


def _check_feature_map(feature_map: Tensor, name: str = "feature_map") -> None:
    if not isinstance(feature_map, Tensor) or feature_map.dim() != 4:
        shape = tuple(feature_map.shape) if isinstance(feature_map, Tensor) else type(feature_map)
        raise ValueError(f"{name} must be a 4-D tensor [B, C, H, W], got {shape}")
    if not feature_map.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {feature_map.dtype}")


def _checked_regions(regions: Tensor | Sequence[Sequence[int]], H: int, W: int) -> Tensor:
    """Validate ``regions`` against an H x W map and return them as int64 [R, 4]."""
    regions = torch.as_tensor(regions)
    if regions.dim() != 2 or regions.shape[1] != 4 or regions.shape[0] == 0:
        raise ValueError(f"regions must have shape [R, 4] with R >= 1, got {tuple(regions.shape)}")
    if regions.is_floating_point() or regions.is_complex() or regions.dtype == torch.bool:
        raise ValueError(f"regions must hold integers, got {regions.dtype}")
    regions = regions.long()
    top, left, height, width = regions.unbind(dim=1)  # 4 x (R,)
    bad = (top < 0) | (left < 0) | (height < 1) | (width < 1) | (top + height > H) | (left + width > W)
    if bool(bad.any()):
        first = regions[bad.nonzero()[0, 0]].tolist()
        raise ValueError(f"regions row {first} (top, left, height, width) lies outside the {H}x{W} map")
    return regions


def summed_area_table(feature_map: Tensor) -> Tensor:
    """Integral image with a zero first row and column: [B, C, H, W] -> [B, C, H+1, W+1].

    ``S[..., y, x]`` is the sum of ``feature_map[..., :y, :x]``, in the map's dtype (:func:`region_sums`
    and :func:`region_statistics` pass half-precision maps in at a wider dtype).
    """
    _check_feature_map(feature_map)
    table = feature_map.cumsum(dim=-1).cumsum(dim=-2)  # (B, C, H, W), inclusive prefix sums
    return F.pad(table, (1, 0, 1, 0))  # (B, C, H, W) -> (B, C, H+1, W+1)


def _region_sums_from_table(table: Tensor, regions: Tensor) -> Tensor:
    """Box sums from a padded table [B, C, H+1, W+1] for int64 regions [R, 4] -> [B, R, C].

    The 4-corner formula S[b, r] - S[t, r] - S[b, l] + S[t, l] is applied as one matrix
    product with a [(H+1)(W+1), R] matrix holding +1 / -1 at each region's corners: same
    numbers as gathering the four corners, but its backward is a matrix product too
    (the gather's backward, a scatter-add, is several times slower on CPU).
    """
    row_stride = table.shape[-1]  # W + 1
    top, left, height, width = regions.to(table.device).unbind(dim=1)  # 4 x (R,)
    bottom, right = top + height, left + width
    corners = torch.stack(  # (4, R) flat indices into the (H+1)(W+1) table
        [bottom * row_stride + right, top * row_stride + right, bottom * row_stride + left, top * row_stride + left]
    )
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=table.dtype, device=table.device)  # (4,)
    columns = torch.arange(regions.shape[0], device=table.device).expand_as(corners)  # (4, R)
    corner_matrix = table.new_zeros(table.shape[-2] * row_stride, regions.shape[0])  # ((H+1)(W+1), R)
    corner_matrix[corners, columns] = signs[:, None].expand_as(corners)  # 4 distinct corners per region
    flat = table.flatten(2)  # (B, C, H+1, W+1) -> (B, C, (H+1)(W+1))
    sums = flat @ corner_matrix  # (B, C, (H+1)(W+1)) x ((H+1)(W+1), R) -> (B, C, R)
    return sums.transpose(1, 2)  # (B, C, R) -> (B, R, C)


def region_sums(feature_map: Tensor, regions: Tensor | Sequence[Sequence[int]]) -> Tensor:
    """Sum of ``feature_map`` [B, C, H, W] over every region [R, 4] at once -> [B, R, C] (eq. 12).

    Half-precision maps are summed in float32 and the sums cast back (see *Precision* in the module docstring).
    """
    _check_feature_map(feature_map)
    regions = _checked_regions(regions, *feature_map.shape[-2:])
    accumulated = feature_map.to(torch.promote_types(feature_map.dtype, torch.float32))  # (B, C, H, W)
    return _region_sums_from_table(summed_area_table(accumulated), regions).to(feature_map.dtype)  # (B, R, C)


def region_statistics(
    feature_map: Tensor, regions: Tensor | Sequence[Sequence[int]], eps: float = DEFAULT_EPS
) -> RegionStatistics:
    """Mean (eq. 6), std (eq. 7) and sum of ``feature_map`` [B, C, H, W] over each region.

    All regions at once from two summed-area tables (of the centred map and of
    its square), as Area Attention does: 4 look-ups per region and channel,
    whatever the region size. ``std = sqrt(max(E[x^2] - mean^2, 0) + eps)``.
    Returns three [B, R, C] tensors.

    Taught in notebook 03, *Region statistics with summed-area tables*.
    """
    _check_feature_map(feature_map)
    check_float("eps", eps, 0.0)
    regions = _checked_regions(regions, *feature_map.shape[-2:])
    # float64 accumulation: E[x^2] - mean^2 cancels badly in float32 for small variances
    # (1x1 regions have variance 0 and std sqrt(eps)); the maps are small, so this is cheap.
    accumulated = feature_map.to(torch.promote_types(feature_map.dtype, torch.float64))  # (B, C, H, W)
    centre = accumulated.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1); variance is shift-invariant
    centred = accumulated - centre  # (B, C, H, W)
    centred_and_squared = torch.cat([centred, centred.square()], dim=1)  # (B, C, H, W) x 2 -> (B, 2C, H, W)
    region_totals = _region_sums_from_table(summed_area_table(centred_and_squared), regions)  # (B, R, 2C)
    centred_sum, squared_sum = region_totals.chunk(2, dim=-1)  # 2 x (B, R, C)
    area = (regions[:, 2] * regions[:, 3]).to(accumulated)[None, :, None]  # (R,) -> (1, R, 1)
    centred_mean = centred_sum / area  # (B, R, C)
    variance = (squared_sum / area - centred_mean.square()).clamp_min(0.0)  # (B, R, C)
    mean = centred_mean + centre.flatten(1)[:, None, :]  # (B, R, C) + (B, 1, C)
    dtype = feature_map.dtype
    return RegionStatistics(
        mean=mean.to(dtype), std=torch.sqrt(variance + eps).to(dtype), sums=(mean * area).to(dtype)
    )


# --------------------------------------------------------------------------- #
# The module (eq. 8-13)
# --------------------------------------------------------------------------- #
class RSAOutput(NamedTuple):
    """What :meth:`RegionSelfAttention.forward` returns when asked for more than the feature."""

    feature: Tensor  # (B, value_dim) attended global feature, eq. 13
    weights: Tensor | None  # (B, R) attention over regions (return_weights=True)
    regions: Tensor  # (R, 4) int64 (top, left, height, width)
    region_features: Tensor | None  # (B, R, attention_dim) keys g, eq. 9 (return_regions=True)


class RegionSelfAttention(nn.Module):
    """Region self-attention over a [B, C, H, W] feature map (Section 3.2, eq. 6-13).

    Args:
        in_dim: channels C of the input map (the paper's d when the query is not projected).
        key_dim: channels of the per-position keys k_ij, hence of mu and sigma.
        h_max, w_max: largest region height and width.
        mode, border: region partition, see :func:`region_partition`.
        value_dim: channels of v_ij and of the output (default in_dim).
        shape_dim: columns of each of W_h and W_w (default max(1, key_dim // 2)).
        hidden_dim: output width of W_o (default attention_dim).
        query_projection: if True, Q = Linear(mean-pooled map) with key_dim channels;
            otherwise (the paper) Q is the mean-pooled map itself and keys have in_dim channels.
        eps: added to the variance under the square root of eq. 7.
        uniform_weights: a control, not in the paper: every region weighs 1/R instead of
            eq. 13's softmax (keys, values and sums unchanged), to tell what the attention adds.

    Paper weights: ``height_embedding`` = W_h, ``width_embedding`` = W_w,
    ``key_hidden`` = W_o, ``key_output`` = W_d (see :meth:`paper_weights`).
    Region lists are cached per (H, W) as non-persistent buffers.

    Taught in notebook 03, *Region-Key-Encoding and the attention*.
    """

    def __init__(
        self,
        in_dim: int,
        key_dim: int,
        h_max: int,
        w_max: int,
        mode: str = "sliding",
        border: str = "clip",
        *,
        value_dim: int | None = None,
        shape_dim: int | None = None,
        hidden_dim: int | None = None,
        query_projection: bool = False,
        eps: float = DEFAULT_EPS,
        uniform_weights: bool = False,
    ) -> None:
        super().__init__()
        in_dim, key_dim = check_int("in_dim", in_dim, 1), check_int("key_dim", key_dim, 1)
        h_max, w_max = check_int("h_max", h_max, 1), check_int("w_max", w_max, 1)
        _check_mode(mode, border)
        value_dim = check_int("value_dim", in_dim if value_dim is None else value_dim, 1)
        shape_dim = check_int("shape_dim", max(1, key_dim // 2) if shape_dim is None else shape_dim, 1)
        eps = check_float("eps", eps, 0.0)
        self.in_dim, self.key_dim, self.value_dim, self.shape_dim = in_dim, key_dim, value_dim, shape_dim
        self.h_max, self.w_max, self.mode, self.border, self.eps = h_max, w_max, mode, border, eps
        self.uniform_weights = bool(uniform_weights)
        self.attention_dim = key_dim if query_projection else in_dim
        self.hidden_dim = check_int("hidden_dim", self.attention_dim if hidden_dim is None else hidden_dim, 1)
        self.scale = 1.0 / math.sqrt(self.attention_dim)  # 1 / sqrt(d), eq. 13

        self.to_key = nn.Conv2d(in_dim, key_dim, kernel_size=1)  # k_ij: per-position linear layer
        self.to_value = nn.Conv2d(in_dim, value_dim, kernel_size=1)  # v_ij
        self.to_query = nn.Linear(in_dim, key_dim) if query_projection else None
        self.height_embedding = nn.Embedding(h_max, shape_dim)  # W_h, row r_h - 1 = One-hot(r_h) W_h
        self.width_embedding = nn.Embedding(w_max, shape_dim)  # W_w
        self.key_hidden = nn.Linear(2 * key_dim + 2 * shape_dim, self.hidden_dim)  # W_o
        self.key_output = nn.Linear(self.hidden_dim, self.attention_dim)  # W_d

    @property
    def out_dim(self) -> int:
        """Channels of the attended feature (= value_dim)."""
        return self.value_dim

    def paper_weights(self) -> dict[str, Tensor]:
        """The learnable matrices of eq. 8-9 under their paper names."""
        return {
            "W_h": self.height_embedding.weight,
            "W_w": self.width_embedding.weight,
            "W_o": self.key_hidden.weight,
            "W_d": self.key_output.weight,
        }

    def regions_for(self, H: int, W: int) -> Tensor:
        """Region list [R, 4] for an H x W map, built once and cached as a buffer."""
        name = f"regions_{H}x{W}"
        cached = getattr(self, name, None)
        if cached is None:
            cached = region_partition(H, W, self.h_max, self.w_max, self.mode, self.border)
            self.register_buffer(name, cached.to(self.key_output.weight.device), persistent=False)
        return cached

    def region_count(self, H: int, W: int) -> int:
        """Number of regions R on an H x W map."""
        return region_count(H, W, self.h_max, self.w_max, self.mode, self.border)

    def encode_region_keys(self, mean: Tensor, std: Tensor, regions: Tensor) -> Tensor:
        """Region-Key-Encoding, eq. 8-9: mu, sigma [B, R, key_dim] and regions [R, 4] -> g [B, R, attention_dim]."""
        heights = self.height_embedding(regions[:, 2] - 1)  # (R,) -> (R, shape_dim): One-hot(r_h) W_h
        widths = self.width_embedding(regions[:, 3] - 1)  # (R,) -> (R, shape_dim): One-hot(r_w) W_w
        shape_code = torch.cat([heights, widths], dim=-1)  # (R, 2 shape_dim): p, eq. 8
        shape_code = shape_code.expand(mean.shape[0], -1, -1)  # (R, 2 shape_dim) -> (B, R, 2 shape_dim)
        stacked = torch.cat([mean, std, shape_code], dim=-1)  # (B, R, 2 key_dim + 2 shape_dim)
        return self.key_output(F.relu(self.key_hidden(stacked)))  # (B, R, hidden) -> (B, R, attention_dim)

    def query(self, feature_map: Tensor) -> Tensor:
        """Eq. 10: mean-pooled map [B, C, H, W] -> Q [B, attention_dim] (projected only if asked)."""
        pooled = feature_map.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        return pooled if self.to_query is None else self.to_query(pooled)  # (B, attention_dim)

    def _check_input(self, feature_map: Tensor) -> None:
        _check_feature_map(feature_map)
        channels, H, W = feature_map.shape[1:]
        if channels != self.in_dim:
            raise ValueError(f"feature_map has {channels} channels but in_dim={self.in_dim}")
        if self.h_max > H:
            raise ValueError(f"h_max={self.h_max} exceeds the feature-map height H={H}")
        if self.w_max > W:
            raise ValueError(f"w_max={self.w_max} exceeds the feature-map width W={W}")
        parameter_dtype = self.key_output.weight.dtype
        if feature_map.dtype != parameter_dtype and not torch.is_autocast_enabled(feature_map.device.type):
            raise ValueError(f"feature_map is {feature_map.dtype} but RegionSelfAttention's parameters are "
                             f"{parameter_dtype}: cast one to the other (rsa.to({feature_map.dtype}) or "
                             f"feature_map.to({parameter_dtype}))")

    def forward(
        self, feature_map: Tensor, return_weights: bool = False, return_regions: bool = False
    ) -> Tensor | RSAOutput:
        """Attend over the regions of ``feature_map`` [B, C, H, W].

        Returns the attended feature [B, out_dim]; if ``return_weights`` or
        ``return_regions`` is set, an :class:`RSAOutput` (feature, weights [B, R]
        or None, regions [R, 4], region_features [B, R, attention_dim] or None).
        """
        self._check_input(feature_map)
        regions = self.regions_for(*feature_map.shape[-2:])  # (R, 4)
        encodes_region_keys = return_regions or not self.uniform_weights  # the uniform control needs them if asked
        keys = self.to_key(feature_map) if encodes_region_keys else None  # (B, C, H, W) -> (B, key_dim, H, W)
        values = self.to_value(feature_map)  # (B, C, H, W) -> (B, value_dim, H, W)
        region_keys = None
        if encodes_region_keys:
            stats = region_statistics(keys, regions, eps=self.eps)  # mean, std: (B, R, key_dim), eq. 6-7
            region_keys = self.encode_region_keys(stats.mean, stats.std, regions)  # (B, R, attention_dim), eq. 11
        region_values = region_sums(values, regions)  # (B, R, value_dim), eq. 12
        if self.uniform_weights:  # the control: 1/R for every region
            weights = region_values.new_full(region_values.shape[:2], 1.0 / len(regions))  # (B, R)
        else:
            query = self.query(feature_map)  # (B, attention_dim), eq. 10
            logits = torch.einsum("bd,brd->br", query, region_keys) * self.scale  # (B, d) x (B, R, d) -> (B, R)
            weights = logits.softmax(dim=-1)  # (B, R), softmax over regions, eq. 13
        feature = torch.einsum("br,brv->bv", weights, region_values)  # (B, R) x (B, R, V) -> (B, V)
        if not (return_weights or return_regions):
            return feature
        return RSAOutput(
            feature=feature,
            weights=weights if return_weights else None,
            regions=regions,
            region_features=region_keys if return_regions else None,
        )

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
            f"attention_dim={self.attention_dim}, h_max={self.h_max}, w_max={self.w_max}, "
            f"mode={self.mode!r}, border={self.border!r}"
        )


# --------------------------------------------------------------------------- #
# Named variants
# --------------------------------------------------------------------------- #
RSA_VARIANTS: dict[str, dict[str, object]] = {
    # Small enough for unit tests and notebooks on CPU.
    "tiny": dict(in_dim=8, key_dim=4, h_max=2, w_max=2),
    # ResNet-10 (ImageNet-LT backbone, 512 channels, 7x7 map at 224 px). The paper
    # gives neither key_dim nor h_max/w_max: key_dim = C and a 3x3 maximum are our choices.
    "resnet10": dict(in_dim=512, key_dim=512, h_max=3, w_max=3),
}


def build_rsa(variant: str = "tiny", **overrides: object) -> RegionSelfAttention:
    """Build a named RSA variant; ``overrides`` replace any constructor argument."""
    check_choice("variant", variant, RSA_VARIANTS)
    allowed = set(inspect.signature(RegionSelfAttention.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown RegionSelfAttention argument(s) {unknown}")
    return RegionSelfAttention(**{**RSA_VARIANTS[variant], **overrides})
