"""Batched sliding-window inference (training-free spec §2.3, §6, §9.3).

The window grid is SCLIP's (``forward_slide``): ``h_grids = max(H - crop + stride - 1, 0) // stride + 1``; window
``(i, j)`` starts at ``(i * stride, j * stride)``, is clipped to the image and then snapped back so that the last
window ends on the border. Crop logits are summed into a canvas and divided by the per-pixel window count.

Unlike the reference loop (one window per forward), all windows of all images of a batch are grouped by shape and
encoded in forwards of at most ``window_batch`` windows. Whole-image inference (``crop = 0``) is the same code with
one window per image. ClearCLIP's variant pads every window (centred, zeros after normalisation) to a multiple of the
patch size and crops the logits back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: Encodes a batch of normalised windows ``[N, 3, h, w]`` into per-name logits at window size ``[N, K, h, w]``.
WindowEncoder = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Window:
    """One window of image ``image``: rows ``y1:y2``, columns ``x1:x2``."""

    image: int
    y1: int
    x1: int
    y2: int
    x2: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y2 - self.y1, self.x2 - self.x1


def window_grid(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, x1, y2, x2)`` of an ``height x width`` image (training-free spec §2.3); ``crop = 0`` gives the
    whole image.

    Example: 336 x 448 with crop 224 / stride 112 gives 2 x 3 windows.
    """
    if height < 1 or width < 1:
        raise ValueError(f"Image size must be positive, got {height} x {width}.")
    if crop == 0:
        return [(0, 0, height, width)]
    if not 1 <= stride <= crop:
        raise ValueError(f"stride must be in 1..crop={crop}, got {stride}.")
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * stride + crop, height), min(j * stride + crop, width)
            boxes.append((max(y2 - crop, 0), max(x2 - crop, 0), y2, x2))
    return boxes


def centred_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` zero padding up to a multiple of ``multiple``, the odd pixel going to the
    right / bottom (ClearCLIP ``compute_padsize``, training-free spec §6)."""
    pad_w = (multiple - width % multiple) % multiple
    pad_h = (multiple - height % multiple) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def slide_inference(
    images: Sequence[Tensor],
    encode: WindowEncoder,
    crop: int,
    stride: int,
    window_batch: int,
    pad_multiple: int = 0,
) -> list[Tensor]:
    """Average per-window logits over the windows of every image (training-free spec §2.3).

    Args:
        images: normalised images ``[3, H_i, W_i]`` (sizes may differ).
        encode: window encoder, see :data:`WindowEncoder`.
        crop: window size, ``0`` = whole image.
        stride: window stride.
        window_batch: most windows per ``encode`` call (the memory budget of one forward).
        pad_multiple: if > 0, pad every window to a multiple of it (ClearCLIP) and crop the logits back.

    Returns:
        One canvas ``[K, H_i, W_i]`` (float32) per image.
    """
    if window_batch < 1:
        raise ValueError(f"window_batch must be >= 1, got {window_batch}.")
    groups: dict[tuple[int, int], list[Window]] = {}
    counts = []
    for index, image in enumerate(images):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"Image {index} must be [3, H, W], got shape {tuple(image.shape)}.")
        count = torch.zeros(1, *image.shape[-2:], device=image.device)  # [1, H, W]
        for box in window_grid(image.shape[-2], image.shape[-1], crop, stride):
            window = Window(index, *box)
            groups.setdefault(window.shape, []).append(window)
            count[:, window.y1:window.y2, window.x1:window.x2] += 1
        counts.append(count)
    canvases: list[Tensor | None] = [None] * len(images)
    for (height, width), group in groups.items():
        left, right, top, bottom = centred_padding(height, width, pad_multiple) if pad_multiple else (0, 0, 0, 0)
        for start in range(0, len(group), window_batch):
            chunk = group[start:start + window_batch]
            crops = torch.stack([images[w.image][:, w.y1:w.y2, w.x1:w.x2] for w in chunk])  # [n, 3, h, w]
            if left or right or top or bottom:
                crops = F.pad(crops, (left, right, top, bottom))
            logits = encode(crops)  # [n, K, h_pad, w_pad]
            if logits.ndim != 4 or logits.shape[0] != len(chunk) or logits.shape[-2:] != crops.shape[-2:]:
                raise ValueError(
                    f"The window encoder must return [N, K, h, w] = [{len(chunk)}, K, {crops.shape[-2]}, "
                    f"{crops.shape[-1]}], got {tuple(logits.shape)}."
                )
            logits = logits[:, :, top:top + height, left:left + width].float()  # [n, K, h, w]
            for window, window_logits in zip(chunk, logits):
                canvas = canvases[window.image]
                if canvas is None:
                    size = images[window.image].shape[-2:]
                    canvas = logits.new_zeros(logits.shape[1], *size)  # [K, H, W]
                    canvases[window.image] = canvas
                canvas[:, window.y1:window.y2, window.x1:window.x2] += window_logits
    return [canvas / count for canvas, count in zip(canvases, counts)]  # type: ignore[operator]
