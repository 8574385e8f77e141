"""Attention upsampling (spec O3), resolution aggregation (O4) and the refined class maps (eq. 2, O5)."""

from __future__ import annotations

import torch

from ovs.methods.invseg.maps import aggregate, class_maps, minmax, upsample_cross, upsample_self


def _bilinear_matrix(r: int, size: int) -> torch.Tensor:
    """1-D bilinear interpolation r -> size (half-pixel centres, clamped at the borders) by its formula."""
    u = torch.zeros(size, r, dtype=torch.float64)
    for i in range(size):
        src = min(max((i + 0.5) * r / size - 0.5, 0.0), r - 1)
        lo = int(src)
        hi = min(lo + 1, r - 1)
        frac = src - lo
        u[i, lo] += 1 - frac
        u[i, hi] += frac
    return u


def test_bilinear_matrix_of_2_to_4_is_the_hand_value() -> None:
    expected = torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], dtype=torch.float64)
    torch.testing.assert_close(_bilinear_matrix(2, 4), expected)


def test_upsample_self_matches_direct_construction() -> None:
    r, size = 3, 6
    a = torch.softmax(torch.randn(2, r * r, r * r, dtype=torch.float64), dim=-1)
    u = _bilinear_matrix(r, size)
    keys = a @ torch.kron(u, u).T  # [B, r*r, L*L]: bilinear on the key grid
    keys = keys / keys.sum(-1, keepdim=True)
    nearest = torch.tensor([(y * r // size) * r + (x * r // size) for y in range(size) for x in range(size)])
    expected = keys[:, nearest]  # query pixel (y, x) takes the row of its coarse pixel
    got = upsample_self(a.float(), size)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, size * size))


def test_upsample_self_bilinear_queries_and_cross_per_token() -> None:
    r, size = 2, 4
    a = torch.softmax(torch.randn(1, r * r, r * r, dtype=torch.float64), dim=-1)
    u = torch.kron(_bilinear_matrix(r, size), _bilinear_matrix(r, size))
    keys = a @ u.T
    keys = keys / keys.sum(-1, keepdim=True)
    got = upsample_self(a.float(), size, "bilinear")[0].double()
    torch.testing.assert_close(got, u @ keys[0], rtol=1e-5, atol=1e-6)
    cross = torch.rand(1, r * r, 5, dtype=torch.float64)
    torch.testing.assert_close(upsample_cross(cross.float(), size)[0].double(), u @ cross[0], rtol=1e-5, atol=1e-6)


def test_aggregate_is_the_normalised_weighted_sum_over_resolutions() -> None:
    maps = {2: torch.rand(1, 4, 7), 4: torch.rand(1, 16, 7)}
    got = aggregate(maps, 4, (1.0, 3.0), "cross")
    expected = 0.25 * upsample_cross(maps[2], 4) + 0.75 * maps[4]
    torch.testing.assert_close(got, expected)


def test_class_maps_match_a_direct_computation() -> None:
    n, k = 9, 6
    a_self = torch.softmax(torch.randn(1, n, n), dim=-1)
    a_cross = torch.softmax(torch.randn(1, n, k), dim=-1)
    weights = torch.zeros(1, k, 2)
    weights[0, 1, 0] = 1.0  # category 0: token 1
    weights[0, 3, 1] = weights[0, 4, 1] = 0.5  # category 1: tokens 3 and 4 (a two-token name)
    m = a_self[0] @ a_cross[0]  # eq. 2 before norm
    norm = [(m[:, t] - m[:, t].min()) / (m[:, t].max() - m[:, t].min() + 1e-8) for t in range(k)]
    cat0 = norm[1]
    cat1 = (norm[3] + norm[4]) / 2
    expected = torch.stack([(c - c.min()) / (c.max() - c.min() + 1e-8) for c in (cat0, cat1)], dim=1)
    torch.testing.assert_close(class_maps(a_self, a_cross, weights)[0], expected, rtol=1e-5, atol=1e-6)


def test_minmax_spans_zero_to_one_per_column() -> None:
    x = torch.randn(3, 10, 4) * 5 + 2
    y = minmax(x, dim=1)
    torch.testing.assert_close(y.amin(1), torch.zeros(3, 4))
    torch.testing.assert_close(y.amax(1), torch.ones(3, 4), atol=1e-6, rtol=0)
