"""Test-time resizing of images and resizing of logits back to the label resolution (training-free spec §9.1, §2.3).

Images are resized like mmseg / cv2 (bilinear, no antialias, ``uint8`` rounded) by the data layer's transforms;
logits are resized bilinearly with ``align_corners=False`` (SCLIP ``forward_slide``, GEM ``forward``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ovs.data.transforms import resize_long_side, resize_short_side, resize_square


def resize_for_inference(image: Tensor, mode: str, size: int, max_long_side: int | None = None) -> Tensor:
    """Resize one ``[3, H, W]`` image (``uint8`` or float in ``[0, 255]``) for inference.

    Args:
        mode: ``short`` (short side ``size``, long side capped at ``max_long_side``), ``long``, ``square`` or
            ``none``.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"Expected an RGB image [3, H, W], got shape {tuple(image.shape)}.")
    if mode == "short":
        return resize_short_side(image, size, max_long_side)
    if mode == "long":
        return resize_long_side(image, size)
    if mode == "square":
        return resize_square(image, size)
    if mode == "none":
        return image
    raise ValueError(f"Unknown resize mode {mode!r}; use 'short', 'long', 'square' or 'none'.")


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=False``) resize of ``[K, h, w]`` or ``[B, K, h, w]`` maps to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    batched = logits if logits.ndim == 4 else logits[None]
    out = F.interpolate(batched, size=tuple(size), mode="bilinear", align_corners=False)
    return out if logits.ndim == 4 else out[0]

