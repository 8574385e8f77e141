"""Multi-scale deformable attention in plain PyTorch (Deformable DETR eq. 3; maskclippp.md §8.2 step 3, spec Q11).

Every query of every head samples ``P`` points on each of the ``L`` value maps with bilinear interpolation
(``F.grid_sample``, ``align_corners=False``, zero padding: a location ``(x, y)`` in ``[0, 1]`` maps to pixel
``(x W - 0.5, y H - 0.5)``) and sums them with softmax weights over the ``L x P`` points. All queries, heads and points
of a level are sampled in one ``grid_sample`` call; the only loop is over the (three) levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Deformable attention core.

    Args:
        value: ``[B, S, M, D]`` values of all levels flattened (``S = sum_l H_l W_l``), ``M`` heads of width ``D``.
        spatial_shapes: ``(H_l, W_l)`` per level, in the order of ``value``.
        sampling_locations: ``[B, Q, M, L, P, 2]`` normalised ``(x, y)`` in ``[0, 1]`` (outside: zeros).
        attention_weights: ``[B, Q, M, L, P]`` (softmax over ``L x P`` already applied).

    Returns:
        ``[B, Q, M * D]``.
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # [B, Q, M, L, P, 2] in grid_sample's [-1, 1]
    sampled = []
    for level, (height, width_l) in enumerate(spatial_shapes):
        value_l = values[level].permute(0, 2, 3, 1).reshape(batch * heads, dim, height, width_l)  # [B M, D, H, W]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B M, Q, P, 2]
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B M, D, Q, L P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (stacked * weights).sum(-1).view(batch, heads * dim, queries)  # [B, M D, Q]
    return output.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable attention layer: offsets and weights predicted from the query, values projected from the input."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: offsets start on rings around the reference in ``M`` directions."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # [M, 2]
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]
        grid = grid[:, None, None, :].expand(self.n_heads, self.n_levels, self.n_points, 2) * scale
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self, query: Tensor, reference_points: Tensor, features: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """``query`` ``[B, Q, C]``, ``reference_points`` ``[B, Q, L, 2]`` normalised ``(x, y)``, ``features``
        ``[B, S, C]`` -> ``[B, Q, C]``."""
        batch, queries, _ = query.shape
        value = self.value_proj(features).view(batch, features.shape[1], self.n_heads, -1)  # [B, S, M, D]
        offsets = self.sampling_offsets(query).view(batch, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, queries, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
