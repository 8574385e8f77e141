"""Overlays and the per-class IoU table, logged to a recording writer and to a real TensorBoard event file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovs.data.constants import IGNORE_INDEX
from ovs.evaluation import colorize, log_overlay, log_per_class_iou_table, make_palette, overlay
from ovs.evaluation.visualize import per_class_iou_markdown


class RecordingWriter:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("text", args, kwargs))

    def add_image(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("image", args, kwargs))


class FakeLightningLogger:
    def __init__(self) -> None:
        self.experiment = RecordingWriter()


def test_colorize_and_overlay() -> None:
    palette = torch.tensor([[255, 0, 0], [0, 255, 0]], dtype=torch.uint8)
    label = torch.tensor([[0, 1], [-1, 5]])
    colours = colorize(label, palette)
    assert colours.shape == (3, 2, 2) and colours.dtype == torch.uint8
    assert colours[:, 0, 0].tolist() == [255, 0, 0] and colours[:, 0, 1].tolist() == [0, 255, 0]
    assert colours[:, 1, 0].tolist() == [0, 0, 0] and colours[:, 1, 1].tolist() == [0, 0, 0]
    image = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    blended = overlay(image, label, palette, alpha=0.5)
    assert blended[:, 0, 0].tolist() == [178, 50, 50]  # (100 + 255) / 2 = 177.5 -> 178
    assert blended[:, 1, 0].tolist() == [100, 100, 100]  # ignore keeps the image
    assert make_palette(5).shape == (5, 3) and torch.equal(make_palette(5), make_palette(5))


def test_markdown_table() -> None:
    markdown = per_class_iou_markdown(["wall", "sky", "cat", "dog"], torch.tensor([50.0, float("nan"), 12.34, 0.0]))
    lines = markdown.splitlines()
    assert lines[0] == "| class | IoU | class | IoU | class | IoU |"
    assert lines[2] == "| wall | 50.0 | sky | - | cat | 12.3 |"
    assert lines[3] == "| dog | 0.0 |  |  |  |  |"


def expected_grid(image: torch.Tensor, prediction: torch.Tensor, target: torch.Tensor | None,
                  palette: torch.Tensor) -> torch.Tensor:
    """[image | prediction overlay | target overlay], blended by hand: (image + colour) / 2 per labelled pixel
    (alpha 0.5) rounded half to even like ``torch.round``, the image itself at ignore pixels."""
    panels = [image]
    for label in (prediction, target) if target is not None else (prediction,):
        blended = image.clone()
        for r in range(label.shape[0]):
            for c in range(label.shape[1]):
                if 0 <= int(label[r, c]) < len(palette):
                    colour = palette[int(label[r, c])]
                    mixed = [round((int(a) + int(b)) / 2) for a, b in zip(image[:, r, c], colour)]
                    blended[:, r, c] = torch.tensor(mixed)
        panels.append(blended)
    return torch.cat(panels, dim=2)


def test_logging_to_lightning_logger() -> None:
    logger = FakeLightningLogger()
    markdown = log_per_class_iou_table(logger, ["a", "b"], [1.0, 2.0], tag="iou/voc", step=3)
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).view(3, 4, 5) * 4
    prediction = torch.tensor([[0, 1, 2, 0, 1]] * 4)
    target = torch.tensor([[2, 2, 1, IGNORE_INDEX, 0]] * 4)
    palette = make_palette(3)
    grid = log_overlay(logger, "overlay/0", image, prediction, target, palette=palette, step=3)
    kinds = [call[0] for call in logger.experiment.calls]
    assert kinds == ["text", "image"] and grid.shape == (3, 4, 15)
    (_, text_args, text_kwargs), (_, image_args, image_kwargs) = logger.experiment.calls
    assert text_args == ("iou/voc", markdown) and text_kwargs == {"global_step": 3}
    assert markdown.splitlines()[2] == "| a | 1.0 | b | 2.0 |  |  |"
    assert image_args[0] == "overlay/0" and image_kwargs == {"global_step": 3, "dataformats": "CHW"}
    expected = expected_grid(image, prediction, target, palette)
    assert torch.equal(grid, expected) and torch.equal(image_args[1], expected)


def test_logging_to_tensorboard(tmp_path: Path) -> None:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    log_per_class_iou_table(writer, ["a"], [42.0], tag="iou")
    image = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prediction = torch.tensor([[0, 1, 1, 0]] * 4)
    log_overlay(writer, "overlay", image, prediction, step=2)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    (text,) = events.Tensors("iou/text_summary")
    assert text.tensor_proto.string_val[0].decode() == per_class_iou_markdown(["a"], [42.0])
    (logged,) = events.Images("overlay")
    assert logged.step == 2 and (logged.width, logged.height) == (8, 4)
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB")))
    palette = make_palette(2)  # default palette: max label + 1 colours
    assert torch.equal(decoded.permute(2, 0, 1), expected_grid(image, prediction, None, palette))
