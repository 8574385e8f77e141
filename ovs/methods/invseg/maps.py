"""Aggregated attention and the refined class maps of InvSeg (paper eq. 2; spec §5.1, §6; open points O2-O5).

Shapes: ``B`` rows (views x prompts), ``r`` captured resolution, ``L`` map side (the latent grid, 64 for SD 2.1-base),
``N = L*L`` pixels, ``K`` text tokens (77), ``C`` categories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

QUERY_UPSAMPLING = ("nearest", "bilinear")


def minmax(x: Tensor, dim: int = -2, eps: float = 1e-8) -> Tensor:
    """Min-max normalisation along ``dim`` (the norm(.) of eq. 2): ``(x - min) / (max - min + eps)``."""
    low = x.amin(dim=dim, keepdim=True)
    high = x.amax(dim=dim, keepdim=True)
    return (x - low) / (high - low + eps)


def _grid_resize(x: Tensor, size: int, mode: str) -> Tensor:
    """Resize ``[M, r, r]`` grids to ``[M, size, size]``."""
    if x.shape[-1] == size:
        return x
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[:, None], size=(size, size), mode=mode, **kwargs)[:, 0]


def upsample_self(attention: Tensor, size: int, query_mode: str = "nearest") -> Tensor:
    """Self-attention ``[B, r*r, r*r]`` on an ``L x L`` grid ``[B, L*L, L*L]`` (spec O3).

    Key axes: bilinear ``r -> L``, then every row renormalised to sum 1 (a distribution over pixels again);
    query axes: ``nearest`` repeats each row (DiffSeg's aggregation) or ``bilinear`` interpolates rows.
    """
    if query_mode not in QUERY_UPSAMPLING:
        raise ValueError(f"query upsampling must be one of {QUERY_UPSAMPLING}, got {query_mode!r}.")
    b, n, _ = attention.shape
    r = int(round(n**0.5))
    if r * r != n:
        raise ValueError(f"Self-attention over {n} pixels is not a square grid.")
    keys = _grid_resize(attention.reshape(b * n, r, r), size, "bilinear").reshape(b, n, size * size)
    keys = keys / keys.sum(dim=-1, keepdim=True)  # [B, r*r, L*L], rows sum to 1
    queries = keys.transpose(1, 2).reshape(b * size * size, r, r)  # one query grid per key pixel
    queries = _grid_resize(queries, size, query_mode).reshape(b, size * size, size * size)
    return queries.transpose(1, 2).contiguous()  # [B, L*L (query), L*L (key)]


def upsample_cross(attention: Tensor, size: int) -> Tensor:
    """Cross-attention ``[B, r*r, K]`` bilinearly per token to ``[B, L*L, K]`` (spec O3)."""
    b, n, k = attention.shape
    r = int(round(n**0.5))
    grids = attention.transpose(1, 2).reshape(b * k, r, r)
    return _grid_resize(grids, size, "bilinear").reshape(b, k, size * size).transpose(1, 2)


def aggregate(maps: Mapping[int, Tensor], size: int, weights: Sequence[float] | None, kind: str,
              query_mode: str = "nearest") -> Tensor:
    """Weighted sum over resolutions of the upsampled per-resolution means (paper §"Attention maps"; spec O4).

    Args:
        maps: ``{r: [B, r*r, r*r]}`` (``kind="self"``) or ``{r: [B, r*r, K]}`` (``kind="cross"``).
        weights: one weight per resolution in ascending order of ``r``; ``None`` = equal. Normalised to sum 1.
    """
    resolutions = sorted(maps)
    w = torch.ones(len(resolutions)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
    if len(w) != len(resolutions) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"Need {len(resolutions)} non-negative resolution weights for {resolutions}, got {weights}.")
    w = w / w.sum()
    total = None
    for weight, r in zip(w.tolist(), resolutions):
        up = upsample_self(maps[r], size, query_mode) if kind == "self" else upsample_cross(maps[r], size)
        total = up * weight if total is None else total + up * weight
    assert total is not None
    return total


def class_maps(self_attention: Tensor, cross_attention: Tensor, token_weights: Tensor) -> Tensor:
    """Refined per-category maps ``W [B, N, C]`` in ``[0, 1]`` (eq. 2, spec §5.1 and O5).

    ``M = norm(A_self . A_cross)`` per token column, then each category is the mean of its token maps
    (``token_weights [B, K, C]``: column c holds ``1/n_c`` at the category's token positions) and min-max again.
    Only the token columns that carry a category are multiplied.
    """
    used = token_weights.abs().sum(dim=(0, 2)) > 0  # [K] tokens that belong to some category
    cross = cross_attention[..., used]  # [B, N, K_used]
    refined = minmax(torch.bmm(self_attention, cross), dim=1)  # [B, N, K_used]
    return minmax(torch.bmm(refined, token_weights[:, used]), dim=1)  # [B, N, C]
