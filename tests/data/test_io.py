"""read_image (issue 11 item 5): 16-bit PNGs scaled, EXIF orientation applied, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.data.io import DatasetFormatError, read_image


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """PIL's convert("RGB") clips I;16 values above 255 (almost the whole image becomes white); ovs maps
    0..65535 to 0..255 with round(v * 255 / 65535)."""
    values = np.linspace(0, 65535, 12 * 16).round().astype(np.uint16).reshape(12, 16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"  # the case being tested
    image = read_image(path)
    expected = torch.from_numpy(np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert image.shape == (3, 12, 16) and image.dtype == torch.uint8
    for channel in image:
        assert torch.equal(channel, expected)
    assert int(image.float().mean().round()) == 128  # a uniform ramp stays mid-grey


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A 40 x 60 (H x W) JPEG whose EXIF orientation 6 says "rotate 90 degrees clockwise to display" is read as the
    displayed 60 x 40 image (np.rot90(k=-1) of the stored pixels)."""
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:20, :30] = (255, 0, 0)  # red top-left quadrant
    stored[20:, 30:] = (0, 0, 255)  # blue bottom-right quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    image = read_image(path).permute(1, 2, 0).numpy().astype(np.int64)  # [H, W, 3]
    expected = np.rot90(stored, k=-1).astype(np.int64)
    assert image.shape == (60, 40, 3)
    assert np.abs(image - expected).mean() < 3  # JPEG noise only
    assert image[5, 35, 0] > 200 and image[55, 5, 2] > 200  # red now top-right, blue bottom-left


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError, match="broken.png"):
        read_image(path)
