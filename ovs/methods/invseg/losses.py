"""Contrastive Soft Clustering (paper eq. 3-8) without the N x N x N tensor, and the entropy loss (spec §5, §7).

Shapes: ``B`` views, ``N`` pixels, ``C`` categories. ``A [B, N, N]`` is the row-stochastic self-attention (row i is
pixel i's attention distribution), ``W [B, N, C]`` the refined class maps in ``[0, 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Clamp of attention probabilities before the logarithm (spec §5.2).
PROB_EPS = 1e-8


def weighted_distances(attention: Tensor, weights: Tensor) -> Tensor:
    """``D[b, i, c] = sum_j W_jc S_ij / sum_j W_jc`` with ``S_ij = KL(a_i||a_j) + KL(a_j||a_i)`` (eq. 3, 4).

    Uses spec §5.3: with ``a = clamp(A, 1e-8)``, ``Lg = log a``, ``negH_i = sum_m a_im Lg_im``, ``w_c = sum_j W_jc``,
    ``sum_j W_jc KL(a_i||a_j) = negH_i w_c - (a Lg^T W)_ic`` and ``sum_j W_jc KL(a_j||a_i) = (negH^T W)_c -
    (Lg a^T W)_ic``: O(N^2 C) instead of the N^3 distance tensor. No 1/2 factor (the paper's eq. 3).
    """
    a = attention.float().clamp_min(PROB_EPS)  # [B, N, N]
    log_a = a.log()
    neg_entropy = (a * log_a).sum(dim=-1)  # [B, N]
    w = weights.float()  # [B, N, C]
    mass = w.sum(dim=1)  # [B, C]
    forward = neg_entropy[..., None] * mass[:, None] - torch.bmm(a, torch.bmm(log_a.transpose(1, 2), w))
    backward = torch.bmm(neg_entropy[:, None], w) - torch.bmm(log_a, torch.bmm(a.transpose(1, 2), w))
    return (forward + backward) / mass[:, None].clamp_min(PROB_EPS)  # [B, N, C]


def soft_anchors(weights: Tensor, scale: float = 4.0, offset: float = 0.5, exclusive: bool = False) -> Tensor:
    """``Anchor^c = sigmoid(scale * (M^c - offset))`` (paper §"Contrastive Soft Clustering", Table 3; spec O1);
    ``exclusive`` keeps a pixel's anchor only for its argmax category."""
    anchors = torch.sigmoid(scale * (weights - offset))  # [B, N, C]
    if exclusive:
        winner = torch.nn.functional.one_hot(weights.argmax(dim=-1), weights.shape[-1]).to(anchors.dtype)
        anchors = anchors * winner
    return anchors


def anchor_distance_matrix(attention: Tensor, weights: Tensor, scale: float = 4.0, offset: float = 0.5,
                           exclusive: bool = False) -> Tensor:
    """``G[b, c, c'] = D(Anchor^c, M^{c'})`` of eq. 5 for all category pairs: ``[B, C, C]`` (spec §5.4)."""
    distances = weighted_distances(attention, weights)  # [B, N, C']
    anchors = soft_anchors(weights.float(), scale, offset, exclusive)  # [B, N, C]
    return torch.bmm(anchors.transpose(1, 2), distances) / anchors.sum(dim=1)[..., None].clamp_min(PROB_EPS)


def clustering_loss(attention: Tensor, weights: Tensor, scale: float = 4.0, offset: float = 0.5,
                    exclusive: bool = False) -> Tensor:
    """``L_Cluster = D_intra / C - 2 D_inter / (C (C-1))`` per view ``[B]`` (eq. 6-8).

    ``D_intra = trace(G)``; ``D_inter`` sums ``G[c, c']`` over ``c > c'`` (anchors of the higher-index category, map
    of the lower one, exactly eq. 7). With one category the loss is ``D_intra`` (spec O16).
    """
    g = anchor_distance_matrix(attention, weights, scale, offset, exclusive)  # [B, C, C]
    c = g.shape[-1]
    intra = g.diagonal(dim1=-2, dim2=-1).sum(dim=-1)  # [B]
    if c == 1:
        return intra
    inter = torch.tril(g, diagonal=-1).sum(dim=(-2, -1))  # [B]
    return intra / c - 2.0 * inter / (c * (c - 1))


def entropy_loss(mean_maps: Tensor, valid: Tensor, reduction: str = "mean") -> Tensor:
    """``L_Etrp = -sum_c Mbar^c log Mbar^c`` over the view-averaged maps ``[C, L, L]`` (paper §"Entropy
    minimisation"), element-wise on the min-max maps (no softmax), clamped at 1e-8; ``mean`` (spec O7) or ``sum``
    over the pixels covered by a view (``valid [L, L]``)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"entropy reduction must be 'mean' or 'sum', got {reduction!r}.")
    per_pixel = -(mean_maps * mean_maps.clamp_min(PROB_EPS).log()).sum(dim=0)  # [L, L]
    total = per_pixel[valid].sum()
    return total / valid.sum().clamp_min(1) if reduction == "mean" else total
