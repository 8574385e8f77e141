"""PAMR (training-free spec §9.5) on toy cases with hand-checkable answers and against a conv-kernel reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovs.inference import pamr, pamr_affinity


def reference_pamr(image: torch.Tensor, mask: torch.Tensor, steps: int, dilations: tuple[int, ...]) -> torch.Tensor:
    """The 1-stage-wseg construction: 3x3 shift kernels applied with dilated convolutions on replicate-padded maps."""
    shift = torch.zeros(8, 1, 3, 3)  # centre - neighbour
    copy = torch.zeros(8, 1, 3, 3)  # neighbour
    taps = torch.zeros(9, 1, 3, 3)  # all 9 positions
    neighbours = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    for i, (r, c) in enumerate(neighbours):
        shift[i, 0, 1, 1], shift[i, 0, r, c], copy[i, 0, r, c] = 1, -1, 1
    for i in range(9):
        taps[i, 0, i // 3, i % 3] = 1

    def local(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        b, k, h, w = x.shape
        x = x.reshape(b * k, 1, h, w)
        out = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
        return torch.cat(out, 1).reshape(b, k, -1, h, w)

    sigma = local(image, taps).std(2, keepdim=True)
    affinity = -local(image, shift).abs() / (1e-8 + 0.1 * sigma)
    affinity = torch.softmax(affinity.mean(1, keepdim=True), 2)  # [B, 1, P, H, W]
    for _ in range(steps):
        mask = (local(mask, copy) * affinity).sum(2)
    return mask


def test_constant_image_averages_the_sixteen_neighbours() -> None:
    """Flat image: σ = 0, all affinities equal (1/16). One step moves an impulse to the 16 pixels that see it at
    offsets ±8 / ±16 (rows, columns, diagonals); the impulse pixel itself gets 0 (no self term)."""
    image = torch.full((1, 3, 40, 40), 0.3)
    mask = torch.zeros(1, 1, 40, 40)
    mask[0, 0, 20, 20] = 1.0
    out = pamr(image, mask, steps=1, dilations=(8, 16))
    expected = torch.zeros(40, 40)
    for d in (8, 16):
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if dy or dx:
                    expected[20 + dy, 20 + dx] = 1 / 16
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(pamr_affinity(image, (8, 16)), torch.full((1, 16, 40, 40), 1 / 16))


def test_edges_of_the_image_stop_the_propagation() -> None:
    """Two flat halves: a mask that follows the halves is a fixed point (affinities across the edge are ~e^-20),
    while the same mask on a flat image bleeds across."""
    image = torch.zeros(1, 3, 48, 48)
    image[..., 24:] = 1.0
    mask = torch.zeros(1, 2, 48, 48)
    mask[:, 0, :, :24], mask[:, 1, :, 24:] = 1.0, 1.0
    torch.testing.assert_close(pamr(image, mask, steps=10, dilations=(8, 16)), mask, atol=1e-6, rtol=0)
    blurred = pamr(torch.zeros_like(image), mask, steps=1, dilations=(8, 16))
    assert blurred[0, 0, 10, 23] < 0.8  # left pixel next to the edge borrows from the right half


@pytest.mark.parametrize(("steps", "dilations"), [(1, (1,)), (3, (8, 16)), (10, (1, 2, 4))])
def test_pamr_matches_the_conv_kernel_construction(steps: int, dilations: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(2, 3, 21, 26, generator=generator)
    mask = torch.randn(2, 5, 21, 26, generator=generator)
    torch.testing.assert_close(pamr(image, mask, steps, dilations), reference_pamr(image, mask, steps, dilations),
                               atol=1e-5, rtol=0)


def test_zero_steps_is_identity_and_bad_shapes_fail() -> None:
    mask = torch.randn(1, 2, 8, 8)
    assert pamr(torch.randn(1, 3, 8, 8), mask, steps=0) is mask
    with pytest.raises(ValueError, match="differ in size"):
        pamr(torch.randn(1, 3, 8, 9), mask, steps=1)
