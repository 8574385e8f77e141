"""Pixel-Adaptive Mask Refinement (PAMR, training-free spec §9.5; the version SCLIP / NACLIP copy from
visinf/1-stage-wseg).

For every dilation ``d`` the 8 neighbours at offsets ``d * {-1, 0, 1}^2 \\ {0}`` are read with replicate padding.
Per image channel, ``sigma`` is the unbiased standard deviation over the 9 taps (centre included) of all dilations
jointly; the affinity to neighbour ``n`` is ``-|I_centre - I_n| / (1e-8 + 0.1 * sigma)``, averaged over the image
channels and soft-maxed over the ``8 * len(dilations)`` neighbours. Each iteration replaces every logit by the
affinity-weighted sum of its neighbours' logits (no self term).

Shifts are slices of one replicate-padded tensor per dilation: no unfold of the ``K``-channel logits, no pixel loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
"""Row / column offsets of the 8 neighbours, in the reference kernel order."""


def _neighbours(x: Tensor, dilation: int) -> list[Tensor]:
    """The 8 neighbour maps of ``x [B, C, H, W]`` at ``dilation`` with replicate padding, each ``[B, C, H, W]``."""
    height, width = x.shape[-2:]
    padded = F.pad(x, [dilation] * 4, mode="replicate")
    return [
        padded[..., dilation * (1 + dy):dilation * (1 + dy) + height, dilation * (1 + dx):dilation * (1 + dx) + width]
        for dy, dx in NEIGHBOUR_OFFSETS
    ]


def pamr_affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """Local affinities ``[B, 8 * len(dilations), H, W]`` (softmax over the neighbour axis) of ``image``
    ``[B, C, H, W]`` (spec §9.5)."""
    neighbours = torch.stack([n for d in dilations for n in _neighbours(image, d)], dim=2)  # [B, C, P, H, W]
    centre = image[:, :, None]  # [B, C, 1, H, W]
    taps = torch.cat([centre.expand(-1, -1, len(dilations), -1, -1), neighbours], dim=2)  # [B, C, 9 * D, H, W]
    sigma = taps.std(dim=2, keepdim=True)  # [B, C, 1, H, W], unbiased
    affinity = -(centre - neighbours).abs() / (1e-8 + 0.1 * sigma)  # [B, C, P, H, W]
    return torch.softmax(affinity.mean(dim=1), dim=1)  # [B, P, H, W]


def pamr(image: Tensor, logits: Tensor, steps: int, dilations: Sequence[int] = (8, 16)) -> Tensor:
    """Refine ``logits [B, K, H, W]`` with ``steps`` PAMR iterations guided by ``image [B, C, H, W]`` (same size;
    the normalised image, spec §9.5)."""
    if image.ndim != 4 or logits.ndim != 4 or image.shape[0] != logits.shape[0]:
        raise ValueError(f"PAMR expects image [B, C, H, W] and logits [B, K, H, W], got {tuple(image.shape)} and "
                         f"{tuple(logits.shape)}.")
    if image.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"PAMR image {tuple(image.shape[-2:])} and logits {tuple(logits.shape[-2:])} differ in size.")
    if steps < 0 or not dilations:
        raise ValueError(f"PAMR needs steps >= 0 and at least one dilation, got {steps} and {tuple(dilations)}.")
    if steps == 0:
        return logits
    affinity = pamr_affinity(image.float(), dilations)  # [B, P, H, W]
    mask = logits.float()
    for _ in range(steps):
        refined = torch.zeros_like(mask)
        position = 0
        for dilation in dilations:
            for neighbour in _neighbours(mask, dilation):
                refined.addcmul_(affinity[:, position:position + 1], neighbour)  # in place, no temporary
                position += 1
        mask = refined
    return mask
