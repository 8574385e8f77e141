"""Positional-embedding variants C (bilinear, CLIP Surgery) and bicubic-with-corners (MaskCLIP++) against
``F.interpolate`` called directly (training-free spec §1.1, MaskCLIP++ spec §3.3), and the variant each method
uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import interpolate_pos_embed
from ovs.methods import CLIPSurgery
from tests.plain_vit import embed

DIRECT = {
    "bilinear": {"mode": "bilinear", "align_corners": False},
    "bicubic_corners": {"mode": "bicubic", "align_corners": True},
}
WRONG = {
    "bilinear": [{"mode": "bilinear", "align_corners": True}, {"mode": "bicubic", "align_corners": False}],
    "bicubic_corners": [{"mode": "bicubic", "align_corners": False}, {"mode": "bilinear", "align_corners": True}],
}


def direct(pe: torch.Tensor, src: tuple[int, int], grid: tuple[int, int], **kwargs: object) -> torch.Tensor:
    """CLS kept; the patch grid ``[1, C, g0h, g0w]`` resized by ``F.interpolate(size=grid, **kwargs)``."""
    patches = pe[1:].reshape(1, *src, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, size=grid, **kwargs)  # [1, C, gh, gw]
    return torch.cat([pe[:1], resized[0].flatten(1).T], dim=0)


@pytest.mark.parametrize("mode", sorted(DIRECT))
@pytest.mark.parametrize("grid", [(5, 7), (3, 3), (9, 6)])
def test_mode_is_f_interpolate_with_its_flags(mode: str, grid: tuple[int, int]) -> None:
    pe = torch.randn(1 + 4 * 4, 8)
    out = interpolate_pos_embed(pe, (4, 4), grid, mode)
    torch.testing.assert_close(out, direct(pe, (4, 4), grid, **DIRECT[mode]), atol=1e-6, rtol=0)
    for wrong in WRONG[mode]:  # the neighbouring variants differ by far more than the tolerance
        assert (out - direct(pe, (4, 4), grid, **wrong)).abs().max() > 1e-3


def test_bilinear_by_hand_on_a_ramp() -> None:
    """A ramp along the columns, 2 -> 4 cells: align_corners=False samples at (j + 0.5) / 2 - 0.5 = -0.25, 0.75,
    so the ends are clamped to the first / last value and the inside is interpolated linearly."""
    values = torch.tensor([0.0, 10.0])
    pe = torch.cat([torch.zeros(1, 1), values.repeat(2)[:, None]])  # [1 + 2 * 2, 1], rows identical
    out = interpolate_pos_embed(pe, (2, 2), (2, 4), "bilinear")[1:, 0].view(2, 4)
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.5, 7.5, 10.0]] * 2))


def test_clip_surgery_embeds_with_bilinear_positions(tiny_vit) -> None:
    """CLIP Surgery's policy at a non-native size: tokens = plain patchify + CLS + bilinear positions + ln_pre."""
    method = CLIPSurgery(clip=tiny_vit, depth=2)
    x = torch.randn(2, 3, 40, 56)  # 5 x 7 patches of 8 on a 4 x 4 native grid
    visual = tiny_vit.model.visual
    pos = direct(visual.positional_embedding.detach(), (4, 4), (5, 7), mode="bilinear", align_corners=False)
    with torch.no_grad():
        tokens, grid = tiny_vit.dense.embed(x, method.policy.pos_embed)
        expected = embed(visual, x, pos)
    assert grid == (5, 7)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0)


def test_bicubic_corners_embedding_of_the_vit(tiny_vit) -> None:
    """The MaskCLIP++ ViT mask-token path embeds with bicubic, align_corners=True positions."""
    x = torch.randn(1, 3, 24, 48)
    visual = tiny_vit.model.visual
    pos = direct(visual.positional_embedding.detach(), (4, 4), (3, 6), mode="bicubic", align_corners=True)
    with torch.no_grad():
        tokens, _ = tiny_vit.dense.embed(x, "bicubic_corners")
        torch.testing.assert_close(tokens, embed(visual, x, pos), atol=1e-5, rtol=0)
