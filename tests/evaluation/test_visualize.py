"""Overlays and the per-class IoU table, logged to a recording writer and to a real TensorBoard event file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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


def test_logging_to_lightning_logger() -> None:
    logger = FakeLightningLogger()
    log_per_class_iou_table(logger, ["a", "b"], [1.0, 2.0], tag="iou/voc", step=3)
    image = torch.zeros(3, 4, 5, dtype=torch.uint8)
    prediction, target = torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long)
    grid = log_overlay(logger, "overlay/0", image, prediction, target, step=3)
    kinds = [call[0] for call in logger.experiment.calls]
    assert kinds == ["text", "image"] and grid.shape == (3, 4, 15)
    assert logger.experiment.calls[0][1][0] == "iou/voc" and logger.experiment.calls[0][2]["global_step"] == 3


def test_logging_to_tensorboard(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    log_per_class_iou_table(writer, ["a"], [42.0])
    log_overlay(writer, "overlay", torch.zeros(3, 4, 4, dtype=torch.uint8), torch.ones(4, 4, dtype=torch.long))
    writer.close()
    assert any(path.name.startswith("events.out.tfevents") for path in tmp_path.iterdir())
