"""tools/segment.py (issue 11 item 6): one image from the shell, overlay PNG of the input's size, saved scores."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.cli import REPO_ROOT
from ovs.evaluation import make_palette

TOOL = runpy.run_path(str(REPO_ROOT / "tools" / "segment.py"))


def test_writes_an_overlay_of_the_input_size_and_the_logits(tmp_path: Path) -> None:
    """A 70 x 96 JPEG with the default toy CLIP: the PNG is 96 x 70, outside the legend it is the 50 % blend of the
    image and the class colour of the saved label map, and the saved scores' argmax is that label map."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(70, 96, 3), dtype=np.uint8)
    image = tmp_path / "photo.png"
    Image.fromarray(pixels).save(image)
    out = TOOL["main"]([str(image), "--vocabulary", "sky, tree, person|man|woman", "--method", "sclip",
                        "--out", str(tmp_path / "photo_seg.png"), "--save-logits"])
    written = np.asarray(Image.open(out))
    assert written.shape == (70, 96, 3)
    saved = torch.load(tmp_path / "photo_seg.pt", weights_only=True)
    assert saved["class_names"] == ["sky", "tree", "person"]
    assert saved["logits"].shape == (3, 70, 96) and torch.equal(saved["labels"], saved["logits"].argmax(0))
    colours = make_palette(3)[saved["labels"]].numpy().astype(np.float64)  # [H, W, 3]
    expected = np.round(0.5 * pixels + 0.5 * colours)
    assert np.array_equal(written[40:, 60:], expected[40:, 60:])  # below / right of the legend box
    assert not np.array_equal(written[:10, :10], expected[:10, :10])  # the legend is drawn


def test_class_file_vocabulary_and_setting_overrides(tmp_path: Path) -> None:
    names = TOOL["parse_vocabulary"]("sclip_voc20")
    assert len(names) == 20 and names[0] == ["aeroplane"]
    assert TOOL["parse_vocabulary"]("sky, person|man") == [["sky"], ["person", "man"]]
    assert TOOL["parse_overrides"](["size=448", "templates=single", "area_thd=0.1"]) == {
        "size": 448, "templates": "single", "area_thd": 0.1}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        TOOL["parse_overrides"](["size"])
