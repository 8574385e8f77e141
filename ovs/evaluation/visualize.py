"""Prediction overlays and the per-class IoU table for TensorBoard.

``colorize`` / ``overlay`` work on ``uint8 [3, H, W]`` tensors; the logging helpers accept a Lightning
``TensorBoardLogger`` (its ``experiment``) or a ``torch.utils.tensorboard.SummaryWriter`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ovs.data.constants import IGNORE_INDEX


def make_palette(num_classes: int, seed: int = 0) -> torch.Tensor:
    """Deterministic random colours ``uint8 [K, 3]`` (bright enough to be distinguishable from ignore = black)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(40, 256, (num_classes, 3), generator=generator, dtype=torch.int64).to(torch.uint8)


def colorize(label: torch.Tensor, palette: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``int64 [H, W]`` class map to ``uint8 [3, H, W]`` colours; ignore and out-of-range values are black."""
    palette = palette.to(torch.uint8)
    valid = (label >= 0) & (label < len(palette)) & (label != ignore_index)
    colours = palette[label.clamp(0, len(palette) - 1)]  # [H, W, 3]
    colours = colours * valid[..., None].to(torch.uint8)
    return colours.permute(2, 0, 1).contiguous()


def overlay(
    image: torch.Tensor,
    label: torch.Tensor,
    palette: torch.Tensor | None = None,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Blend ``colorize(label)`` over ``image`` (``uint8 [3, H, W]``, same size); ignore pixels keep the image."""
    if image.shape[-2:] != label.shape[-2:]:
        raise ValueError(f"Image {tuple(image.shape)} and label {tuple(label.shape)} differ in size.")
    if palette is None:
        palette = make_palette(int(label.max().clamp_min(0)) + 1)
    colours = colorize(label, palette, ignore_index).float()
    valid = ((label >= 0) & (label < len(palette)) & (label != ignore_index))[None]  # [1, H, W]
    blended = torch.where(valid, (1 - alpha) * image.float() + alpha * colours, image.float())
    return blended.round().clamp(0, 255).to(torch.uint8)


def _writer(logger: Any) -> Any:
    """The SummaryWriter behind a Lightning logger (or the writer itself)."""
    return getattr(logger, "experiment", logger)


def per_class_iou_markdown(names: Sequence[str], ious: torch.Tensor | Sequence[float], columns: int = 3) -> str:
    """Markdown table of class name / IoU (percent, one decimal; "-" for NaN), ``columns`` pairs per row."""
    values = [float(v) for v in ious]
    if len(values) != len(names):
        raise ValueError(f"Got {len(names)} names for {len(values)} IoU values.")
    cells = [(name, "-" if math.isnan(v) else f"{v:.1f}") for name, v in zip(names, values)]
    header = "| " + " | ".join(["class | IoU"] * columns) + " |"
    rule = "|" + "|".join(["---|---"] * columns) + "|"
    rows = []
    for start in range(0, len(cells), columns):
        chunk = cells[start : start + columns]
        chunk += [("", "")] * (columns - len(chunk))
        rows.append("| " + " | ".join(f"{name} | {value}" for name, value in chunk) + " |")
    return "\n".join([header, rule, *rows])


def log_per_class_iou_table(
    logger: Any, names: Sequence[str], ious: torch.Tensor | Sequence[float], tag: str = "per_class_iou", step: int = 0
) -> str:
    """Write the per-class IoU Markdown table to TensorBoard text under ``tag``; returns the Markdown."""
    markdown = per_class_iou_markdown(names, ious)
    _writer(logger).add_text(tag, markdown, global_step=step)
    return markdown


def log_overlay(
    logger: Any,
    tag: str,
    image: torch.Tensor,
    prediction: torch.Tensor,
    target: torch.Tensor | None = None,
    palette: torch.Tensor | None = None,
    step: int = 0,
) -> torch.Tensor:
    """Log ``[image | prediction overlay | target overlay]`` side by side as one ``uint8 [3, H, W']`` image."""
    if palette is None:
        top = int(prediction.max()) if target is None else max(int(prediction.max()), int(target.max()))
        palette = make_palette(max(top, 0) + 1)
    panels = [image, overlay(image, prediction, palette)]
    if target is not None:
        panels.append(overlay(image, target, palette))
    grid = torch.cat(panels, dim=-1)  # [3, H, W * n]
    _writer(logger).add_image(tag, grid, global_step=step, dataformats="CHW")
    return grid
