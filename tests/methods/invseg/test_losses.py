"""Contrastive Soft Clustering (eq. 3-8) and the entropy loss against brute force and hand-derived values."""

from __future__ import annotations

import math

import torch

from ovs.methods.invseg.losses import (
    PROB_EPS,
    anchor_distance_matrix,
    clustering_loss,
    entropy_loss,
    weighted_distances,
)


def _random_attention(batch: int, n: int) -> torch.Tensor:
    return torch.softmax(torch.randn(batch, n, n, dtype=torch.float64) * 3, dim=-1)


def _brute_symmetric_kl(a: torch.Tensor) -> torch.Tensor:
    """Explicit S[i, j] = KL(a_i||a_j) + KL(a_j||a_i) with a clamped at 1e-8 (eq. 3), by loops over pixel pairs."""
    a = a.clamp_min(PROB_EPS)
    n = a.shape[0]
    s = torch.zeros(n, n, dtype=a.dtype)
    for i in range(n):
        for j in range(n):
            kl_ij = sum(a[i, m] * math.log(a[i, m] / a[j, m]) for m in range(n))
            kl_ji = sum(a[j, m] * math.log(a[j, m] / a[i, m]) for m in range(n))
            s[i, j] = kl_ij + kl_ji
    return s


def _brute_loss(a: torch.Tensor, w: torch.Tensor, scale: float, offset: float) -> float:
    """Eq. 4-8 written out with explicit sums over pixels and category pairs."""
    s = _brute_symmetric_kl(a)
    n, c = w.shape
    anchors = 1 / (1 + torch.exp(-scale * (w - offset)))

    def d_pixel(i: int, cls: int) -> float:  # eq. 4
        return float(sum(s[i, j] * w[j, cls] for j in range(n)) / sum(w[j, cls] for j in range(n)))

    def d_anchor(anchor_cls: int, map_cls: int) -> float:  # eq. 5
        num = sum(anchors[i, anchor_cls] * d_pixel(i, map_cls) for i in range(n))
        return float(num / sum(anchors[i, anchor_cls] for i in range(n)))

    intra = sum(d_anchor(k, k) for k in range(c))  # eq. 6
    inter = sum(d_anchor(k, kp) for kp in range(c - 1) for k in range(kp + 1, c))  # eq. 7
    return intra / c - 2 * inter / (c * (c - 1))  # eq. 8


def test_weighted_distances_match_brute_force() -> None:
    a = _random_attention(2, 16)
    w = torch.rand(2, 16, 3, dtype=torch.float64)
    got = weighted_distances(a.float(), w.float())
    for b in range(2):
        s = _brute_symmetric_kl(a[b])
        expected = (s @ w[b]) / w[b].sum(dim=0)
        torch.testing.assert_close(got[b].double(), expected, rtol=1e-4, atol=1e-4)


def test_clustering_loss_matches_brute_force_including_asymmetric_inter_term() -> None:
    a = _random_attention(1, 12)
    w = torch.rand(1, 12, 3, dtype=torch.float64)
    got = clustering_loss(a.float(), w.float(), scale=4.0, offset=0.5)
    assert abs(float(got[0]) - _brute_loss(a[0], w[0], 4.0, 0.5)) < 1e-3 * max(1.0, abs(float(got[0])))
    # eq. 7 uses the anchors of the higher-index class with the map of the lower one: G is not symmetric, and the
    # loss equals the lower-triangle formula, not the upper one.
    g = anchor_distance_matrix(a.float(), w.float())[0].double()
    assert not torch.allclose(g, g.T, rtol=1e-3)
    upper = g.diagonal().sum() / 3 - 2 * torch.triu(g, 1).sum() / 6
    assert abs(float(upper) - float(got[0])) > 1e-4


def test_clustering_loss_of_block_attention_has_the_derived_value() -> None:
    """Two blocks of n pixels attending uniformly inside their block; one-hot maps on the blocks.

    Same-block KL is 0; across blocks KL = log(1e8 / n) - n 1e-8 log(1e8 / n) each way, so D(i, M^c) is 0 inside the
    block and K = 2 KL outside. Anchors are sigma(2) inside, sigma(-2) outside, hence G[c, c] = sigma(-2) K,
    G[c, c'] = sigma(2) K and L = sigma(-2) K - sigma(2) K."""
    n = 8
    a = torch.zeros(2 * n, 2 * n)
    a[:n, :n] = 1 / n
    a[n:, n:] = 1 / n
    w = torch.zeros(2 * n, 2)
    w[:n, 0] = 1
    w[n:, 1] = 1
    kl = math.log(1e8 / n) - n * 1e-8 * math.log(1e8 / n)
    k = 2 * kl
    sig = 1 / (1 + math.exp(-2))
    expected = (1 - sig) * k - sig * k
    got = float(clustering_loss(a[None], w[None], scale=4.0, offset=0.5)[0])
    assert abs(got - expected) < 1e-3 * abs(expected)


def test_aligned_maps_cluster_better_than_shuffled_maps() -> None:
    n = 8
    a = torch.full((2 * n, 2 * n), 0.02 / n)
    a[:n, :n] += 0.98 / n
    a[n:, n:] += 0.98 / n
    aligned = torch.zeros(2 * n, 2)
    aligned[:n, 0], aligned[n:, 1] = 1.0, 1.0
    shuffled = aligned[torch.randperm(2 * n)]
    assert float(clustering_loss(a[None], aligned[None])) < float(clustering_loss(a[None], shuffled[None]))


def test_single_category_loss_is_the_intra_distance() -> None:
    a = _random_attention(1, 10).float()
    w = torch.rand(1, 10, 1)
    g = anchor_distance_matrix(a, w)
    torch.testing.assert_close(clustering_loss(a, w), g[:, 0, 0])


def test_entropy_of_half_maps_is_c_log_2_and_ignores_uncovered_pixels() -> None:
    maps = torch.full((3, 4, 4), 0.5)
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[0] = False
    maps[:, 0] = 1.0  # uncovered pixels would contribute 0 anyway; make them differ from the rest
    maps[:, 0, 0] = 0.1
    expected = 3 * 0.5 * math.log(2)
    assert abs(float(entropy_loss(maps, valid)) - expected) < 1e-6
    assert abs(float(entropy_loss(maps, valid, "sum")) - expected * 12) < 1e-4
