"""Augmented views and their inverse mapping (paper §"Entropy minimisation"; spec §7, O10).

A view is a random resized crop of the ``S x S`` model input, resized back to ``S x S``. Its ``[C, L, L]`` maps are
pasted back into the crop's box on an ``L x L`` canvas in image coordinates; the entropy is taken on the average over
the views covering each pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class CropBox:
    """A crop ``[top : top + height, left : left + width]`` of an ``S x S`` image (pixels)."""

    top: int
    left: int
    height: int
    width: int

    def on_grid(self, image_size: int, grid: int) -> tuple[int, int, int, int]:
        """The box on a ``grid x grid`` canvas of the same image: ``(top, left, bottom, right)``, at least 1 cell."""
        scale = grid / image_size
        top, left = round(self.top * scale), round(self.left * scale)
        bottom = max(round((self.top + self.height) * scale), top + 1)
        right = max(round((self.left + self.width) * scale), left + 1)
        return top, left, min(bottom, grid), min(right, grid)


def sample_crop_boxes(size: int, num: int, scale: tuple[float, float] = (0.6, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                      ) -> list[CropBox]:
    """``num`` boxes with torchvision ``RandomResizedCrop`` semantics on an ``size x size`` image (spec O10): area
    fraction ``U(scale)``, log-uniform aspect ratio in ``ratio``, 10 tries, then the whole image."""
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}.")
    boxes = []
    area = float(size * size)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(num):
        box = CropBox(0, 0, size, size)
        for _ in range(10):
            u = torch.rand(4, generator=generator).tolist()
            target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= size and 0 < h <= size:
                box = CropBox(int(u[2] * (size - h + 1)), int(u[3] * (size - w + 1)), h, w)
                break
        boxes.append(box)
    return boxes


def crop_views(image: Tensor, boxes: Sequence[CropBox]) -> Tensor:
    """``[3, S, S]`` -> ``[V, 3, S, S]``: each box cropped and resized (bilinear, antialiased) to ``S x S``."""
    size = image.shape[-1]
    views = [
        F.interpolate(image[None, :, b.top:b.top + b.height, b.left:b.left + b.width], size=(size, size),
                      mode="bilinear", align_corners=False, antialias=True)[0]
        for b in boxes
    ]
    return torch.stack(views)


def paste_views(maps: Tensor, boxes: Sequence[CropBox], image_size: int) -> tuple[Tensor, Tensor]:
    """Inverse mapping: view maps ``[V, C, L, L]`` -> mean over covering views ``[C, L, L]`` and coverage
    ``bool [L, L]`` on the image's ``L x L`` canvas (bilinear resize of each view into its box)."""
    v, c, grid, _ = maps.shape
    total = maps.new_zeros(c, grid, grid)
    count = maps.new_zeros(grid, grid)
    for view, box in zip(maps, boxes):
        top, left, bottom, right = box.on_grid(image_size, grid)
        placed = F.interpolate(view[None], size=(bottom - top, right - left), mode="bilinear", align_corners=False)
        pad = (left, grid - right, top, grid - bottom)
        total = total + F.pad(placed[0], pad)
        count = count + F.pad(torch.ones_like(placed[0, 0]), pad)
    valid = count > 0
    return total / count.clamp_min(1), valid
