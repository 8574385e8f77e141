"""ConvNeXt mask pooling of soft, low-mass masks (MaskCLIP++ eq. 1, φ = L1 normalisation, spec §3.2).

The LayerNorm after pooling is scale-invariant up to its ε, so only masks whose mass on the stride-32 grid is far below
one cell show whether the pooled vector is divided by the mask's area: at an area of 0.001 cell the unnormalised sum
is ~1000x smaller and the ε dominates the variance. The expected embeddings are computed mask by mask in the test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovs.backbones import create_clip
from ovs.methods.maskclippp.encoders import MaskBatch, build_mask_encoder
from tests.conftest import TINY_CONVNEXT


def low_mass_batch(size: int = 96) -> MaskBatch:
    """Two images; soft masks whose area on the 3 x 3 grid ranges from ~0.001 to ~1 cell (the last one is binary)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g)
    blobs = F.interpolate(torch.rand(5, 1, 4, 4, generator=g), size=(size, size), mode="bilinear",
                          align_corners=False)[:, 0]  # smooth soft masks in [0, 1]
    peaks = torch.tensor([1e-3, 1e-2, 5e-2, 0.3, 1.0])[:, None, None]
    masks = blobs * peaks
    masks[4] = (blobs[4] > 0.5).float()
    return MaskBatch(images, masks, torch.tensor([0, 0, 1, 1, 1]), torch.tensor([[size, size], [size, size]]))


def test_convnext_pooling_divides_by_the_soft_area_for_low_mass_masks() -> None:
    clip = create_clip(TINY_CONVNEXT)
    with torch.no_grad():
        for p in clip.model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batch = low_mass_batch()
    with torch.no_grad():
        out = build_mask_encoder(clip)(batch)
        trunk = clip.model.visual.trunk
        feats = trunk.forward_features(batch.images)  # [B, C, 3, 3]
        norm = trunk.head.norm
        expected, areas, unnormalised = [], [], []
        for mask, b in zip(batch.masks, batch.image_index.tolist()):
            small = F.interpolate(mask[None, None], size=feats.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            area = small.sum()
            weighted = (feats[b] * small).sum(dim=(1, 2))  # Σ_p M̃[p] F[:, p]
            for pooled, into in ((weighted / (area + 1e-6), expected), (weighted, unnormalised)):
                normed = F.layer_norm(pooled, pooled.shape, norm.weight, norm.bias, norm.eps)
                into.append(clip.model.visual.head(normed))
            areas.append(area)
    expected_t, unnormalised_t = torch.stack(expected), torch.stack(unnormalised)
    torch.testing.assert_close(out.areas, torch.stack(areas), atol=1e-7, rtol=1e-5)
    assert float(out.areas[0]) < 0.01 and float(out.areas[-1]) > 0.5  # the masks span low to high mass
    torch.testing.assert_close(out.embeddings, expected_t, atol=1e-5, rtol=1e-4)
    # Without the division, the low-mass embeddings move by far more than the tolerance (the test can fail).
    gap = (unnormalised_t - expected_t).norm(dim=-1) / expected_t.norm(dim=-1)
    assert float(gap[0]) > 0.05
